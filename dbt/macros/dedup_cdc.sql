{#- The changes of a Debezium topic with at-least-once re-deliveries removed. A change is identified by the
    row's primary key and its WAL position (lsn); a re-delivered copy has the same pair, so the first copy to
    land (lowest partition, offset) is kept and `delivery_count` says how many copies arrived. `relation` has
    the `lsn`, `kafka_partition` and `kafka_offset` columns of a staging model's `renamed` CTE. -#}
{% macro dedup_cdc(relation, key_columns) -%}
    {%- set change = (key_columns + ['lsn']) | join(', ') -%}
    select
        *,
        -- How many copies of this change landed; more than one is an at-least-once re-delivery.
        count(*) over (partition by {{ change }}) as delivery_count
    from {{ relation }}
    qualify
        row_number() over (
            partition by {{ change }}
            order by kafka_partition, kafka_offset
        ) = 1
{%- endmacro %}
