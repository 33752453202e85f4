-- One row per landed snapshot record of a branch store: a version, or a tombstone (is_deleted; key = store_id).
with

source as (

    select * from {{ source('masterdata', 'stores') }}

),

renamed as (

    select
        {{ masterdata_id('store_id', 'varchar') }} as store_id,
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
        {{ masterdata_snapshot_columns() }}

    from source

)

select * from renamed
