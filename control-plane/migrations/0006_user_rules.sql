-- Users (today: paired devices; SSO users join them in [P2]): admins may list them, only owners
-- change roles or remove them.
insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'admin', 'users', 'read');
