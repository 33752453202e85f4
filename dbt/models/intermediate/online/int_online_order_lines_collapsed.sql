-- The current lines of each online order that still exists: the latest change per (order_id, line_number),
-- deleted lines and the lines of deleted orders left out.
with

changes as (

    select * from {{ ref('stg_onlinedb__order_items') }}

),

orders as (

    select order_id from {{ ref('int_online_orders_collapsed') }}

),

latest as (

    select * from changes
    qualify
        row_number() over (
            partition by order_id, line_number
            order by lsn desc, kafka_partition desc, kafka_offset desc
        ) = 1

),

collapsed as (

    select
        latest.order_id,
        latest.line_number,
        latest.sku,
        latest.quantity,
        latest.unit_price,
        latest.line_total,
        latest.lsn as last_lsn
    from latest
    inner join orders on latest.order_id = orders.order_id
    where not latest.is_delete

)

select * from collapsed
