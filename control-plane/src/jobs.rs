//! Jobs: the commands queued for nodes' agents, and each one's life as one state machine
//!
//! ```text
//! queued ──► dispatched ──► running ──► succeeded | failed | cancelled
//!   │  ▲          │            │
//!   │  └──────────┴────────────┘   the stream dropped: delivered again (the agent's journal
//!   │                              answers one it already ran or is running)
//!   └──► expired | cancelled       never delivered by its deadline, or cancelled while queued
//! ```
//!
//! Every change is stored first and appended, in the same statement, to the job's ordered event
//! log (`job_events`), which `GET /v1/jobs/{job_id}/events` streams; each event is announced with
//! `pg_notify` so whichever replica serves the stream hears it at once.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::fleet::CHANNEL_COMMAND_QUEUED;

/// Announces a new event of a job (payload: the job id).
pub const CHANNEL_JOB_EVENT: &str = "moltops_job_event";

/// A command not delivered within this long expires instead.
pub const COMMAND_TTL: chrono::Duration = chrono::Duration::hours(1);

/// Why an expired command did not run.
pub const EXPIRED: &str = "not delivered before its deadline (the node was away); it did not run";

/// Why a command failed without a result from the agent.
pub const OUTCOME_UNKNOWN: &str =
    "the agent's stream closed before it reported a result; the outcome on the host is unknown";

/// Deliveries before a command the agent never acknowledged fails as outcome unknown. A command
/// the agent said it is running does not use up deliveries: it ends with the agent's result (or
/// "interrupted" if the agent died running it).
pub const MAX_DELIVERIES: i32 = 5;

/// The statuses a job ends in.
pub const TERMINAL: [&str; 4] = ["succeeded", "failed", "cancelled", "expired"];

pub fn is_terminal(status: &str) -> bool {
    TERMINAL.contains(&status)
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct CommandRow {
    pub id: Uuid,
    pub node_id: Uuid,
    pub kind: String,
    pub status: String,
    pub payload: Value,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub step: Option<String>,
    pub idempotency_key: Option<String>,
    pub request_hash: Option<String>,
    pub audit_event_id: Option<Uuid>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancel_requested_by: Option<String>,
    pub events: i32,
}

/// One entry of a job's event log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobEvent {
    pub seq: i32,
    pub at: DateTime<Utc>,
    /// `state`, `step` or `log`.
    pub kind: String,
    pub status: Option<String>,
    pub step: Option<String>,
    pub message: String,
}

/// Appends one event to a job (the caller holds the row, or the job is its own: the counter
/// update serialises appends per job) and announces it.
async fn append(
    conn: &mut PgConnection,
    job_id: Uuid,
    kind: &str,
    status: Option<&str>,
    step: Option<&str>,
    message: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "with c as (update commands set events = events + 1 where id = $1 returning events)
         insert into job_events (job_id, seq, at, kind, status, step, message)
         select $1, events, $2, $3, $4, $5, $6 from c",
        job_id,
        now,
        kind,
        status,
        step,
        message
    )
    .execute(&mut *conn)
    .await?;
    notify(conn, &[job_id]).await
}

async fn notify(conn: &mut PgConnection, job_ids: &[Uuid]) -> Result<(), sqlx::Error> {
    if job_ids.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "select pg_notify($1, id::text) from unnest($2::uuid[]) id",
        CHANNEL_JOB_EVENT,
        job_ids
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// What a new job is.
pub struct NewCommand<'a> {
    pub node_id: Uuid,
    pub kind: &'a str,
    pub payload: &'a Value,
    pub created_by: &'a str,
    /// The client's `Idempotency-Key` and the hash of the request it came with.
    pub idempotency: Option<(&'a str, &'a str)>,
}

