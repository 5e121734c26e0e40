//! The agent streams held by this replica, and the Postgres notifications that reach them.
//!
//! Each open `Connect` stream registers a [`SessionHandle`] here. Other replicas (or this one)
//! announce revocations and newly queued commands with `pg_notify`; the listener task routes each
//! notification to the local session for that node, if there is one. Notifications can be lost
//! while the listener reconnects, so every heartbeat also re-reads the same facts from the
//! database: notify makes it fast, the heartbeat makes it certain.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moltops_proto::agent::ServerMessage;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use uuid::Uuid;

use crate::fleet::{CHANNEL_COMMAND_QUEUED, CHANNEL_NODE_REVOKED};
use crate::jobs::CHANNEL_JOB_EVENT;
use crate::rbac::{Authz, CHANNEL_RBAC_CHANGED};

pub type Outbound = mpsc::Sender<Result<ServerMessage, Status>>;

/// How the hub reaches one open stream.
#[derive(Clone)]
pub struct SessionHandle {
    pub session_id: Uuid,
    pub outbound: Outbound,
    /// Wakes the session to look for queued commands.
    pub wake: Arc<Notify>,
    /// Ends the session.
    pub cancel: CancellationToken,
}

#[derive(Clone)]
pub struct Hub {
    sessions: Arc<Mutex<HashMap<Uuid, SessionHandle>>>,
    /// Job ids with a new event (from any replica), for the job event streams served here.
    job_events: tokio::sync::broadcast::Sender<Uuid>,
    /// Cancelled when this replica shuts down: long-lived responses (event streams) end.
    closing: CancellationToken,
}

impl Default for Hub {
    fn default() -> Self {
        Self {
            sessions: Arc::default(),
            job_events: tokio::sync::broadcast::channel(1024).0,
            closing: CancellationToken::new(),
        }
    }
}

impl Hub {
    /// Hears every job event announced from now on (a lagging receiver re-reads the database).
    pub fn subscribe_job_events(&self) -> tokio::sync::broadcast::Receiver<Uuid> {
        self.job_events.subscribe()
    }

    /// Announces a job event to this replica's event streams.
    pub fn job_event(&self, job_id: Uuid) {
        let _ = self.job_events.send(job_id);
    }

    /// Ends when this replica starts shutting down.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Registers a new stream for `node_id`; an older stream of the same node on this replica
    /// is closed (the agent reconnected, so that one is stale). A stream registered once this
    /// replica is shutting down is closed at once, so none outlives the start of a drain.
    pub fn register(&self, node_id: Uuid, handle: SessionHandle) {
        let previous = match self.sessions.lock() {
            Ok(mut map) => map.insert(node_id, handle.clone()),
            Err(_) => None,
        };
        if let Some(old) = previous {
            old.cancel.cancel();
        }
        // After the insert: either `close_all` (which cancels `closing` before it walks the map)
        // finds this handle, or this sees `closing` cancelled.
        if self.closing.is_cancelled() {
            close_with(&handle, Status::unavailable("control plane shutting down"));
        }
    }

    /// Removes the session if it is still the registered one.
    pub fn unregister(&self, node_id: Uuid, session_id: Uuid) {
        if let Ok(mut map) = self.sessions.lock()
            && map
                .get(&node_id)
                .is_some_and(|h| h.session_id == session_id)
        {
            map.remove(&node_id);
        }
    }

    fn get(&self, node_id: Uuid) -> Option<SessionHandle> {
        self.sessions.lock().ok()?.get(&node_id).cloned()
    }

