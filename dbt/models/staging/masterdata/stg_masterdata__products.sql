-- One row per landed snapshot record of a product: a version, or a tombstone (is_deleted; key = sku).
with

source as (

    select * from {{ source('masterdata', 'products') }}

),

renamed as (

    select
        coalesce(cast(sku as varchar), {{ kafka_key() }}) as sku,
        cast(name as varchar) as product_name,
        cast(category as varchar) as category,
        {{ money('unit_price') }} as unit_price,
        cast(active as boolean) as is_active,
        sku is null as is_deleted,
        {{ to_timestamptz('created_at') }} as created_at,
        {{ to_timestamptz('updated_at') }} as updated_at,
        cast(snapshot_id as varchar) as snapshot_id,
        {{ to_timestamptz('snapshot_at') }} as snapshot_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at

    from source

)

select * from renamed
