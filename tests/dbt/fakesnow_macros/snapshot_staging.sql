{#- Snapshot macros for the Snowflake target run against fakesnow, the Snowflake-protocol stand-in of
    tests/dbt/test_dbt_snowflake.py, and loaded only there: that test passes
    `--vars '{test_macro_path: <this directory>}'`, which dbt_project.yml adds to its macro-paths. Against real
    Snowflake dbt-snowflake's own snapshot macros run; what fakesnow cannot do is worked around here, in ways
    that are valid Snowflake too:

    - the staging table of a snapshot's changes is transient instead of temporary (as dbt-snowflake does for
      incremental models with tmp_relation_type='transient'), and dropped right after the merge;
    - the MERGE's inserted values are qualified by the source alias (dbt leaves them bare, which Snowflake
      resolves to the source but fakesnow's stricter binder finds ambiguous), and it runs without
      dbt-snowflake's BEGIN/COMMIT around it (one MERGE is atomic on its own; fakesnow cannot run a MERGE
      inside a transaction). -#}

{% macro build_snapshot_staging_table(strategy, sql, target_relation) %}
    {% if target.type != 'snowflake' %}
        {% do exceptions.raise_compiler_error(
            'tests/dbt/fakesnow_macros replace Snowflake snapshot macros; target ' ~ target.name
            ~ ' is ' ~ target.type ~ ': leave test_macro_path unset'
        ) %}
    {% endif %}
    {% set staging_relation = make_temp_relation(target_relation) %}
    {% set select = snapshot_staging_table(strategy, sql, target_relation) %}
    {% call statement('build_snapshot_staging_relation') %}
        {{ snowflake__create_table_transient_sql(staging_relation, select) }}
    {% endcall %}
    {% do return(staging_relation) %}
{% endmacro %}

{% macro snowflake__post_snapshot(staging_relation) %}
    {% do drop_relation_if_exists(staging_relation) %}
{% endmacro %}

{% macro snowflake__snapshot_merge_sql(target, source, insert_cols) %}
    {%- set columns = config.get("snapshot_table_column_names") or get_snapshot_table_column_names() -%}
    {%- set source_values = [] -%}
    {%- for column in insert_cols -%}
        {%- do source_values.append('DBT_INTERNAL_SOURCE.' ~ column) -%}
    {%- endfor -%}
    {% set dml %}
    merge into {{ target.render() }} as DBT_INTERNAL_DEST
    using {{ source }} as DBT_INTERNAL_SOURCE
    on DBT_INTERNAL_SOURCE.{{ columns.dbt_scd_id }} = DBT_INTERNAL_DEST.{{ columns.dbt_scd_id }}
    when matched
        and DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} is null
        and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')
        then update set {{ columns.dbt_valid_to }} = DBT_INTERNAL_SOURCE.{{ columns.dbt_valid_to }}
    when not matched
        and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'
        then insert ({{ insert_cols | join(', ') }})
        values ({{ source_values | join(', ') }})
    {% endset %}
    {% do return(dml) %}
{% endmacro %}