    pub fn node_ids(&self) -> Vec<Uuid> {
        self.sessions
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Wakes the node's session, if this replica holds it, to send queued commands.
    pub fn wake(&self, node_id: Uuid) {
        if let Some(handle) = self.get(node_id) {
            handle.wake.notify_one();
        }
    }

    /// Wakes every local session (after the listener lost notifications).
    pub fn wake_all(&self) {
        if let Ok(map) = self.sessions.lock() {
            for handle in map.values() {
                handle.wake.notify_one();
            }
        }
    }

    /// Ends the node's stream with `PERMISSION_DENIED`, if this replica holds it.
    pub fn close_revoked(&self, node_id: Uuid) {
        if let Some(handle) = self.get(node_id) {
            close_with(&handle, Status::permission_denied(REVOKED_MESSAGE));
        }
    }

    /// Ends every stream (shutdown).
    pub fn close_all(&self) {
        self.closing.cancel();
        if let Ok(map) = self.sessions.lock() {
            for handle in map.values() {
                close_with(handle, Status::unavailable("control plane shutting down"));
            }
        }
    }
}

/// The status message agents recognise as "this node was revoked".
pub const REVOKED_MESSAGE: &str = "node revoked";

fn close_with(handle: &SessionHandle, status: Status) {
    // A full queue means the agent is not reading; cancelling still ends the stream.
    let _ = handle.outbound.try_send(Err(status));
    handle.cancel.cancel();
}

/// Routes notifications to local sessions until `shutdown`. Reconnects with a capped backoff.
pub async fn listen(pool: PgPool, hub: Hub, authz: Arc<Authz>, shutdown: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    loop {
        let result = listen_once(&pool, &hub, &authz, &shutdown).await;
        if shutdown.is_cancelled() {
            return;
        }
        if let Err(e) = result {
            tracing::warn!(error = %e, "notification listener lost its connection; retrying");
        }
        // Anything announced while we were away is picked up on the next connect.
        if let Err(e) = catch_up(&pool, &hub, &authz).await {
            tracing::warn!(error = %e, "could not re-check local streams");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once(
    pool: &PgPool,
    hub: &Hub,
    authz: &Authz,
    shutdown: &CancellationToken,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener
        .listen_all([
            CHANNEL_NODE_REVOKED,
            CHANNEL_COMMAND_QUEUED,
            CHANNEL_RBAC_CHANGED,
            CHANNEL_JOB_EVENT,
        ])
        .await?;
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            n = listener.try_recv() => n?,
        };
        let Some(notification) = received else {
            // The connection dropped and notifications sent meanwhile are lost (the next
            // `try_recv` reconnects): re-read what they would have said.
            tracing::warn!("notification listener reconnecting; re-checking local streams");
            catch_up(pool, hub, authz).await?;
            continue;
        };
        if notification.channel() == CHANNEL_RBAC_CHANGED {
            reload_policy(pool, authz).await;
            continue;
        }
        let Ok(id) = Uuid::parse_str(notification.payload()) else {
            continue;
        };
        match notification.channel() {
            CHANNEL_NODE_REVOKED => hub.close_revoked(id),
            CHANNEL_COMMAND_QUEUED => hub.wake(id),
            CHANNEL_JOB_EVENT => hub.job_event(id),
            _ => {}
        }
    }
}

async fn reload_policy(pool: &PgPool, authz: &Authz) {
    match authz.reload(pool).await {
        Ok(()) => tracing::info!("authorization policy reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "could not reload the authorization policy; keeping the previous one")
        }
    }
}

/// Closes local streams of nodes revoked meanwhile, wakes the rest to look for commands, and
/// re-reads the authorization policy.
async fn catch_up(pool: &PgPool, hub: &Hub, authz: &Authz) -> Result<(), sqlx::Error> {
    reload_policy(pool, authz).await;
    let local = hub.node_ids();
    let revoked = sqlx::query_scalar!(
        "select id from nodes where id = any($1) and revoked_at is not null",
        &local
    )
    .fetch_all(pool)
    .await?;
    for node_id in revoked {
        hub.close_revoked(node_id);
    }
    hub.wake_all();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(id: u128) -> (SessionHandle, mpsc::Receiver<Result<ServerMessage, Status>>) {
        let (outbound, rx) = mpsc::channel(4);
        let handle = SessionHandle {
            session_id: Uuid::from_u128(id),
            outbound,
            wake: Arc::new(Notify::new()),
            cancel: CancellationToken::new(),
        };
        (handle, rx)
    }

    fn closed_for_shutdown(
        handle: &SessionHandle,
        rx: &mut mpsc::Receiver<Result<ServerMessage, Status>>,
    ) -> bool {
        handle.cancel.is_cancelled()
            && matches!(rx.try_recv(), Ok(Err(status)) if status.code() == tonic::Code::Unavailable)
    }

    #[test]
    fn a_drain_closes_every_stream_including_one_that_arrives_during_it() {
        let hub = Hub::default();
        let (held, mut held_rx) = handle(1);
        hub.register(Uuid::from_u128(10), held.clone());
        hub.close_all();
        assert!(closed_for_shutdown(&held, &mut held_rx));
        assert!(hub.closing().is_cancelled());
        let (late, mut late_rx) = handle(2);
        hub.register(Uuid::from_u128(11), late.clone());
        assert!(closed_for_shutdown(&late, &mut late_rx));
    }
}
