{#- The warehouse's schemas are the layers themselves (raw, staging, intermediate, marts, snapshots), as in
    the design, not "<target schema>_<layer>". Isolation between environments is by database (a DuckDB file,
    a Snowflake database), so the layer names can stay fixed. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
