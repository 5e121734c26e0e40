-- Role-based access control: casbin policy rules, stored here and loaded by every replica.
-- ptype 'p' rules are (role, object, action); '*' matches any object or action. The default
-- roles are seeded below; [P2] adds custom roles and label-scoped bindings on top of this table.
create table rbac_rules (
    id     bigserial primary key,
    ptype  text not null,
    v0     text not null default '',
    v1     text not null default '',
    v2     text not null default '',
    v3     text not null default '',
    v4     text not null default '',
    v5     text not null default '',
    constraint rbac_rules_rule_key unique (ptype, v0, v1, v2, v3, v4, v5)
);

insert into rbac_rules (ptype, v0, v1, v2) values
    -- Owner: everything, including API tokens, users, SSO and the CA.
    ('p', 'owner', '*', '*'),
    -- Admin: operates the fleet and approves devices.
    ('p', 'admin', 'nodes', 'read'),
    ('p', 'admin', 'nodes', 'write'),
    ('p', 'admin', 'nodes', 'revoke'),
    ('p', 'admin', 'commands', 'read'),
    ('p', 'admin', 'commands', 'create'),
    ('p', 'admin', 'enrollment_tokens', 'read'),
    ('p', 'admin', 'enrollment_tokens', 'write'),
    ('p', 'admin', 'ca', 'read'),
    ('p', 'admin', 'pairings', 'approve'),
    ('p', 'admin', 'self', 'read'),
    -- Viewer: reads.
    ('p', 'viewer', 'nodes', 'read'),
    ('p', 'viewer', 'commands', 'read'),
    ('p', 'viewer', 'enrollment_tokens', 'read'),
    ('p', 'viewer', 'ca', 'read'),
    ('p', 'viewer', 'self', 'read');
