-- One row per change of a shop.order_items row, at-least-once duplicates removed by (key, lsn).
with

source as (

    select * from {{ source('onlinedb', 'order_items') }}
    where __op is not null

),

renamed as (

    select
        cast(order_id as bigint) as order_id,
        cast(line_number as integer) as line_number,
        cast(sku as varchar) as sku,
        cast(quantity as integer) as quantity,
        {{ money('unit_price') }} as unit_price,
        {{ money('line_total') }} as line_total,
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

    {{ dedup_cdc('renamed', ['order_id', 'line_number']) }}

)

select * from deduplicated