/// Queues a command and wakes whichever replica holds the node's stream (the notification is
/// delivered on commit). A concurrent request with the same idempotency key fails with a unique
/// violation (see [`find_idempotent`]).
pub async fn enqueue_command(
    conn: &mut PgConnection,
    new: NewCommand<'_>,
    now: DateTime<Utc>,
) -> Result<CommandRow, sqlx::Error> {
    let (key, hash) = new.idempotency.unzip();
    let id = Uuid::now_v7();
    sqlx::query!(
        "insert into commands (id, node_id, kind, status, payload, created_by, created_at,
                               deadline_at, idempotency_key, request_hash)
         values ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9)",
        id,
        new.node_id,
        new.kind,
        new.payload,
        new.created_by,
        now,
        now + COMMAND_TTL,
        key,
        hash
    )
    .execute(&mut *conn)
    .await?;
    append(
        conn,
        id,
        "state",
        Some("queued"),
        None,
        &format!("queued by {}", new.created_by),
        now,
    )
    .await?;
    sqlx::query!(
        "select pg_notify($1, $2)",
        CHANNEL_COMMAND_QUEUED,
        new.node_id.to_string()
    )
    .execute(&mut *conn)
    .await?;
    get(&mut *conn, id).await?.ok_or(sqlx::Error::RowNotFound)
}

