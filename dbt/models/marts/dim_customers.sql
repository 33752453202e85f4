-- One row per customer version (SCD type 2) from the master-data snapshot; is_current marks the version in
-- force now, and a deleted customer's last version is closed (valid_to set, no current version).
with

versions as (

    select * from {{ ref('snp_masterdata__customers') }}

),

final as (

    select
        cast(dbt_scd_id as varchar) as customer_key,
        customer_id,
        first_name,
        last_name,
        email,
        street,
        city,
        postcode,
        country,
        is_active,
        created_at,
        updated_at,
        {{ to_timestamptz('dbt_valid_from') }} as valid_from,
        {{ to_timestamptz('dbt_valid_to') }} as valid_to,
        dbt_valid_to is null as is_current
    from versions

)

select * from final
