-- One row per branch store: its latest known version (a store that was deleted keeps its last one, flagged).
with

versions as (

    select * from {{ ref('snp_masterdata__stores') }}

),

latest as (

    select * from versions
    qualify row_number() over (partition by store_id order by dbt_valid_from desc) = 1

),

final as (

    select
        store_id,
        store_name,
        city,
        country,
        locale,
        time_zone,
        cast(tax_rate as decimal(6, 4)) as tax_rate,
        opened_at,
        is_active,
        dbt_valid_to is not null as is_deleted,
        updated_at
    from latest

)

select * from final
