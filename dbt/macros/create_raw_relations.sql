{#- The raw layer of the local warehouse: one view per landed topic and one over the history dataset, reading
    the Parquet files where they lie. A source with no files yet gets an empty view of its declared columns, so
    a fresh checkout builds before the first record lands. A history table loaded by the history-load DAG
    (a base table, not a view) is left as it is. On Snowflake the Kafka connector and COPY INTO own these
    tables, so there is nothing to do. -#}

{% macro create_raw_relations() %}
    {{ return(adapter.dispatch('create_raw_relations', 'omnistream')()) }}
{% endmacro %}

{% macro snowflake__create_raw_relations() %}
    {{ return('') }}
{% endmacro %}

{% macro default__create_raw_relations() %}
    {% if not execute %}{{ return('') }}{% endif %}
    {% set created = [] %}
    {% for node in graph.sources.values() if node.package_name == project_name %}
        {% set pattern = raw_file_pattern(node) %}
        {% if pattern %}
            {% do run_query('create schema if not exists ' ~ adapter.quote(node.schema)) %}
            {% set relation = adapter.quote(node.schema) ~ '.' ~ adapter.quote(node.identifier) %}
            {% if not raw_table_is_loaded(node) %}
                {% set files = run_query("select count(*) from glob('" ~ pattern ~ "')").columns[0].values()[0] %}
                {% if files > 0 %}
                    {% do run_query('create or replace view ' ~ relation ~ ' as ' ~ raw_parquet_select(node, pattern)) %}
                {% else %}
                    {% do run_query('create or replace view ' ~ relation ~ ' as ' ~ raw_empty_select(node)) %}
                {% endif %}
                {% do created.append(node.identifier ~ ' (' ~ files ~ ' files)') %}
            {% endif %}
        {% endif %}
    {% endfor %}
    {% do log('raw views: ' ~ (created | join(', ')), info=true) %}
    {{ return('') }}
{% endmacro %}

{#- The glob of a source's files: landed topics by `meta.landing_topic`, history by `meta.history_dataset`. -#}
{% macro raw_file_pattern(node) %}
    {% set meta = source_meta(node) %}
    {% if meta.get('landing_topic') %}
        {{ return(var('landing_root') ~ '/' ~ meta['landing_topic'] ~ '/partition=*/*.parquet') }}
    {% elif meta.get('history_dataset') %}
        {{ return(var('history_root') ~ '/year=*/month=*/*.parquet') }}
    {% endif %}
    {{ return(none) }}
{% endmacro %}

{% macro raw_table_is_loaded(node) %}
    {% set found = run_query(
        "select count(*) from information_schema.tables where table_schema = '" ~ node.schema
        ~ "' and table_name = '" ~ node.identifier ~ "' and table_type = 'BASE TABLE'"
    ).columns[0].values()[0] %}
    {{ return(found > 0) }}
{% endmacro %}

{#- A source table's meta (set under `config:`; older projects set it at the top level). -#}
{% macro source_meta(node) %}
    {{ return(node.config.get('meta') or node.meta or {}) }}
{% endmacro %}

{% macro raw_parquet_select(node, pattern) %}
    {% if source_meta(node).get('history_dataset') %}
        {#- The same columns COPY INTO gives the Snowflake table: the file each row came from. -#}
        {{ return(
            "select * exclude (filename), filename as source_file from read_parquet('" ~ pattern
            ~ "', union_by_name = true, hive_partitioning = false, filename = true)"
        ) }}
    {% endif %}
    {#- A landed topic is read by the landing sink's reader contract (omnistream/sink/compaction.py): for a
        few seconds after a compaction the merged file and the small files it replaced are both listed, so
        one row per (partition, offset) is kept. -#}
    {{ return(
        "select * from read_parquet('" ~ pattern ~ "', union_by_name = true, hive_partitioning = false)"
        ~ " qualify row_number() over (partition by " ~ kafka_partition() ~ ", " ~ kafka_offset() ~ ") = 1"
    ) }}
{% endmacro %}

{% macro raw_empty_select(node) %}
    {% set columns = [] %}
    {% for column in node.columns.values() %}
        {% if not column.data_type %}
            {% do exceptions.raise_compiler_error(
                'source ' ~ node.source_name ~ '.' ~ node.name ~ ': column ' ~ column.name
                ~ ' needs a data_type to build its empty raw view'
            ) %}
        {% endif %}
        {% do columns.append('cast(null as ' ~ column.data_type ~ ') as ' ~ adapter.quote(column.name)) %}
    {% endfor %}
    {{ return('select ' ~ (columns | join(', ')) ~ ' where false') }}
{% endmacro %}
