-- One row per in-store order: the first confirmation email of each order number; re-sends are counted, not
-- counted twice.
with

confirmations as (

    select * from {{ ref('stg_stores__order_confirmations') }}

),

resends as (

    select
        order_number,
        count(*) - 1 as resend_count
    from confirmations
    group by order_number

),

deduplicated as (

    select
        confirmations.order_number,
        confirmations.email_id,
        confirmations.store_id,
        confirmations.store_name,
        confirmations.ordered_at,
        confirmations.ordered_at_local,
        confirmations.customer_id,
        confirmations.payment_method,
        confirmations.cashier,
        confirmations.subtotal,
        confirmations.tax_rate,
        confirmations.tax,
        confirmations.total,
        confirmations.currency,
        confirmations.message_id,
        confirmations.received_at,
        resends.resend_count
    from confirmations
    inner join resends on confirmations.order_number = resends.order_number
    where not confirmations.is_resend

)

select * from deduplicated
