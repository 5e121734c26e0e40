-- Commands expire ([P4]): one never delivered by its deadline is not delivered at all (a stop
-- queued during an outage must not run days later). One that was delivered keeps being delivered
-- until its true result comes back (the agent's journal answers).
alter table commands add column deadline_at timestamptz;
alter table commands drop constraint commands_status_check,
    add constraint commands_status_check
        check (status in ('queued', 'sent', 'succeeded', 'failed', 'expired'));
create index commands_deadline_idx on commands (deadline_at) where status = 'queued';
