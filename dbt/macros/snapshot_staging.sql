{#- Where a snapshot stages the changes it merges. On Snowflake the staging table is transient instead of
    temporary (as dbt-snowflake does for incremental models with tmp_relation_type='transient'): no fail-safe
    cost either, it shows in the catalog while it lives, and the Snowflake-protocol stand-in the tests run
    against (fakesnow) can create it. It is dropped right after the merge. DuckDB keeps its adapter's way. -#}

{% macro build_snapshot_staging_table(strategy, sql, target_relation) %}
    {{ return(adapter.dispatch('build_snapshot_staging_table', 'omnistream')(strategy, sql, target_relation)) }}
{% endmacro %}

{% macro default__build_snapshot_staging_table(strategy, sql, target_relation) %}
    {#- dbt-duckdb's own implementation, which a project-level macro of this name would otherwise hide. -#}
    {% set temporary_relation = duckdb__dispatch_temporary_relation(target_relation) %}
    {% set select = snapshot_staging_table(strategy, sql, target_relation) %}
    {% call statement('build_snapshot_staging_relation') %}
        {{ create_table_as(temporary_relation.temporary, temporary_relation.relation, select) }}
    {% endcall %}
    {% do return(temporary_relation.relation) %}
{% endmacro %}

{% macro snowflake__build_snapshot_staging_table(strategy, sql, target_relation) %}
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

{#- dbt-snowflake's snapshot MERGE with the inserted values qualified by the source alias (dbt leaves them bare,
    which Snowflake resolves to the source but a stricter binder, fakesnow's, finds ambiguous). One MERGE is
    atomic on its own, so it runs without dbt-snowflake's BEGIN/COMMIT around it (which fakesnow cannot run a
    MERGE inside). -#}
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
