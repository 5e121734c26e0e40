-- The fleet registry, enrollment, API tokens, the command queue and the audit log.
--
-- Secrets are never stored in clear: enrollment tokens and API tokens are stored as SHA-256 of a
-- random value with at least 128 bits of entropy (a fast hash is enough for such inputs; slow
-- password hashes are for low-entropy secrets), and the CA private key is sealed with AES-256-GCM.

-- The private CA. One row (id = 1). `key_sealed` = nonce || ciphertext || tag under the
-- key-encryption key (MOLTOPS_MASTER_KEY or the 0600 key file); `kek_id` names that key so a
-- replica started with another key fails loudly instead of minting a second CA.
create table certificate_authority (
    id              smallint primary key check (id = 1),
    certificate_pem text not null,
    key_sealed      bytea not null,
    kek_id          text not null,
    created_at      timestamptz not null
);

-- Automation credentials. `role` is one of owner/admin/viewer until [P2] adds custom roles.
create table api_tokens (
    id            uuid primary key,
    name          text not null,
    role          text not null,
    token_hash    bytea not null,
    created_at    timestamptz not null,
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    constraint api_tokens_token_hash_key unique (token_hash),
    constraint api_tokens_role_check check (role in ('owner', 'admin', 'viewer'))
);

create table enrollment_tokens (
    id          uuid primary key,
    token_hash  bytea not null,
    labels      jsonb not null default '{}'::jsonb,
    note        text not null default '',
    max_uses    integer not null check (max_uses >= 1),
    uses        integer not null default 0,
    created_at  timestamptz not null,
    created_by  text not null,
    expires_at  timestamptz not null,
    revoked_at  timestamptz,
    constraint enrollment_tokens_token_hash_key unique (token_hash),
    -- The redemption UPDATE relies on this to make "exactly one success" a database fact.
    constraint enrollment_tokens_uses_check check (uses <= max_uses)
);

-- One row per enrolled host. Liveness is derived, not stored: a node is online while it has an
-- open stream (`connected`) and its last heartbeat is inside the configured window, so a replica
-- that dies without cleaning up cannot leave its nodes "online" forever.
create table nodes (
    id                   uuid primary key,
    hostname             text not null,
    labels               jsonb not null default '{}'::jsonb,
    agent_version        text not null default '',
    os                   text not null default '',
    os_version           text not null default '',
    arch                 text not null default '',
    cpu_cores            integer not null default 0,
    memory_bytes         bigint not null default 0,
    disk_free_bytes      bigint not null default 0,
    enrolled_at          timestamptz not null,
    enrollment_token_id  uuid references enrollment_tokens (id) on delete set null,
    last_seen            timestamptz,
    connected            boolean not null default false,
    -- The stream that last said hello; a stale stream closing must not mark a newer one offline.
    session_id           uuid,
    certificate_serial   text not null,
    certificate_not_after timestamptz not null,
    revoked_at           timestamptz,
    revoked_reason       text
);
create index nodes_labels_idx on nodes using gin (labels);

-- The durable command queue: a row is written before anything is sent, so a command survives a
-- control-plane restart and is delivered by whichever replica holds the node's stream.
create table commands (
    id            uuid primary key,
    node_id       uuid not null references nodes (id) on delete cascade,
    kind          text not null,
    status        text not null,
    payload       jsonb not null default '{}'::jsonb,
    result        jsonb,
    error         text,
    created_by    text not null,
    created_at    timestamptz not null,
    sent_at       timestamptz,
    completed_at  timestamptz,
    constraint commands_status_check check (status in ('queued', 'sent', 'succeeded', 'failed'))
);
create index commands_node_queued_idx on commands (node_id, created_at) where status = 'queued';

-- The audit log, written in the same transaction as the change it records. [P3] adds the hash
-- chain, checkpoints and the append-only trigger; the columns here are the ones it keeps.
create table audit_events (
    seq          bigserial primary key,
    id           uuid not null unique,
    occurred_at  timestamptz not null,
    actor_kind   text not null,
    actor_id     text not null,
    action       text not null,
    target_kind  text not null,
    target_id    text not null,
    reason       text,
    outcome      text not null,
    detail       jsonb not null default '{}'::jsonb
);