/// Remembers the audit row that records the job's creation (returned on an idempotent retry).
pub async fn set_audit_event(
    db: impl PgExecutor<'_>,
    job_id: Uuid,
    event_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update commands set audit_event_id = $2 where id = $1",
        job_id,
        event_id
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The job an earlier request of this caller created with this idempotency key.
pub async fn find_idempotent(
    db: impl PgExecutor<'_>,
    created_by: &str,
    key: &str,
) -> Result<Option<CommandRow>, sqlx::Error> {
    sqlx::query_as!(
        CommandRow,
        "select id, node_id, kind, status, payload, result, error, created_by, created_at, sent_at,
                started_at, completed_at, deadline_at, attempts, step, idempotency_key,
                request_hash, audit_event_id, cancel_requested_at, cancel_requested_by, events
         from commands where created_by = $1 and idempotency_key = $2",
        created_by,
        key
    )
    .fetch_optional(db)
    .await
}

pub async fn get(db: impl PgExecutor<'_>, id: Uuid) -> Result<Option<CommandRow>, sqlx::Error> {
    sqlx::query_as!(
        CommandRow,
        "select id, node_id, kind, status, payload, result, error, created_by, created_at, sent_at,
                started_at, completed_at, deadline_at, attempts, step, idempotency_key,
                request_hash, audit_event_id, cancel_requested_at, cancel_requested_by, events
         from commands where id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

/// A node's command (none if the id is another node's).
pub async fn get_command(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    command_id: Uuid,
) -> Result<Option<CommandRow>, sqlx::Error> {
    Ok(get(db, command_id).await?.filter(|c| c.node_id == node_id))
}

/// Which jobs to list.
#[derive(Debug, Default)]
pub struct JobQuery {
    pub node_id: Option<Uuid>,
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Only jobs on nodes matching this (the caller's scope, and any filter).
    pub selector: crate::fleet::Selector,
    /// Newest first, strictly older than this (created_at, id).
    pub before: Option<(DateTime<Utc>, Uuid)>,
    pub limit: i64,
}

/// Newest first.
pub async fn list(db: impl PgExecutor<'_>, q: &JobQuery) -> Result<Vec<CommandRow>, sqlx::Error> {
    let (before_at, before_id) = q.before.unzip();
    let exists: Vec<String> = q.selector.exists.clone();
    sqlx::query_as!(
        CommandRow,
        "select c.id, c.node_id, c.kind, c.status, c.payload, c.result, c.error, c.created_by,
                c.created_at, c.sent_at, c.started_at, c.completed_at, c.deadline_at, c.attempts,
                c.step, c.idempotency_key, c.request_hash, c.audit_event_id,
                c.cancel_requested_at, c.cancel_requested_by, c.events
         from commands c join nodes n on n.id = c.node_id
         where ($1::uuid is null or c.node_id = $1)
           and ($2::text is null or c.status = $2)
           and ($3::text is null or c.kind = $3)
           and n.labels @> $4::jsonb
           and not exists (select 1 from jsonb_array_elements($5::jsonb) e where n.labels @> e)
           and n.labels ?& $6::text[]
           and ($7::timestamptz is null or (c.created_at, c.id) < ($7, $8))
         order by c.created_at desc, c.id desc
         limit $9",
        q.node_id,
        q.status,
        q.kind,
        q.selector.equals_json(),
        q.selector.not_equals_json(),
        &exists,
        before_at,
        before_id,
        q.limit
    )
    .fetch_all(db)
    .await
}

/// A job's events after `after`, in order.
pub async fn events(
    db: impl PgExecutor<'_>,
    job_id: Uuid,
    after: i32,
    limit: i64,
) -> Result<Vec<JobEvent>, sqlx::Error> {
    sqlx::query_as!(
        JobEvent,
        "select seq, at, kind, status, step, message from job_events
         where job_id = $1 and seq > $2 order by seq limit $3",
        job_id,
        after,
        limit
    )
    .fetch_all(db)
    .await
}

/// Expires the commands that were never delivered and whose deadline passed; returns
/// (command id, node id) of each. A command that was delivered once is not expired: it is
/// delivered again until its true result arrives.
pub async fn expire_commands(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    let rows = sqlx::query!(
        "with e as (
             update commands set status = 'expired', error = $2, completed_at = $1,
                                 events = events + 1
             where status = 'queued' and attempts = 0 and deadline_at < $1
             returning id, node_id, events),
         ev as (insert into job_events (job_id, seq, at, kind, status, message)
                select id, events, $1, 'state', 'expired', $2 from e)
         select id, node_id from e",
        now,
        EXPIRED
    )
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    notify(conn, &ids).await?;
    Ok(rows.into_iter().map(|r| (r.id, r.node_id)).collect())
}

/// A command handed to a stream.
#[derive(Debug)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub payload: Value,
    pub created_by: String,
    pub idempotency_key: Option<String>,
    pub deadline_at: Option<DateTime<Utc>>,
}

/// Claims the node's queued commands for sending on `session_id`. Only the node's current stream
/// (the one that said hello last) of a node that is not revoked may claim, so a stale stream on
/// another replica never swallows commands; `skip locked` keeps two claimers from taking the
/// same row.
pub async fn claim_queued_commands(
    conn: &mut PgConnection,
    node_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let rows = sqlx::query!(
        "with claimed as (
             update commands set status = 'dispatched', sent_at = $3, session_id = $2,
                                 events = events + 1
             where id in (select c.id from commands c
                          where c.node_id = $1 and c.status = 'queued'
                            and (c.attempts > 0 or c.deadline_at is null or c.deadline_at >= $3)
                            and exists (select 1 from nodes n
                                        where n.id = $1 and n.session_id = $2 and n.revoked_at is null)
                          order by c.created_at, c.id limit $4 for update skip locked)
             returning id, kind, payload, created_by, idempotency_key, deadline_at, attempts,
                       events, created_at),
         ev as (insert into job_events (job_id, seq, at, kind, status, message)
                select id, events, $3, 'state', 'dispatched',
                       case when attempts = 0 then 'sent to the agent'
                            else 'sent to the agent again (delivery ' || (attempts + 1) || ')' end
                from claimed)
         select id, kind, payload, created_by, idempotency_key, deadline_at from claimed
         order by created_at, id",
        node_id,
        session_id,
        now,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    notify(conn, &ids).await?;
    Ok(rows
        .into_iter()
        .map(|r| Claimed {
            id: r.id,
            kind: r.kind,
            payload: r.payload,
            created_by: r.created_by,
            idempotency_key: r.idempotency_key,
            deadline_at: r.deadline_at,
        })
        .collect())
}

/// The node's commands on this stream whose cancellation was asked for and not yet sent on it;
/// marks them sent.
pub async fn take_cancels(
    db: impl PgExecutor<'_>,
    node_id: Uuid,
    session_id: Uuid,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar!(
        "update commands set cancel_sent_session = $2
         where node_id = $1 and session_id = $2 and status in ('dispatched', 'running')
               and cancel_requested_at is not null
               and cancel_sent_session is distinct from $2
         returning id",
        node_id,
        session_id
    )
    .fetch_all(db)
    .await
}

/// When a node's new stream says hello: every command sent on an earlier stream of it without a
/// result (the stream dropped, or the replica holding it died) goes back to the queue, to be
/// delivered again on this stream (the agent's journal keeps it from running twice). One the
/// agent never acknowledged and that was delivered too often fails as outcome unknown. Returns
/// the ids that failed.
pub async fn redeliver_in_flight(
    conn: &mut PgConnection,
    node_id: Uuid,
    session_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let failed = sqlx::query!(
        "with f as (
             update commands set status = 'failed', error = $4, completed_at = $3,
                                 events = events + 1
             where node_id = $1 and status = 'dispatched' and session_id is distinct from $2
                   and attempts + 1 >= $5
             returning id, events),
         ev as (insert into job_events (job_id, seq, at, kind, status, message)
                select id, events, $3, 'state', 'failed', $4 from f)
         select id from f",
        node_id,
        session_id,
        now,
        OUTCOME_UNKNOWN,
        MAX_DELIVERIES
    )
    .fetch_all(&mut *conn)
    .await?;
    let requeued = sqlx::query!(
        "with q as (
             update commands
             set attempts = case when status = 'running' then greatest(attempts, 1)
                                 else attempts + 1 end,
                 status = 'queued', events = events + 1
             where node_id = $1 and status in ('dispatched', 'running')
                   and session_id is distinct from $2
             returning id, events),
         ev as (insert into job_events (job_id, seq, at, kind, status, message)
                select id, events, $3, 'state', 'queued',
                       'the stream to the agent closed before the result; queued to be sent again'
                from q)
         select id from q",
        node_id,
        session_id,
        now
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut ids: Vec<Uuid> = failed.iter().map(|r| r.id).collect();
    ids.extend(requeued.iter().map(|r| r.id));
    notify(conn, &ids).await?;
    Ok(failed.into_iter().map(|r| r.id).collect())
}

/// Fails everything still pending for a node that is being revoked.
pub async fn fail_pending_for_revoked(
    conn: &mut PgConnection,
    node_id: Uuid,
    now: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let rows = sqlx::query!(
        "with f as (
             update commands set status = 'failed', error = 'the node was revoked',
                                 completed_at = $2, events = events + 1
             where node_id = $1 and status in ('queued', 'dispatched', 'running')
             returning id, events),
         ev as (insert into job_events (job_id, seq, at, kind, status, message)
                select id, events, $2, 'state', 'failed', 'the node was revoked' from f)
         select id from f",
        node_id,
        now
    )
    .fetch_all(&mut *conn)
    .await?;
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    notify(conn, &ids).await?;
    Ok(rows.len() as u64)
}

