-- The current state of each online order: its latest change by WAL position; orders whose latest change is
-- a delete are gone (a hard delete at the source removes the order from the warehouse's sales too).
with

changes as (

    select * from {{ ref('stg_onlinedb__orders') }}

),

first_changes as (

    select
        order_id,
        min(committed_at) as first_seen_at,
        count(*) as change_count
    from changes
    group by order_id

),

latest as (

    select * from changes
    qualify row_number() over (partition by order_id order by lsn desc, kafka_partition desc, kafka_offset desc) = 1

),

collapsed as (

    select
        latest.order_id,
        latest.customer_id,
        latest.status,
        latest.currency,
        latest.subtotal,
        latest.tax,
        latest.total,
        latest.created_at,
        latest.updated_at,
        latest.lsn as last_lsn,
        latest.committed_at as last_changed_at,
        first_changes.first_seen_at,
        first_changes.change_count
    from latest
    inner join first_changes on latest.order_id = first_changes.order_id
    where not latest.is_delete

)

select * from collapsed
