-- One row per order-confirmation email read from the stores' mailbox. A store's POS sometimes re-sends a
-- confirmation (new message_id, same order_number): the first one landed is the order, later ones are
-- flagged as re-sends here and dropped in the intermediate layer.
with

source as (

    select * from {{ source('stores', 'order_confirmations') }}
    where order_number is not null

),

renamed as (

    select
        cast(mailbox as varchar) || '/' || cast(uidvalidity as varchar) || '/' || cast(imap_uid as varchar)
            as email_id,
        cast(order_number as varchar) as order_number,
        cast(store_id as varchar) as store_id,
        cast(store_name as varchar) as store_name,
        {{ to_timestamptz('ordered_at') }} as ordered_at,
        cast(ordered_at_local as varchar) as ordered_at_local,
        cast(customer_id as bigint) as customer_id,
        cast(payment_method as varchar) as payment_method,
        cast(cashier as varchar) as cashier,
        {{ money('subtotal') }} as subtotal,
        cast(tax_rate as decimal(6, 4)) as tax_rate,
        {{ money('tax') }} as tax,
        {{ money('total') }} as total,
        cast(currency as varchar) as currency,
        cast(message_id as varchar) as message_id,
        cast(mailbox as varchar) as mailbox,
        cast(uidvalidity as bigint) as uidvalidity,
        cast(imap_uid as bigint) as imap_uid,
        {{ to_timestamptz('received_at') }} as received_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at

    from source

),

-- The same email landed twice (it cannot, with an exactly-once producer; this keeps the grain honest if a
-- replay ever writes it again).
distinct_emails as (

    select * from renamed
    qualify row_number() over (partition by email_id order by kafka_partition, kafka_offset) = 1

),

flagged as (

    select
        *,
        row_number() over (
            partition by order_number
            order by received_at, kafka_partition, kafka_offset
        ) > 1 as is_resend
    from distinct_emails

)

select * from flagged
