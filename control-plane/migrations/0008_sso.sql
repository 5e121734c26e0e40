-- Single sign-on with OpenID Connect ([P2]).
--
-- An SSO user is keyed by (issuer, subject) — never by email, which a provider may let users
-- change or reuse. Its role comes from the provider's group claim through the configured mapping
-- at each sign-in; a sign-in that maps to no role is refused and ends the user's sessions. An
-- owner can disable an SSO user, which ends every session at once and refuses later sign-ins.
create table sso_users (
    id             uuid primary key,
    provider       text not null,
    issuer         text not null,
    subject        text not null,
    email          text not null default '',
    name           text not null default '',
    groups         jsonb not null default '[]',
    role           text not null check (role in ('owner', 'admin', 'viewer')),
    scope          text not null default '',
    created_at     timestamptz not null,
    last_login_at  timestamptz not null,
    disabled_at    timestamptz,
    constraint sso_users_issuer_subject_key unique (issuer, subject)
);

-- A session belongs to a paired device or to an SSO user. Web sessions (cookie) also carry the
-- hash of their CSRF token; token sessions (CLI) do not.
alter table device_sessions
    alter column device_id drop not null,
    add column sso_user_id uuid references sso_users (id) on delete cascade,
    add column csrf_hash bytea,
    add constraint device_sessions_principal_check check ((device_id is null) <> (sso_user_id is null));
create index device_sessions_sso_user_idx on device_sessions (sso_user_id);

-- A device-style CLI sign-in: the CLI starts it and polls with a secret; the user signs in in a
-- browser and confirms the code the CLI shows; the first poll after that receives the tokens.
create table cli_logins (
    id            uuid primary key,
    provider      text not null,
    poll_hash     bytea not null,
    user_code     text not null,
    approve_hash  bytea,
    client_addr   text not null default '',
    created_at    timestamptz not null,
    expires_at    timestamptz not null,
    sso_user_id   uuid references sso_users (id) on delete cascade,
    approved_at   timestamptz,
    consumed_at   timestamptz,
    constraint cli_logins_poll_hash_key unique (poll_hash)
);

-- An OpenID sign-in in flight: created by /login, consumed once by /callback. The PKCE verifier
-- is never stored: it lives in the browser's binding cookie, whose hash is kept here.
create table oidc_logins (
    id            uuid primary key,
    provider      text not null,
    state_hash    bytea not null,
    browser_hash  bytea not null,
    nonce         text not null,
    cli_login_id  uuid references cli_logins (id) on delete cascade,
    created_at    timestamptz not null,
    expires_at    timestamptz not null,
    consumed_at   timestamptz,
    constraint oidc_logins_state_hash_key unique (state_hash)
);
create index oidc_logins_expires_idx on oidc_logins (expires_at);
create index cli_logins_expires_idx on cli_logins (expires_at);
