-- The item lines of each in-store order, taken from the order's first confirmation only.
with

lines as (

    select * from {{ ref('stg_stores__order_confirmation_lines') }}

),

orders as (

    select
        order_number,
        email_id
    from {{ ref('int_store_orders_deduplicated') }}

),

deduplicated as (

    select
        lines.order_number,
        lines.line_number,
        lines.sku,
        lines.item_name,
        lines.quantity,
        lines.unit_price,
        lines.line_total
    from lines
    inner join orders on lines.email_id = orders.email_id

)

select * from deduplicated
