-- One row per order line, all channels and sources.
with

order_lines as (

    select * from {{ ref('int_order_lines_unioned') }}

),

final as (

    select
        order_key || '#' || cast(line_number as varchar) as order_line_key,
        order_key,
        cast(line_number as integer) as line_number,
        channel,
        source,
        store_id,
        customer_id,
        ordered_at,
        {{ utc_date('ordered_at') }} as order_date,
        sku,
        cast(quantity as integer) as quantity,
        {{ money('unit_price') }} as unit_price,
        {{ money('line_total') }} as line_total,
        {{ money('tax_amount') }} as tax_amount
    from order_lines

)

select * from final
