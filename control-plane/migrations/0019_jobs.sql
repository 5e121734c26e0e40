-- Jobs ([P4]): a command's whole life as one state machine
--   queued -> dispatched -> running -> succeeded | failed | cancelled | expired
-- with an ordered log of events (state changes, steps, output lines) that
-- GET /v1/jobs/{job_id}/events streams, resumable by sequence number.
alter table commands drop constraint commands_status_check;
update commands set status = 'dispatched' where status = 'sent';
alter table commands add constraint commands_status_check
    check (status in ('queued', 'dispatched', 'running', 'succeeded', 'failed', 'cancelled', 'expired'));
drop index commands_session_sent_idx;
create index commands_session_inflight_idx on commands (session_id)
    where status in ('dispatched', 'running');

alter table commands
    -- The client's key for a safe retry, unique per caller; a retry with the same key and the
    -- same request gets the same job, with another request a 422.
    add column idempotency_key text,
    add column request_hash text,
    add column audit_event_id uuid,
    -- When the agent said it started it, and the step it last reported.
    add column started_at timestamptz,
    add column step text,
    -- Cooperative cancel: requested by whom and when, and the stream it was last sent on (sent
    -- again on a later stream, so a re-delivered command is cancelled too).
    add column cancel_requested_at timestamptz,
    add column cancel_requested_by text,
    add column cancel_sent_session uuid,
    -- The sequence number of the job's last event.
    add column events integer not null default 0;
create unique index commands_idempotency_idx on commands (created_by, idempotency_key)
    where idempotency_key is not null;
create index commands_cancel_pending_idx on commands (node_id)
    where cancel_requested_at is not null and status in ('dispatched', 'running');
create index commands_created_idx on commands (created_at desc, id desc);

create table job_events (
    job_id   uuid not null references commands (id) on delete cascade,
    seq      integer not null,
    at       timestamptz not null,
    kind     text not null check (kind in ('state', 'step', 'log')),
    -- For state events: the status entered.
    status   text,
    step     text,
    message  text not null default '',
    primary key (job_id, seq)
);
