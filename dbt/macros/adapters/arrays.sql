{#- One row per element of an array column: DuckDB unnests a list of structs, Snowflake flattens a variant.
    `explode_array` is the join clause, `exploded_field` reads a field of the current element. -#}

{% macro explode_array(array_column, alias) %}{{ return(adapter.dispatch('explode_array', 'omnistream')(array_column, alias)) }}{% endmacro %}
{% macro default__explode_array(array_column, alias) %}cross join unnest({{ array_column }}) as {{ alias }} (element){% endmacro %}
{% macro snowflake__explode_array(array_column, alias) %}cross join lateral flatten(input => {{ array_column }}) as {{ alias }}{% endmacro %}

{% macro exploded_field(alias, field) %}{{ return(adapter.dispatch('exploded_field', 'omnistream')(alias, field)) }}{% endmacro %}
{% macro default__exploded_field(alias, field) %}struct_extract({{ alias }}.element, '{{ field }}'){% endmacro %}
{% macro snowflake__exploded_field(alias, field) %}{{ alias }}.value:{{ field }}{% endmacro %}
