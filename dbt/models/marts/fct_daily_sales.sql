-- One row per UTC day, channel and store (no store for online orders): orders, lines and money, all sources.
with

orders as (

    select * from {{ ref('fct_orders') }}

),

daily as (

    select
        order_date,
        channel,
        store_id,
        count(*) as order_count,
        sum(line_count) as line_count,
        sum(net_amount) as net_amount,
        sum(tax_amount) as tax_amount,
        sum(gross_amount) as gross_amount
    from orders
    group by order_date, channel, store_id

),

final as (

    select
        cast(order_date as varchar) || '|' || channel || '|' || coalesce(store_id, '-') as daily_sales_key,
        order_date,
        channel,
        store_id,
        cast(order_count as bigint) as order_count,
        cast(line_count as bigint) as line_count,
        {{ money('net_amount') }} as net_amount,
        {{ money('tax_amount') }} as tax_amount,
        {{ money('gross_amount') }} as gross_amount
    from daily

)

select * from final
