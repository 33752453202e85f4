-- Run in the shop database as the superuser. The schema belongs to the application role; Debezium's role
-- gets read access to what the application creates, now and later, and a publication that covers the
-- whole schema, so it never needs to own tables or create publications itself.
create schema if not exists shop authorization {app_user};
grant connect on database {database} to {replication_user};
grant usage on schema shop to {replication_user};
grant select on all tables in schema shop to {replication_user};
alter default privileges for role {app_user} in schema shop grant select on tables to {replication_user};
revoke create on schema public from public;
do $$ begin
    if not exists (select from pg_publication where pubname = {publication_literal}) then
        create publication {publication} for tables in schema shop;
    end if;
end $$;
-- Debezium's heartbeat table. It is in the publication (the whole schema is), so each heartbeat write
-- reaches the connector as a change: while the shop's tables are quiet the connector's stored offset
-- still moves with the WAL, and the slot (confirmed only up to that offset, lsn.flush.mode=connector)
-- never holds WAL without bound nor gets confirmed past what Kafka Connect committed.
create table if not exists shop.debezium_heartbeat (
    id int primary key,
    beat_at timestamptz not null
);
alter table shop.debezium_heartbeat owner to {app_user};
grant select, insert, update on shop.debezium_heartbeat to {replication_user};
