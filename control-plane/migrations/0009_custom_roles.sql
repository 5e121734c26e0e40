-- Custom roles ([P2]). Besides the built-in owner, admin and viewer, an owner may define roles
-- whose permissions are a subset of Admin's (casbin 'p' rules in rbac_rules, keyed by the role's
-- name). A role is checked to exist when it is granted, and cannot be deleted while an active
-- principal holds it; revoked principals keep the name as history (no foreign key), and a
-- principal whose role has no rules is allowed nothing.
create table roles (
    name         text primary key,
    description  text not null default '',
    builtin      boolean not null default false,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    constraint roles_name_check check (name ~ '^[a-z][a-z0-9_-]{0,31}$')
);
insert into roles (name, description, builtin) values
    ('owner', 'Everything, including users, roles, API tokens, SSO and the CA.', true),
    ('admin', 'Operates the fleet and approves devices.', true),
    ('viewer', 'Reads the fleet.', true);

alter table api_tokens drop constraint api_tokens_role_check;
alter table devices drop constraint devices_role_check;
alter table pairings drop constraint pairings_role_check;
alter table sso_users drop constraint sso_users_role_check;

-- Roles are read by every owner screen; rules by every replica.
insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'admin', 'roles', 'read');
