-- One row per item line of each order-confirmation email (re-sends included; see is_resend on the email).
with

source as (

    select * from {{ source('stores', 'order_confirmations') }}
    where order_number is not null

),

exploded as (

    select
        cast(source.mailbox as varchar) || '/' || cast(source.uidvalidity as varchar) || '/'
        || cast(source.imap_uid as varchar) as email_id,
        cast(source.order_number as varchar) as order_number,
        cast({{ exploded_field('item', 'line_number') }} as integer) as line_number,
        cast({{ exploded_field('item', 'sku') }} as varchar) as sku,
        cast({{ exploded_field('item', 'name') }} as varchar) as item_name,
        cast({{ exploded_field('item', 'quantity') }} as integer) as quantity,
        {{ money(exploded_field('item', 'unit_price')) }} as unit_price,
        {{ money(exploded_field('item', 'line_total')) }} as line_total

    from source
    {{ explode_array('source.lines', 'item') }}

),

renamed as (

    select distinct * from exploded

)

select * from renamed