/// How a command ended, as its agent reported.
#[derive(Debug)]
pub enum Finish {
    Succeeded(Value),
    Failed(String),
    /// Stopped early at the control plane's request: (result, what it left behind).
    Cancelled(Value, String),
}

/// Stores a command's result. Only this node's own, outstanding commands can be completed: the
/// node id comes from the verified certificate, so one agent cannot complete another's commands.
/// Returns the status stored, or none if the command was not outstanding.
pub async fn complete_command(
    conn: &mut PgConnection,
    node_id: Uuid,
    command_id: Uuid,
    finish: Finish,
    now: DateTime<Utc>,
) -> Result<Option<&'static str>, sqlx::Error> {
    let (status, result, error, message) = match finish {
        Finish::Succeeded(v) => ("succeeded", Some(v), None, "finished".to_owned()),
        Finish::Failed(e) => ("failed", None, Some(e.clone()), e),
        Finish::Cancelled(v, m) => ("cancelled", Some(v), Some(m.clone()), m),
    };
    let done = sqlx::query!(
        "with d as (
             update commands set status = $3, result = $4, error = $5, completed_at = $6,
                                 events = events + 1
             where id = $1 and node_id = $2 and status in ('queued', 'dispatched', 'running')
             returning id, events)
         insert into job_events (job_id, seq, at, kind, status, message)
         select id, events, $6, 'state', $3, $7 from d",
        command_id,
        node_id,
        status,
        result,
        error,
        now,
        message
    )
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(None);
    }
    notify(conn, &[command_id]).await?;
    Ok(Some(status))
}

/// What the agent said about a command while running it.
#[derive(Debug)]
pub enum Progress<'a> {
    Started,
    Step { step: &'a str, message: &'a str },
    Log(&'a str),
}

