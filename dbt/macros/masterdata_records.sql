{#- What the three master-data staging models share: a landed record is one snapshot's version of an entity,
    or a tombstone (null value) for an entity that left the API, whose id is then only in the Kafka key. -#}

{#- The entity's id: the value's own, or the key's for a tombstone. -#}
{% macro masterdata_id(id_column, data_type) -%}
    coalesce(cast({{ id_column }} as {{ data_type }}), cast({{ kafka_key() }} as {{ data_type }}))
{%- endmacro %}

{#- The snapshot that served the record and where it landed: the last columns of each staging model (indented
    as they are called, in a select list). -#}
{% macro masterdata_snapshot_columns() -%}
    cast(snapshot_id as varchar) as snapshot_id,
        {{ to_timestamptz('snapshot_at') }} as snapshot_at,
        {{ kafka_partition() }} as kafka_partition,
        {{ kafka_offset() }} as kafka_offset,
        {{ kafka_timestamp() }} as landed_at
{%- endmacro %}
