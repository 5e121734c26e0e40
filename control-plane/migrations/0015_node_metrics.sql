-- The latest host figures an agent reported with its heartbeat ([P4] metrics). Served with their
-- age; the API never waits on a host.
alter table nodes add column metrics jsonb, add column metrics_at timestamptz;
