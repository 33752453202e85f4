-- One row per historical order line, both channels.
with

source as (

    select * from {{ source('history', 'order_lines') }}

),

renamed as (

    select
        cast(order_id as varchar) as order_id,
        cast(line_number as integer) as line_number,
        cast(channel as varchar) as channel,
        cast(store_id as varchar) as store_id,
        cast(customer_id as bigint) as customer_id,
        cast(sku as varchar) as sku,
        cast(quantity as integer) as quantity,
        {{ money('unit_price') }} as unit_price,
        {{ money('line_total') }} as line_total,
        {{ money('tax') }} as tax,
        {{ to_timestamptz('ordered_at') }} as ordered_at,
        cast(source_file as varchar) as source_file

    from source

)

select * from renamed