/// Records progress on one of this node's outstanding commands (others are ignored). The first
/// `Started` moves it to running.
pub async fn record_progress(
    conn: &mut PgConnection,
    node_id: Uuid,
    command_id: Uuid,
    progress: Progress<'_>,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        "select status from commands where id = $1 and node_id = $2
               and status in ('dispatched', 'running') for update",
        command_id,
        node_id
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(false);
    };
    match progress {
        Progress::Started => {
            if row.status == "dispatched" {
                sqlx::query!(
                    "update commands set status = 'running', started_at = coalesce(started_at, $2)
                     where id = $1",
                    command_id,
                    now
                )
                .execute(&mut *conn)
                .await?;
                append(
                    conn,
                    command_id,
                    "state",
                    Some("running"),
                    None,
                    "the agent is running it",
                    now,
                )
                .await?;
            }
        }
        Progress::Step { step, message } => {
            sqlx::query!(
                "update commands set step = $2,
                        status = 'running', started_at = coalesce(started_at, $3)
                 where id = $1",
                command_id,
                step,
                now
            )
            .execute(&mut *conn)
            .await?;
            append(conn, command_id, "step", None, Some(step), message, now).await?;
        }
        Progress::Log(line) => {
            append(conn, command_id, "log", None, None, line, now).await?;
        }
    }
    Ok(true)
}

/// What a cancel request did.
#[derive(Debug)]
pub enum Cancel {
    /// It was still queued: it is cancelled and will never run.
    Cancelled,
    /// It is with the agent: the request goes to the stream that holds it; the job ends when the
    /// agent reports (cancelled, or its result if it finished first).
    Requested,
    /// Asked before and not finished yet.
    AlreadyRequested,
    /// It already ended with this status.
    Finished(String),
}

/// Cancels a queued job at once, or asks the agent running it to stop.
pub async fn cancel(
    conn: &mut PgConnection,
    job_id: Uuid,
    by: &str,
    reason: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Cancel, sqlx::Error> {
    let row = sqlx::query!(
        "select status, node_id, cancel_requested_at from commands where id = $1 for update",
        job_id
    )
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(sqlx::Error::RowNotFound)?;
    let why = match reason {
        Some(r) => format!("cancelled by {by}: {r}"),
        None => format!("cancelled by {by}"),
    };
    match row.status.as_str() {
        "queued" if row.cancel_requested_at.is_none() => {
            // A queued command with deliveries behind it may be running on the host (its
            // stream dropped): that one is cancelled through its agent, like a running one.
            let attempts =
                sqlx::query_scalar!("select attempts from commands where id = $1", job_id)
                    .fetch_one(&mut *conn)
                    .await?;
            if attempts == 0 {
                sqlx::query!(
                    "update commands set status = 'cancelled', error = $2, completed_at = $3,
                            cancel_requested_at = $3, cancel_requested_by = $4
                     where id = $1",
                    job_id,
                    why,
                    now,
                    by
                )
                .execute(&mut *conn)
                .await?;
                append(conn, job_id, "state", Some("cancelled"), None, &why, now).await?;
                return Ok(Cancel::Cancelled);
            }
            request(conn, job_id, row.node_id, by, &why, now).await?;
            Ok(Cancel::Requested)
        }
        "dispatched" | "running" | "queued" if row.cancel_requested_at.is_some() => {
            Ok(Cancel::AlreadyRequested)
        }
        "dispatched" | "running" => {
            request(conn, job_id, row.node_id, by, &why, now).await?;
            Ok(Cancel::Requested)
        }
        other => Ok(Cancel::Finished(other.to_owned())),
    }
}

async fn request(
    conn: &mut PgConnection,
    job_id: Uuid,
    node_id: Uuid,
    by: &str,
    why: &str,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "update commands set cancel_requested_at = $2, cancel_requested_by = $3 where id = $1",
        job_id,
        now,
        by
    )
    .execute(&mut *conn)
    .await?;
    append(
        conn,
        job_id,
        "log",
        None,
        None,
        &format!("cancel requested ({why}); the agent stops at its next safe point"),
        now,
    )
    .await?;
    // Wakes the replica holding the node's stream, which sends the cancel.
    sqlx::query!(
        "select pg_notify($1, $2)",
        CHANNEL_COMMAND_QUEUED,
        node_id.to_string()
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}
