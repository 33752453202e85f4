-- One row per landed snapshot record of a branch store: a version, or a tombstone (is_deleted; key = store_id).
with

source as (

    select * from {{ source('masterdata', 'stores') }}

),

renamed as (

    select
        coalesce(cast(store_id as varchar), {{ kafka_key() }}) as store_id,
        cast(name as varchar) as store_name,
        cast(city as varchar) as city,
        cast(country as varchar) as country,
        cast(locale as varchar) as locale,
        cast(timezone as varchar) as time_zone,
        cast(tax_rate as decimal(6, 4)) as tax_rate,
        {{ to_timestamptz('opened_at') }} as opened_at,
        cast(active as boolean) as is_active,
        store_id is null as is_deleted,
        {{ to_timestamptz('updated_at') }} as updated_at,
        cast(snapshot_id as varchar) as snapshot_id,
        {{ to_timestamptz('snapshot_at') }} as snapshot_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at

    from source

)

select * from renamed
