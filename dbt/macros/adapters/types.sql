{#- Casts that differ between DuckDB and Snowflake, and the exact-money type used everywhere. -#}

{#- Money: exact decimal, never float. Sums of a day's sales fit comfortably in 18 digits. -#}
{% macro money(expression) %}cast({{ expression }} as decimal(18, 2)){% endmacro %}

{#- An instant with its zone: DuckDB's timestamptz, Snowflake's TIMESTAMP_TZ. Accepts ISO-8601 text (Debezium's
    ZonedTimestamp) as well as timestamps. -#}
{% macro to_timestamptz(expression) %}{{ return(adapter.dispatch('to_timestamptz', 'omnistream')(expression)) }}{% endmacro %}
{% macro default__to_timestamptz(expression) %}cast({{ expression }} as timestamptz){% endmacro %}
{% macro snowflake__to_timestamptz(expression) %}cast({{ expression }} as timestamp_tz){% endmacro %}

{#- An instant from epoch milliseconds (Debezium's source.ts_ms). -#}
{% macro epoch_ms_to_timestamptz(expression) %}{{ return(adapter.dispatch('epoch_ms_to_timestamptz', 'omnistream')(expression)) }}{% endmacro %}
{% macro default__epoch_ms_to_timestamptz(expression) %}cast(epoch_ms(cast({{ expression }} as bigint)) as timestamptz){% endmacro %}
{% macro snowflake__epoch_ms_to_timestamptz(expression) %}cast(to_timestamp_ltz(cast({{ expression }} as bigint), 3) as timestamp_tz){% endmacro %}

{#- The UTC calendar day of an instant: the day the manifests and the marts count an order on. -#}
{% macro utc_date(expression) %}{{ return(adapter.dispatch('utc_date', 'omnistream')(expression)) }}{% endmacro %}
{% macro default__utc_date(expression) %}cast(timezone('UTC', {{ expression }}) as date){% endmacro %}
{% macro snowflake__utc_date(expression) %}cast(convert_timezone('UTC', {{ expression }}) as date){% endmacro %}

{#- The local wall-clock time of an instant in an IANA zone (a store's day). -#}
{% macro local_timestamp(expression, zone) %}{{ return(adapter.dispatch('local_timestamp', 'omnistream')(expression, zone)) }}{% endmacro %}
{% macro default__local_timestamp(expression, zone) %}timezone({{ zone }}, {{ expression }}){% endmacro %}
{% macro snowflake__local_timestamp(expression, zone) %}convert_timezone({{ zone }}, {{ expression }})::timestamp_ntz{% endmacro %}

{#- ISO day of the week, Monday = 1 … Sunday = 7. -#}
{% macro iso_day_of_week(expression) %}{{ return(adapter.dispatch('iso_day_of_week', 'omnistream')(expression)) }}{% endmacro %}
{% macro default__iso_day_of_week(expression) %}isodow({{ expression }}){% endmacro %}
{% macro snowflake__iso_day_of_week(expression) %}dayofweekiso({{ expression }}){% endmacro %}
