-- The history's raw table and the stage the files are copied from (Snowflake). Idempotent.
-- {schema}, {table}, {stage} and {stage_params} are filled in by history_load.py. {stage_params} is either
--   url = 'gcs://<bucket>/history/'  storage_integration = <name>   (an external stage over the bucket), or
--   nothing                                                           (an internal stage the loader PUTs into).
-- A GCS external stage takes no CREDENTIALS clause (that is S3's and Azure's): a storage integration is what
-- grants it a private bucket.
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
    {stage_params}
    file_format = (type = parquet);
