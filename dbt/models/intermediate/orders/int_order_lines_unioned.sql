-- Order lines of all three sources in one shape. Only the history records tax per line; the live sources
-- compute tax on the order's subtotal, so their lines carry none.
with

online_lines as (

    select * from {{ ref('int_online_order_lines_collapsed') }}

),

online_orders as (

    select
        order_id,
        customer_id,
        created_at
    from {{ ref('int_online_orders_collapsed') }}

),

store_lines as (

    select * from {{ ref('int_store_order_lines_deduplicated') }}

),

store_orders as (

    select
        order_number,
        store_id,
        customer_id,
        ordered_at
    from {{ ref('int_store_orders_deduplicated') }}

),

history_lines as (

    select * from {{ ref('stg_history__order_lines') }}

),

unioned as (

    select
        {{ online_order_key('online_lines.order_id') }} as order_key,
        online_lines.line_number,
        'online' as channel,
        'onlinedb' as source,
        cast(null as varchar) as store_id,
        online_orders.customer_id,
        online_orders.created_at as ordered_at,
        online_lines.sku,
        online_lines.quantity,
        online_lines.unit_price,
        online_lines.line_total,
        cast(null as decimal(18, 2)) as tax_amount
    from online_lines
    inner join online_orders on online_lines.order_id = online_orders.order_id

    union all

    select
        store_lines.order_number as order_key,
        store_lines.line_number,
        'in_store' as channel,
        'stores' as source,
        store_orders.store_id,
        store_orders.customer_id,
        store_orders.ordered_at,
        store_lines.sku,
        store_lines.quantity,
        store_lines.unit_price,
        store_lines.line_total,
        cast(null as decimal(18, 2)) as tax_amount
    from store_lines
    inner join store_orders on store_lines.order_number = store_orders.order_number

    union all

    select
        order_id as order_key,
        line_number,
        channel,
        'history' as source,
        store_id,
        customer_id,
        ordered_at,
        sku,
        quantity,
        unit_price,
        line_total,
        tax as tax_amount
    from history_lines

)

select * from unioned
