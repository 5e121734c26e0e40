-- Device pairing and device sessions ([P2]).
--
-- A pairing is a short-lived code shown on a new device (a browser without SSO, the CLI, a
-- phone). It only works after an Owner/Admin approves it, binding a role and a device name; the
-- device then confirms it (with the secret it got from /pair/start) and receives tokens. A setup
-- pairing is minted at first boot, when no Owner exists, and printed only to the server console.
-- Codes, secrets and tokens are stored as SHA-256 only.
create table pairings (
    id              uuid primary key,
    kind            text not null check (kind in ('device', 'setup')),
    code_hash       bytea not null,
    secret_hash     bytea,
    client_addr     text not null default '',
    requested_name  text not null default '',
    created_at      timestamptz not null,
    expires_at      timestamptz not null,
    approved_at     timestamptz,
    approved_by     text,
    role            text check (role in ('owner', 'admin', 'viewer')),
    device_name     text,
    consumed_at     timestamptz,
    device_id       uuid,
    constraint pairings_code_hash_key unique (code_hash)
);

-- A paired device is a principal with a role, like an API token, but it signs in with
-- short-lived access tokens and rotating refresh tokens.
create table devices (
    id          uuid primary key,
    name        text not null,
    role        text not null check (role in ('owner', 'admin', 'viewer')),
    created_at  timestamptz not null,
    approved_by text not null,
    revoked_at  timestamptz
);

create table device_sessions (
    id                    uuid primary key,
    device_id             uuid not null references devices (id) on delete cascade,
    access_hash           bytea not null,
    access_expires_at     timestamptz not null,
    refresh_hash          bytea not null,
    -- The refresh token this one replaced: presenting it again means it was stolen, and the
    -- whole session is revoked.
    previous_refresh_hash bytea,
    refresh_expires_at    timestamptz not null,
    created_at            timestamptz not null,
    revoked_at            timestamptz,
    constraint device_sessions_access_hash_key unique (access_hash),
    constraint device_sessions_refresh_hash_key unique (refresh_hash)
);
create index device_sessions_previous_refresh_idx on device_sessions (previous_refresh_hash);
