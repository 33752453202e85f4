-- The latest snapshot record of each store still served by the API (the input of its dbt snapshot): an id whose
-- latest record is a tombstone is absent, which the snapshot records as the end of its last version.
with

records as (

    select * from {{ ref('stg_masterdata__stores') }}

),

latest as (

    select * from records
    qualify row_number() over (partition by store_id order by kafka_partition desc, kafka_offset desc) = 1

),

current_stores as (

    select * exclude (is_deleted, kafka_partition, kafka_offset, landed_at)
    from latest
    where not is_deleted

)

select * from current_stores
