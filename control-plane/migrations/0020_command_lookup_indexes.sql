-- Indexes for lookups that were sequential scans at fleet scale ([P6], measured with
-- moltops-bench at 10,000 agents; figures in docs/benchmarks.md):
--
-- A node's commands still with the agent, read when each new stream says hello
-- (jobs::redeliver_in_flight). Without it, a reconnect storm after some history scanned every
-- command per hello (2.6 ms each at 50,000 rows) and exhausted the pool.
create index commands_node_inflight_idx on commands (node_id)
    where status in ('dispatched', 'running');
-- GET /v1/jobs?node_id=… (a node's page, newest first).
create index commands_node_created_idx on commands (node_id, created_at desc, id desc);
-- GET /v1/jobs?status=… (e.g. "anything still queued?"), newest first.
create index commands_status_created_idx on commands (status, created_at desc, id desc);
