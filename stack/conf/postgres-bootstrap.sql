-- Roles, database and publication for the online shop. Run once as the superuser by `omnistream stack up`
-- after the cluster is created; every statement is idempotent. placeholders in braces are filled in safely
-- (identifiers quoted, literals escaped) from the settings.

-- The web shop's application role: owns the shop schema, cannot replicate.
do $$ begin
    if not exists (select from pg_roles where rolname = {app_user_literal}) then
        create role {app_user} login;
    end if;
end $$;
alter role {app_user} with login nosuperuser nocreaterole nocreatedb noreplication password {app_password};

-- Debezium's role: may open a replication connection and read the shop tables, nothing else.
do $$ begin
    if not exists (select from pg_roles where rolname = {replication_user_literal}) then
        create role {replication_user} login replication;
    end if;
end $$;
alter role {replication_user} with login replication nosuperuser nocreaterole nocreatedb password {replication_password};
