//! Commands expire when they were never delivered by their deadline; delivered ones do not.

use axum::http::StatusCode;
use moltops_server::auth::Role;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{call, state, token};

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_command_never_delivered_expires_and_is_never_sent(pool: PgPool) {
    let (state, clock) = state(pool.clone()).await;
    let admin = token(&state, Role::Admin).await;
    let node = Uuid::now_v7();
    let session = Uuid::now_v7();
    sqlx::query(
        "insert into nodes (id, hostname, labels, enrolled_at, certificate_serial, certificate_not_after, session_id)
         values ($1, 'h', '{}'::jsonb, now(), 's', now() + interval '1 day', $2)",
    )
    .bind(node)
    .bind(session)
    .execute(&pool)
    .await
    .unwrap();
    let ping_path = format!("/v1/nodes/{node}/ping");
    let ping = |_: ()| call(&state, "POST", &ping_path, Some(&admin), None);
    let (status, never) = ping(()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, delivered) = ping(()).await;
    // The second one was delivered once (and its stream then died): it must keep its chance.
    sqlx::query("update commands set attempts = 1 where id = $1::uuid")
        .bind(delivered["id"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();

    // Within the deadline nothing expires.
    clock.advance(chrono::Duration::minutes(59));
    assert_eq!(moltops_server::serve::expire(&state).await.unwrap(), 0);
    clock.advance(chrono::Duration::minutes(2));
    // Past it, the node's stream would not be handed the stale command even before the sweep.
    let mut conn = pool.acquire().await.unwrap();
    let claimable = moltops_server::jobs::claim_queued_commands(
        &mut conn,
        node,
        session,
        state.clock.now(),
        10,
    )
    .await
    .unwrap();
    let ids: Vec<String> = claimable.iter().map(|c| c.id.to_string()).collect();
    assert_eq!(ids, vec![delivered["id"].as_str().unwrap().to_owned()]);
    assert_eq!(moltops_server::serve::expire(&state).await.unwrap(), 1);
    let path = format!("/v1/jobs/{}", never["id"].as_str().unwrap());
    let (_, job) = call(&state, "GET", &path, Some(&admin), None).await;
    assert_eq!(job["status"], "expired", "{job}");
    assert!(job["error"].as_str().unwrap().contains("did not run"));
    let audited: i64 = sqlx::query_scalar(
        "select count(*) from audit_events where action = 'command.expire' and target_id = $1",
    )
    .bind(never["id"].as_str().unwrap())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
}
