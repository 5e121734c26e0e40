-- Forwarding the audit log to external sinks ([P3]): how far each sink has been sent. One
-- replica forwards at a time (advisory lock); delivery is at least once, in sequence order, so a
-- receiver de-duplicates by `seq`.
create table audit_forward_cursors (
    sink        text primary key,
    last_seq    bigint not null,
    updated_at  timestamptz not null
);
