-- The online shop's tables: orders and their lines.
--
-- Idempotent: safe to run on every start. Names are unqualified on purpose: `ensure_shop_schema`
-- (omnistream/shop_schema.py) creates the schema if it is missing and sets `search_path` to it, so the same file
-- builds the production schema `shop` and the private schema of an isolated test.
--
-- Money is numeric(12,2) end to end, never float. Every amount is also checked here, so a bug in a writer
-- fails loudly at the source instead of surfacing as a cent off in the warehouse.

create table if not exists orders (
    order_id bigint generated always as identity primary key,
    customer_id bigint not null,
    status text not null default 'pending',
    currency char(3) not null default 'EUR',
    subtotal numeric(12, 2) not null,
    tax numeric(12, 2) not null,
    total numeric(12, 2) not null,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    constraint orders_status_check
        check (status in ('pending', 'paid', 'shipped', 'delivered', 'cancelled', 'refunded')),
    constraint orders_currency_check check (currency ~ '^[A-Z]{3}$'),
    constraint orders_customer_id_check check (customer_id > 0),
    constraint orders_amounts_check check (subtotal >= 0 and tax >= 0),
    constraint orders_total_check check (total = subtotal + tax),
    constraint orders_updated_after_created_check check (updated_at >= created_at)
);

create table if not exists order_items (
    order_id bigint not null references orders (order_id) on delete cascade,
    line_number integer not null,
    sku text not null,
    quantity integer not null,
    unit_price numeric(12, 2) not null,
    line_total numeric(12, 2) not null,
    primary key (order_id, line_number),
    constraint order_items_line_number_check check (line_number > 0),
    constraint order_items_quantity_check check (quantity > 0),
    constraint order_items_unit_price_check check (unit_price >= 0),
    constraint order_items_line_total_check check (line_total = unit_price * quantity)
);

-- A customer's order history, the status board, and incremental reads by change time.
create index if not exists orders_customer_id_idx on orders (customer_id);
create index if not exists orders_status_idx on orders (status);
create index if not exists orders_updated_at_idx on orders (updated_at);
create index if not exists orders_created_at_idx on orders (created_at);
-- Sales per product. The primary key (order_id, line_number) already serves the foreign key and the cascade.
create index if not exists order_items_sku_idx on order_items (sku);

-- REPLICA IDENTITY FULL rather than the default (primary key only), for Debezium:
--  * an UPDATE then carries the complete old row as `before`, so a status change is seen as the transition it
--    is (paid -> shipped) without a lookup, and staging can check the lifecycle;
--  * a DELETE carries the deleted row's amounts and customer, not just its key, so the warehouse can take a
--    hard-deleted order out of the day's totals and keep an audit record of what vanished;
--  * the cascaded deletes of order_items arrive with sku, quantity and amounts for the same reason.
-- The price is a larger WAL record per update/delete; these rows are narrow and updates a few per order.
-- Changed only when needed: ALTER TABLE takes an exclusive lock, which a re-run on a live shop should not.
do $$
begin
    if (select relreplident from pg_class where oid = 'orders'::regclass) <> 'f' then
        alter table orders replica identity full;
    end if;
    if (select relreplident from pg_class where oid = 'order_items'::regclass) <> 'f' then
        alter table order_items replica identity full;
    end if;
end
$$;
