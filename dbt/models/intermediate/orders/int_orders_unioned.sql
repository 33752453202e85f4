-- Orders of all three channels' sources in one shape: live online orders (CDC), live in-store orders (POS
-- emails) and the history, each with its channel and source. Amounts: net = the lines' total, tax, gross.
with

online_orders as (

    select * from {{ ref('int_online_orders_collapsed') }}

),

online_line_counts as (

    select
        order_id,
        count(*) as line_count
    from {{ ref('int_online_order_lines_collapsed') }}
    group by order_id

),

store_orders as (

    select * from {{ ref('int_store_orders_deduplicated') }}

),

store_line_counts as (

    select
        order_number,
        count(*) as line_count
    from {{ ref('int_store_order_lines_deduplicated') }}
    group by order_number

),

history_orders as (

    select
        order_id,
        min(channel) as channel,
        min(store_id) as store_id,
        min(customer_id) as customer_id,
        min(ordered_at) as ordered_at,
        count(*) as line_count,
        sum(line_total) as net_amount,
        sum(tax) as tax_amount
    from {{ ref('stg_history__order_lines') }}
    group by order_id

),

unioned as (

    select
        {{ online_order_key('online_orders.order_id') }} as order_key,
        'online' as channel,
        'onlinedb' as source,
        cast(online_orders.order_id as varchar) as source_order_id,
        cast(null as varchar) as store_id,
        online_orders.customer_id,
        online_orders.created_at as ordered_at,
        online_orders.status,
        online_orders.currency,
        coalesce(online_line_counts.line_count, 0) as line_count,
        online_orders.subtotal as net_amount,
        online_orders.tax as tax_amount
    from online_orders
    left join online_line_counts on online_orders.order_id = online_line_counts.order_id

    union all

    select
        store_orders.order_number as order_key,
        'in_store' as channel,
        'stores' as source,
        store_orders.order_number as source_order_id,
        store_orders.store_id,
        store_orders.customer_id,
        store_orders.ordered_at,
        'completed' as status,
        store_orders.currency,
        coalesce(store_line_counts.line_count, 0) as line_count,
        store_orders.subtotal as net_amount,
        store_orders.tax as tax_amount
    from store_orders
    left join store_line_counts on store_orders.order_number = store_line_counts.order_number

    union all

    select
        order_id as order_key,
        channel,
        'history' as source,
        order_id as source_order_id,
        store_id,
        customer_id,
        ordered_at,
        'completed' as status,
        'EUR' as currency,
        line_count,
        net_amount,
        tax_amount
    from history_orders

),

final as (

    select
        order_key,
        channel,
        source,
        source_order_id,
        store_id,
        customer_id,
        ordered_at,
        status,
        currency,
        cast(line_count as integer) as line_count,
        {{ money('net_amount') }} as net_amount,
        {{ money('tax_amount') }} as tax_amount,
        {{ money('net_amount + tax_amount') }} as gross_amount
    from unioned

)

select * from final
