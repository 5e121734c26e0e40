-- The managed gateway's state as the agent last reported it with a heartbeat ([P4]), served by
-- GET /v1/nodes/{node_id}/moltbot/status with its age.
alter table nodes add column gateway jsonb, add column gateway_at timestamptz;
