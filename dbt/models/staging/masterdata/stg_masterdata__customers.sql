-- One row per landed snapshot record of a customer: a version as the API served it, or a tombstone
-- (is_deleted, all attributes null; the Kafka key names the customer).
with

source as (

    select * from {{ source('masterdata', 'customers') }}

),

renamed as (

    select
        {{ masterdata_id('customer_id', 'bigint') }} as customer_id,
        cast(first_name as varchar) as first_name,
        cast(last_name as varchar) as last_name,
        cast(email as varchar) as email,
        cast(street as varchar) as street,
        cast(city as varchar) as city,
        cast(postcode as varchar) as postcode,
        cast(country as varchar) as country,
        cast(active as boolean) as is_active,
        customer_id is null as is_deleted,
        {{ to_timestamptz('created_at') }} as created_at,
        {{ to_timestamptz('updated_at') }} as updated_at,
        {{ masterdata_snapshot_columns() }}

    from source

)

select * from renamed
