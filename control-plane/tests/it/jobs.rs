//! Jobs as one state machine: queued → dispatched → running → succeeded | failed | cancelled |
//! expired, with an ordered event log served as resumable Server-Sent Events, cooperative
//! cancel, and idempotency keys.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use moltops_server::jobs::{self, Finish, Progress};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call, call_from, scoped_token, state, token};

/// A node whose current stream is `session`.
async fn node(pool: &PgPool, env: &str) -> (Uuid, Uuid) {
    let (node, session) = (Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after, session_id)
         values ($1, 'h', jsonb_build_object('env', $3::text), now(), 's', now() + interval '1 day', $2)",
    )
    .bind(node)
    .bind(session)
    .bind(env)
    .execute(pool)
    .await
    .unwrap();
    (node, session)
}

async fn ping(
    state: &moltops_server::serve::AppState,
    t: &str,
    node: Uuid,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
    call_from(
        state,
        "192.0.2.1:40000",
        &headers,
        "POST",
        &format!("/v1/nodes/{node}/ping"),
        Some(t),
        None,
    )
    .await
    .0
}

/// Parses an SSE body into (id, event, data) triples.
fn sse(body: &Value) -> Vec<(i32, String, Value)> {
    let text = body.as_str().expect("an event stream");
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_owned())
                    .unwrap_or_default()
            };
            (
                field("id").parse().unwrap(),
                field("event"),
                serde_json::from_str(&field("data")).unwrap(),
            )
        })
        .collect()
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_job_walks_its_states_and_its_events_resume_after_the_last_one_seen(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let (node, session) = node(&pool, "lab").await;
    let (status, job) = ping(&state, &admin, node, None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(job["status"], "queued");
    let id = Uuid::parse_str(job["id"].as_str().unwrap()).unwrap();

    let mut conn = pool.acquire().await.unwrap();
    clock.advance(chrono::Duration::seconds(1));
    let claimed = jobs::claim_queued_commands(&mut conn, node, session, state.clock.now(), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].created_by, job["created_by"].as_str().unwrap());
    assert!(claimed[0].deadline_at.is_some());
    for progress in [
        Progress::Started,
        Progress::Started,
        Progress::Step {
            step: "verify",
            message: "waiting for ready",
        },
        Progress::Log("ready after 12 ms"),
    ] {
        assert!(
            jobs::record_progress(&mut conn, node, id, progress, state.clock.now())
                .await
                .unwrap()
        );
    }
    let (_, running) = call(&state, "GET", &format!("/v1/jobs/{id}"), Some(&admin), None).await;
    assert_eq!(running["status"], "running", "{running}");
    assert_eq!(running["step"], "verify");
    assert!(running["started_at"].is_string());
    // Another node cannot report on this job.
    let (stranger, _) = self::node(&pool, "lab").await;
    assert!(
        !jobs::record_progress(
            &mut conn,
            stranger,
            id,
            Progress::Log("x"),
            state.clock.now()
        )
        .await
        .unwrap()
    );
    assert_eq!(
        jobs::complete_command(
            &mut conn,
            node,
            id,
            Finish::Succeeded(json!({"pong": {}})),
            state.clock.now()
        )
        .await
        .unwrap(),
        Some("succeeded")
    );
    // A second result (a journal's answer to a re-delivery) changes nothing.
    assert_eq!(
        jobs::complete_command(
            &mut conn,
            node,
            id,
            Finish::Failed("late".into()),
            state.clock.now()
        )
        .await
        .unwrap(),
        None
    );

    // The whole log: one state event per state (the repeated Started adds nothing), in order.
    let events_path = format!("/v1/jobs/{id}/events");
    let (status, body) = call(&state, "GET", &events_path, Some(&admin), None).await;
    assert_eq!(status, StatusCode::OK);
    let all = sse(&body);
    let seqs: Vec<i32> = all.iter().map(|e| e.0).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    let shape: Vec<(String, Value)> = all
        .iter()
        .map(|(_, kind, data)| {
            (
                kind.clone(),
                if kind == "state" {
                    data["status"].clone()
                } else {
                    data["message"].clone()
                },
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![
            ("state".into(), json!("queued")),
            ("state".into(), json!("dispatched")),
            ("state".into(), json!("running")),
            ("step".into(), json!("waiting for ready")),
            ("log".into(), json!("ready after 12 ms")),
            ("state".into(), json!("succeeded")),
        ]
    );
    // Resumed: only what came after the last event seen, by header or by query.
    let ((_, rest), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("last-event-id", "4")],
        "GET",
        &events_path,
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(
        sse(&rest).iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![5, 6]
    );
    let (_, rest) = call(
        &state,
        "GET",
        &format!("{events_path}?after=5"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(sse(&rest).iter().map(|e| e.0).collect::<Vec<_>>(), vec![6]);
    let ((status, _), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("last-event-id", "nope")],
        "GET",
        &events_path,
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, done) = call(&state, "GET", &format!("/v1/jobs/{id}"), Some(&admin), None).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["last_event_id"], 6);
    assert_eq!(done["deliveries"], 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn an_idempotency_key_gives_a_retry_the_same_job_and_refuses_another_request(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let other_admin = scoped_token(&state, Role::Admin, "env=lab").await;
    let (node, _) = node(&pool, "lab").await;
    let (other, _) = self::node(&pool, "lab").await;
    let (s1, first) = ping(&state, &admin, node, Some("retry-me-1")).await;
    let (s2, again) = ping(&state, &admin, node, Some("retry-me-1")).await;
    assert_eq!((s1, s2), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_eq!(first["id"], again["id"]);
    assert_eq!(first["idempotency_key"], "retry-me-1");
    // The same key for a different request is refused, not silently mapped.
    let (status, refused) = ping(&state, &admin, other, Some("retry-me-1")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["code"], "idempotency_key_reused");
    // Keys are per caller: another caller's same key is its own job.
    let (_, theirs) = ping(&state, &other_admin, node, Some("retry-me-1")).await;
    assert_ne!(theirs["id"], first["id"]);
    // A malformed key is refused before anything happens.
    let (status, _) = ping(&state, &admin, node, Some("has space")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let count: i64 = sqlx::query_scalar("select count(*) from commands")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 2);

    // A destructive request: the retry needs no second confirmation (the first one was spent) and
    // gets the same job and audit row.
    let body = r#"{"action": "restart", "reason": "retry"}"#;
    let path = format!("/v1/nodes/{node}/ops/action");
    let ((status, asked), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &[("idempotency-key", "restart-1")],
        "POST",
        &path,
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::PRECONDITION_REQUIRED);
    // The 428 says exactly what the token is bound to.
    assert_eq!(asked["action"], "gateway.restart");
    assert_eq!(asked["target"], node.to_string());
    assert_eq!(
        asked["parameters"],
        json!({ "parameters": { "action": "restart", "verify_timeout_seconds": 60 }, "reason": "retry" })
    );
    let confirmation = asked["confirmation_token"].as_str().unwrap().to_owned();
    let headers = [
        ("idempotency-key", "restart-1"),
        ("x-confirmation-token", confirmation.as_str()),
    ];
    let ((status, done), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &headers,
        "POST",
        &path,
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{done}");
    let ((status, retried), _) = call_from(
        &state,
        "192.0.2.1:40000",
        &headers,
        "POST",
        &path,
        Some(&admin),
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(done["job_id"], retried["job_id"]);
    assert_eq!(done["audit_event_id"], retried["audit_event_id"]);
    let restarts: i64 =
        sqlx::query_scalar("select count(*) from commands where kind = 'service_action'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(restarts, 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn cancel_stops_a_queued_job_at_once_and_asks_the_agent_for_a_running_one(pool: PgPool) {
    let (state, _) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let viewer = token(&state, Role::Viewer).await;
    let elsewhere = scoped_token(&state, Role::Admin, "env=prod").await;
    let (node, session) = node(&pool, "lab").await;

    // Queued: cancelled at once, and never handed to the agent.
    let (_, queued) = ping(&state, &admin, node, None).await;
    let qid = queued["id"].as_str().unwrap().to_owned();
    let cancel = |id: String, t: String| {
        let state = state.clone();
        async move {
            call(
                &state,
                "POST",
                &format!("/v1/jobs/{id}/cancel"),
                Some(&t),
                Some(r#"{"reason": "wrong host"}"#),
            )
            .await
        }
    };
    assert_eq!(
        cancel(qid.clone(), viewer.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        cancel(qid.clone(), elsewhere.clone()).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, cancelled) = cancel(qid.clone(), admin.clone()).await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["error"].as_str().unwrap().contains("wrong host"));
    let mut conn = pool.acquire().await.unwrap();
    let claimed = jobs::claim_queued_commands(&mut conn, node, session, state.clock.now(), 10)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    // Ended: nothing to cancel.
    let (status, body) = cancel(qid.clone(), admin.clone()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );

    // Running: the cancel is requested and goes to the stream holding it, once per stream.
    let (_, job) = ping(&state, &admin, node, None).await;
    let id = Uuid::parse_str(job["id"].as_str().unwrap()).unwrap();
    jobs::claim_queued_commands(&mut conn, node, session, state.clock.now(), 10)
        .await
        .unwrap();
    jobs::record_progress(&mut conn, node, id, Progress::Started, state.clock.now())
        .await
        .unwrap();
    let (status, requested) = cancel(id.to_string(), admin.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{requested}");
    assert_eq!(requested["status"], "running");
    assert!(requested["cancel_requested_at"].is_string());
    assert_eq!(
        jobs::take_cancels(&pool, node, session).await.unwrap(),
        vec![id]
    );
    assert!(
        jobs::take_cancels(&pool, node, session)
            .await
            .unwrap()
            .is_empty()
    );
    // The stream drops; the next one gets the command again, and the cancel with it.
    let next = Uuid::now_v7();
    sqlx::query("update nodes set session_id = $2 where id = $1")
        .bind(node)
        .bind(next)
        .execute(&pool)
        .await
        .unwrap();
    jobs::redeliver_in_flight(&mut conn, node, next, state.clock.now())
        .await
        .unwrap();
    let again = jobs::claim_queued_commands(&mut conn, node, next, state.clock.now(), 10)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        jobs::take_cancels(&pool, node, next).await.unwrap(),
        vec![id]
    );
    // Asked twice: accepted, not audited twice.
    assert_eq!(
        cancel(id.to_string(), admin.clone()).await.0,
        StatusCode::ACCEPTED
    );
    // The agent stops at a safe point and says where.
    let finish = Finish::Cancelled(
        json!({ "cancelled": { "step": "verify" } }),
        "cancelled during verify: started, not verified".into(),
    );
    assert_eq!(
        jobs::complete_command(&mut conn, node, id, finish, state.clock.now())
            .await
            .unwrap(),
        Some("cancelled")
    );
    let (_, ended) = call(&state, "GET", &format!("/v1/jobs/{id}"), Some(&admin), None).await;
    assert_eq!(ended["status"], "cancelled");
    assert_eq!(ended["result"]["cancelled"]["step"], "verify");
    let audited: Vec<(String, Option<String>)> = sqlx::query_as(
        "select target_id, reason from audit_events where action = 'job.cancel' order by seq",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        vec![
            (qid, Some("wrong host".to_owned())),
            (id.to_string(), Some("wrong host".to_owned())),
        ]
    );
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_running_job_survives_any_number_of_dropped_streams_an_unacknowledged_one_does_not(
    pool: PgPool,
) {
    let (state, _) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let (node, _) = node(&pool, "lab").await;
    let (_, silent) = ping(&state, &admin, node, None).await;
    let (_, working) = ping(&state, &admin, node, None).await;
    let silent = Uuid::parse_str(silent["id"].as_str().unwrap()).unwrap();
    let working = Uuid::parse_str(working["id"].as_str().unwrap()).unwrap();
    let mut conn = pool.acquire().await.unwrap();
    for _ in 0..8 {
        let session = Uuid::now_v7();
        sqlx::query("update nodes set session_id = $2 where id = $1")
            .bind(node)
            .bind(session)
            .execute(&pool)
            .await
            .unwrap();
        jobs::redeliver_in_flight(&mut conn, node, session, state.clock.now())
            .await
            .unwrap();
        jobs::claim_queued_commands(&mut conn, node, session, state.clock.now(), 10)
            .await
            .unwrap();
        // The agent acknowledges one (its journal says it is running), never the other.
        jobs::record_progress(
            &mut conn,
            node,
            working,
            Progress::Started,
            state.clock.now(),
        )
        .await
        .unwrap();
    }
    let silent = jobs::get(&pool, silent).await.unwrap().unwrap();
    assert_eq!(silent.status, "failed");
    assert_eq!(silent.error.as_deref(), Some(jobs::OUTCOME_UNKNOWN));
    let working = jobs::get(&pool, working).await.unwrap().unwrap();
    assert_eq!(working.status, "running");
    assert_eq!(working.attempts, 1);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn jobs_are_listed_newest_first_in_pages_within_the_callers_scope(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let lab_only = scoped_token(&state, Role::Viewer, "env=lab").await;
    let (lab, _) = node(&pool, "lab").await;
    let (prod, _) = node(&pool, "prod").await;
    let mut lab_jobs = Vec::new();
    for i in 0..5 {
        clock.advance(chrono::Duration::seconds(1));
        let (_, j) = ping(&state, &admin, if i % 2 == 0 { lab } else { prod }, None).await;
        if i % 2 == 0 {
            lab_jobs.push(j["id"].as_str().unwrap().to_owned());
        }
    }
    lab_jobs.reverse();
    let ids = |v: &Value| -> Vec<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, page) = call(&state, "GET", "/v1/jobs?limit=2", Some(&lab_only), None).await;
    assert_eq!(ids(&page), lab_jobs[..2]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, rest) = call(
        &state,
        "GET",
        &format!("/v1/jobs?limit=2&cursor={cursor}"),
        Some(&lab_only),
        None,
    )
    .await;
    assert_eq!(ids(&rest), lab_jobs[2..]);
    assert!(rest["next_cursor"].is_null());
    let (_, all) = call(&state, "GET", "/v1/jobs", Some(&admin), None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    let (_, prods) = call(
        &state,
        "GET",
        &format!("/v1/jobs?node_id={prod}&status=queued&kind=ping"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(prods["items"].as_array().unwrap().len(), 2);
    let (_, hidden) = call(
        &state,
        "GET",
        &format!("/v1/jobs?node_id={prod}"),
        Some(&lab_only),
        None,
    )
    .await;
    assert!(hidden["items"].as_array().unwrap().is_empty());
    for bad in [
        "status=sent",
        "kind=shell",
        "limit=0",
        "cursor=zz",
        "selector=a%20b",
    ] {
        let (status, body) = call(
            &state,
            "GET",
            &format!("/v1/jobs?{bad}"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}
