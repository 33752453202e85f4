-- The history's raw table and the external stage over the bucket (Snowflake). Idempotent.
-- {schema}, {table}, {stage}, {stage_url} and {stage_credentials} are filled in by history_load.py.
create schema if not exists {schema};

create table if not exists {schema}.{table} (
    order_id varchar not null,
    line_number integer not null,
    channel varchar not null,
    store_id varchar,
    customer_id bigint,
    sku varchar not null,
    quantity integer not null,
    unit_price number(12, 2) not null,
    line_total number(12, 2) not null,
    tax number(12, 2) not null,
    ordered_at timestamp_tz not null,
    source_file varchar
);

create stage if not exists {schema}.{stage}
    url = '{stage_url}'
    {stage_credentials}
    file_format = (type = parquet);
