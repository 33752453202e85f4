-- One row per product version (SCD type 2) from the master-data snapshot: a price change opens a version.
with

versions as (

    select * from {{ ref('snp_masterdata__products') }}

),

final as (

    select
        cast(dbt_scd_id as varchar) as product_key,
        sku,
        product_name,
        category,
        {{ money('unit_price') }} as unit_price,
        is_active,
        created_at,
        updated_at,
        {{ to_timestamptz('dbt_valid_from') }} as valid_from,
        {{ to_timestamptz('dbt_valid_to') }} as valid_to,
        dbt_valid_to is null as is_current
    from versions

)

select * from final
