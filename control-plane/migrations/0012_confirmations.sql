-- Confirmation tokens for destructive actions ([P3]). Calling a destructive operation without
-- one answers 428 with a token bound to (who, action, target, parameters); the same call with
-- the token (single-use, 5 minutes) goes through. Stored as SHA-256.
create table confirmation_tokens (
    id           uuid primary key,
    token_hash   bytea not null,
    principal    text not null,
    action       text not null,
    target       text not null,
    params_hash  bytea not null,
    created_at   timestamptz not null,
    expires_at   timestamptz not null,
    used_at      timestamptz,
    constraint confirmation_tokens_hash_key unique (token_hash)
);
create index confirmation_tokens_expires_idx on confirmation_tokens (expires_at);
