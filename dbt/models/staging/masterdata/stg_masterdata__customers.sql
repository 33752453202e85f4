-- One row per landed snapshot record of a customer: a version as the API served it, or a tombstone
-- (is_deleted, all attributes null; the Kafka key names the customer).
with

source as (

    select * from {{ source('masterdata', 'customers') }}

),

renamed as (

    select
        coalesce(cast(customer_id as bigint), cast({{ kafka_key() }} as bigint)) as customer_id,
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
        cast(snapshot_id as varchar) as snapshot_id,
        {{ to_timestamptz('snapshot_at') }} as snapshot_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at

    from source

)

select * from renamed
