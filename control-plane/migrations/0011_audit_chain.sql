-- The audit trail becomes a hash chain ([P3]).
--
-- Each row carries hash = SHA-256(prev_hash || canonical encoding of the row) (the encoding is
-- in control-plane/src/audit.rs). Appends are serialised by locking the single row of
-- audit_head inside the writer's transaction, so sequence numbers are gapless and the chain never
-- forks, across any number of replicas: a rolled-back transaction also rolls back its head move.
-- Rows written before this migration predate the chain: they keep a null hash and are reported
-- as unverifiable.
alter table audit_events alter column seq drop default;
drop sequence if exists audit_events_seq_seq;
alter table audit_events
    add column auth_method text not null default '',
    add column request_id  text not null default '',
    add column prev_hash   bytea,
    add column hash        bytea;

create table audit_head (
    id           boolean primary key default true check (id),
    seq          bigint not null,
    hash         bytea not null,
    -- The first sequence number that is chained (earlier rows predate the chain).
    chain_start  bigint not null
);
insert into audit_head (seq, hash, chain_start)
select coalesce(max(seq), 0), '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea,
       coalesce(max(seq), 0) + 1
from audit_events;

-- Signed checkpoints of the chain head, exportable, so that truncating the tail or rewriting the
-- whole chain is detectable against a checkpoint kept elsewhere.
create table audit_signing_keys (
    id            text primary key,
    public_key    bytea not null,
    key_sealed    bytea not null,
    kek_id        text not null,
    created_at    timestamptz not null
);
create table audit_checkpoints (
    seq        bigint primary key,
    hash       bytea not null,
    signed_at  timestamptz not null,
    key_id     text not null references audit_signing_keys (id),
    signature  bytea not null
);

-- Append-only at the database level: no UPDATE, DELETE or TRUNCATE, whoever asks. (A superuser
-- can still disable triggers; that is what the chain and the checkpoints are for.) The
-- application role needs only SELECT and INSERT on these tables; see docs/security.md.
create function audit_append_only() returns trigger language plpgsql as $$
begin
    raise exception '% is append-only: % refused', tg_table_name, tg_op
        using errcode = 'insufficient_privilege';
end;
$$;
create trigger audit_events_append_only before update or delete on audit_events
    for each row execute function audit_append_only();
create trigger audit_events_no_truncate before truncate on audit_events
    for each statement execute function audit_append_only();
create trigger audit_checkpoints_append_only before update or delete on audit_checkpoints
    for each row execute function audit_append_only();
create trigger audit_checkpoints_no_truncate before truncate on audit_checkpoints
    for each statement execute function audit_append_only();
revoke update, delete, truncate on audit_events, audit_checkpoints from public;

create index audit_events_action_idx on audit_events (action, seq);
create index audit_events_actor_idx on audit_events (actor_id, seq);
create index audit_events_target_idx on audit_events (target_kind, target_id, seq);
create index audit_events_time_idx on audit_events (occurred_at);

-- Who may read the audit log: admins (and owners, who may do everything). Export needs
-- audit/export, verify audit/verify.
insert into rbac_rules (ptype, v0, v1, v2) values
    ('p', 'admin', 'audit', 'read'),
    ('p', 'admin', 'audit', 'export'),
    ('p', 'admin', 'audit', 'verify');
