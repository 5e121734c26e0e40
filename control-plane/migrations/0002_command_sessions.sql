-- Commands remember the stream they were sent on, so a stream that dies with commands in flight
-- fails exactly those ("outcome unknown") instead of leaving them `sent` forever. Agents do not
-- yet de-duplicate by command id, so a command is never silently re-sent.
alter table commands add column session_id uuid;
create index commands_session_sent_idx on commands (session_id) where status = 'sent';

-- After a renewal the superseded certificate stays acceptable only until the agent confirms it
-- holds the new one (RenewComplete) or connects with it; then only the current serial works.
alter table nodes add column previous_certificate_serial text;
