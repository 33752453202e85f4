-- The history's raw table in the local warehouse and its ledger of loaded files. Idempotent.
create schema if not exists raw;

create table if not exists raw.history_order_lines (
    order_id varchar not null,
    line_number integer not null,
    channel varchar not null,
    store_id varchar,
    customer_id bigint,
    sku varchar not null,
    quantity integer not null,
    unit_price decimal(12, 2) not null,
    line_total decimal(12, 2) not null,
    tax decimal(12, 2) not null,
    ordered_at timestamptz not null,
    source_file varchar not null
);

create table if not exists raw.history_files (
    source_file varchar primary key,
    checksum varchar not null,
    row_count bigint not null,
    loaded_at timestamptz not null
);
