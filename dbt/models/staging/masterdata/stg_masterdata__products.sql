-- One row per landed snapshot record of a product: a version, or a tombstone (is_deleted; key = sku).
with

source as (

    select * from {{ source('masterdata', 'products') }}

),

renamed as (

    select
        {{ masterdata_id('sku', 'varchar') }} as sku,
        cast(name as varchar) as product_name,
        cast(category as varchar) as category,
        {{ money('unit_price') }} as unit_price,
        cast(active as boolean) as is_active,
        sku is null as is_deleted,
        {{ to_timestamptz('created_at') }} as created_at,
        {{ to_timestamptz('updated_at') }} as updated_at,
        {{ masterdata_snapshot_columns() }}

    from source

)

select * from renamed
