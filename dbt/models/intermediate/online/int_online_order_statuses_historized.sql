-- Each online order's status history: one row per status an order entered (pending when created, every
-- transition, and `deleted` for a hard delete), with when it entered it and until when it held.
with

changes as (

    select * from {{ ref('stg_onlinedb__orders') }}

),

sequenced as (

    select
        order_id,
        lsn,
        case when is_delete then 'deleted' else status end as status,
        -- A delete keeps the row's old updated_at (REPLICA IDENTITY FULL); its own time is the commit time.
        case
            when is_delete then committed_at
            when change_type in ('insert', 'snapshot') then created_at
            else updated_at
        end as entered_at,
        lag(case when is_delete then 'deleted' else status end) over (
            partition by order_id order by lsn, kafka_partition, kafka_offset
        ) as previous_status
    from changes

),

transitions as (

    select
        order_id,
        lsn,
        status,
        previous_status,
        entered_at
    from sequenced
    -- An update that changed something else (or a snapshot re-read of the same row) is not a transition.
    where previous_status is null or status != previous_status

),

historized as (

    select
        order_id,
        lsn,
        status,
        previous_status,
        entered_at,
        lead(entered_at) over (partition by order_id order by lsn) as left_at,
        lead(lsn) over (partition by order_id order by lsn) is null as is_current
    from transitions

)

select * from historized
