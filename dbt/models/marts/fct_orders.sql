-- One row per order, all channels and sources.
with

orders as (

    select * from {{ ref('int_orders_unioned') }}

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
        {{ utc_date('ordered_at') }} as order_date,
        status,
        currency,
        line_count,
        net_amount,
        tax_amount,
        gross_amount
    from orders

)

select * from final
