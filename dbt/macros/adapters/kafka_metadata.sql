{#- Kafka coordinates of a landed record. Locally the landing sink writes a `record_metadata` struct; the
    Snowflake Kafka connector writes a RECORD_METADATA variant whose record time is `CreateTime` (epoch ms). -#}

{% macro kafka_offset() %}{{ return(adapter.dispatch('kafka_offset', 'omnistream')()) }}{% endmacro %}
{% macro default__kafka_offset() %}cast(struct_extract(record_metadata, 'offset') as bigint){% endmacro %}
{% macro snowflake__kafka_offset() %}cast(record_metadata:offset as bigint){% endmacro %}

{% macro kafka_partition() %}{{ return(adapter.dispatch('kafka_partition', 'omnistream')()) }}{% endmacro %}
{% macro default__kafka_partition() %}cast(struct_extract(record_metadata, 'partition') as integer){% endmacro %}
{% macro snowflake__kafka_partition() %}cast(record_metadata:partition as integer){% endmacro %}

{% macro kafka_key() %}{{ return(adapter.dispatch('kafka_key', 'omnistream')()) }}{% endmacro %}
{% macro default__kafka_key() %}cast(struct_extract(record_metadata, 'key') as varchar){% endmacro %}
{% macro snowflake__kafka_key() %}cast(record_metadata:key as varchar){% endmacro %}

{% macro kafka_timestamp() %}{{ return(adapter.dispatch('kafka_timestamp', 'omnistream')()) }}{% endmacro %}
{% macro default__kafka_timestamp() %}cast(struct_extract(record_metadata, 'timestamp') as timestamptz){% endmacro %}
{% macro snowflake__kafka_timestamp() %}{{ snowflake__epoch_ms_to_timestamptz('record_metadata:CreateTime') }}{% endmacro %}
