-- One row per change of a shop.orders row, duplicates of at-least-once delivery removed: a change is
-- identified by (order_id, lsn), and a re-delivered copy has the same pair.
with

source as (

    select * from {{ source('onlinedb', 'orders') }}
    -- Tombstones (null value after a delete) carry nothing the delete event before them did not.
    where __op is not null

),

renamed as (

    select
        cast(order_id as bigint) as order_id,
        cast(customer_id as bigint) as customer_id,
        cast(status as varchar) as status,
        cast(currency as varchar) as currency,
        {{ money('subtotal') }} as subtotal,
        {{ money('tax') }} as tax,
        {{ money('total') }} as total,
        {{ to_timestamptz('created_at') }} as created_at,
        {{ to_timestamptz('updated_at') }} as updated_at,
        {{ decode_debezium_op('__op') }} as change_type,
        cast(__op = 'd' as boolean) as is_delete,
        cast(__lsn as bigint) as lsn,
        {{ epoch_ms_to_timestamptz('__source_ts_ms') }} as committed_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at

    from source

),

deduplicated as (

    {{ dedup_cdc('renamed', ['order_id']) }}

)

select * from deduplicated
