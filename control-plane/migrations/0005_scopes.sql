-- Label-scoped role bindings: a principal's role applies only to nodes whose labels match its
-- scope (a label selector such as `env=staging`; '' means the whole fleet). Devices inherit the
-- scope of the approver who paired them, unless an unscoped approver sets one.
alter table api_tokens add column scope text not null default '';
alter table devices add column scope text not null default '';
alter table pairings add column scope text not null default '';
