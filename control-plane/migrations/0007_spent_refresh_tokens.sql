-- Every refresh token a session has ever spent, so that presenting any of them again — not only
-- the last one — reveals a stolen token and revokes the session.
create table spent_refresh_tokens (
    token_hash  bytea primary key,
    session_id  uuid not null references device_sessions (id) on delete cascade,
    spent_at    timestamptz not null
);
create index spent_refresh_tokens_session_idx on spent_refresh_tokens (session_id);

-- Policy edits reach every replica at once.
create function rbac_rules_changed() returns trigger language plpgsql as $$
begin
    perform pg_notify('moltops_rbac_changed', '');
    return null;
end;
$$;
create trigger rbac_rules_notify after insert or update or delete or truncate on rbac_rules
    for each statement execute function rbac_rules_changed();

-- Superseded by spent_refresh_tokens.
drop index device_sessions_previous_refresh_idx;
alter table device_sessions drop column previous_refresh_hash;
