-- Database-level guards for the audit chain ([P3], after review). Without disabling triggers
-- (which needs the table's owner), nobody — the application role included — can:
--   * insert a row that is not the next link of the chain (seq = head + 1, prev_hash = head hash,
--     a hash present), so no row can be slipped in below the chain or beside it;
--   * move the head other than one step forward, or change where the chain starts;
--   * delete or replace the head.
alter table audit_head add column legacy_rows bigint;
update audit_head set legacy_rows = (select count(*) from audit_events where seq < audit_head.chain_start);
alter table audit_head alter column legacy_rows set not null;

create function audit_events_append_link() returns trigger language plpgsql as $$
declare
    head audit_head%rowtype;
begin
    select * into head from audit_head where id;
    if new.seq <> head.seq + 1 or new.prev_hash is distinct from head.hash or new.hash is null then
        raise exception 'audit_events: only the next link of the chain may be appended (seq %, head %)',
            new.seq, head.seq using errcode = 'insufficient_privilege';
    end if;
    return new;
end;
$$;
create trigger audit_events_append_link before insert on audit_events
    for each row execute function audit_events_append_link();

create function audit_head_guard() returns trigger language plpgsql as $$
begin
    if tg_op <> 'UPDATE' then
        raise exception 'audit_head: % refused', tg_op using errcode = 'insufficient_privilege';
    end if;
    if new.chain_start <> old.chain_start or new.legacy_rows <> old.legacy_rows
       or new.seq <> old.seq + 1 then
        raise exception 'audit_head: it only moves one step forward' using errcode = 'insufficient_privilege';
    end if;
    return new;
end;
$$;
create trigger audit_head_guard before update or delete on audit_head
    for each row execute function audit_head_guard();
create trigger audit_head_no_truncate before truncate on audit_head
    for each statement execute function audit_append_only();
create trigger audit_head_no_insert before insert on audit_head
    for each row execute function audit_head_guard();
