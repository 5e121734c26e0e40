-- An SSO user whose groups no longer map to a role keeps its row (history, sessions listing) but
-- holds no role: every request and refresh of theirs is refused until a sign-in maps one again.
alter table sso_users alter column role drop not null;
-- Pending CLI sign-ins are capped per client address.
create index cli_logins_client_idx on cli_logins (client_addr) where consumed_at is null;
