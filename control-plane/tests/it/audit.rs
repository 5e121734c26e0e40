//! The audit chain: gapless under concurrency, append-only in the database, and every kind of
//! tampering detected — including a consistent rewrite, through a checkpoint kept elsewhere.

use std::sync::Arc;

use moltops_server::audit::{self, AuditEvent, Outcome};
use moltops_server::audit_keys::{self, PublicKeys};
use moltops_server::auth::Actor;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::{state, t0};

async fn append(pool: &PgPool, n: i64, commit: bool) {
    let mut tx = pool.begin().await.unwrap();
    audit::record(
        &mut tx,
        t0() + chrono::Duration::milliseconds(n),
        AuditEvent {
            actor: &Actor::System { what: "test" },
            action: "test.event",
            target_kind: "test",
            target_id: n.to_string(),
            reason: None,
            outcome: Outcome::Success,
            detail: json!({ "n": n, "nested": { "b": [1, 2], "a": "x" } }),
        },
    )
    .await
    .unwrap();
    if commit {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

/// The control plane's own key, as `state()` creates (or loads) it for this database.
async fn keys(pool: &PgPool) -> PublicKeys {
    let (state, _) = state(pool.clone()).await;
    PublicKeys::of(&state.signer)
}

async fn verify(pool: &PgPool) -> audit::Verification {
    let keys = keys(pool).await;
    let stored = audit_keys::stored(pool).await.unwrap();
    audit::verify(pool, &stored, &keys).await.unwrap()
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn sixty_four_concurrent_writers_on_two_replicas_make_one_gapless_chain(pool: PgPool) {
    // A second pool stands for a second replica.
    let other = PgPoolOptions::new()
        .max_connections(16)
        .connect_with(pool.connect_options().as_ref().clone())
        .await
        .unwrap();
    let mut writers = Vec::new();
    for n in 0..64 {
        let pool = if n % 2 == 0 {
            pool.clone()
        } else {
            other.clone()
        };
        // Every eighth writer rolls back: its sequence number must not become a gap.
        writers.push(tokio::spawn(
            async move { append(&pool, n, n % 8 != 7).await },
        ));
    }
    for w in writers {
        w.await.unwrap();
    }
    let seqs: Vec<i64> = sqlx::query_scalar("select seq from audit_events order by seq")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(seqs, (1..=56).collect::<Vec<_>>());
    let result = verify(&pool).await;
    assert!(result.ok, "{result:?}");
    assert_eq!(result.rows_checked, 56);
    let links: i64 = sqlx::query_scalar(
        "select count(*) from audit_events a join audit_events b on b.seq = a.seq + 1 where b.prev_hash = a.hash",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(links, 55, "every row links to its predecessor: no fork");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_table_is_append_only_even_for_its_owner_and_the_app_role_cannot_lift_that(
    pool: PgPool,
) {
    append(&pool, 1, true).await;
    for statement in [
        "update audit_events set reason = 'edited'",
        "delete from audit_events",
        "truncate audit_events",
        "truncate audit_checkpoints",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        assert!(
            error.to_string().contains("append-only"),
            "{statement}: {error}"
        );
    }
    // The application role the docs recommend: SELECT and INSERT only, not the table's owner.
    let role = format!("moltops_app_{}", uuid::Uuid::new_v4().simple());
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("create role {role}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "grant select, insert on audit_events, audit_checkpoints to {role}"
    )))
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("set role {role}")))
        .execute(&mut *conn)
        .await
        .unwrap();
    for statement in [
        "update audit_events set reason = 'edited'",
        "delete from audit_events",
        "alter table audit_events disable trigger audit_events_append_only",
        "set session_replication_role = replica",
    ] {
        let error = sqlx::query(statement)
            .execute(&mut *conn)
            .await
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("permission denied")
                || text.contains("must be owner")
                || text.contains("append-only"),
            "{statement}: {text}"
        );
    }
    sqlx::query("reset role").execute(&mut *conn).await.unwrap();
    drop(conn);
    sqlx::query(sqlx::AssertSqlSafe(format!("drop owned by {role}")))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("drop role {role}")))
        .execute(&pool)
        .await
        .unwrap();
    assert!(verify(&pool).await.ok);
}

/// 20 rows with signed checkpoints at 10 and 20, as a replica's periodic task leaves them.
async fn seeded(pool: &PgPool) -> Arc<audit_keys::Signer> {
    let (state, _) = state(pool.clone()).await;
    for n in 1..=10 {
        append(pool, n, true).await;
    }
    audit_keys::checkpoint(pool, &state.signer, t0())
        .await
        .unwrap()
        .unwrap();
    for n in 11..=20 {
        append(pool, n, true).await;
    }
    audit_keys::checkpoint(pool, &state.signer, t0())
        .await
        .unwrap()
        .unwrap();
    let clean = verify(pool).await;
    assert!(
        clean.ok && clean.rows_checked == 20 && clean.checkpoints_checked == 2,
        "{clean:?}"
    );
    state.signer.clone()
}

/// Runs `statements` as someone with full database access would: triggers off.
async fn tamper(pool: &PgPool, statements: &[&str]) {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    for s in statements {
        sqlx::query(sqlx::AssertSqlSafe(*s))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// What someone with database access and the chain's encoding would do: edit row `seq`, then
/// recompute every hash after it and the head, so the chain itself is consistent again.
async fn rewrite_consistently(pool: &PgPool, seq: i64) {
    let mut rows = audit::rows_after(pool, seq - 1, 1000).await.unwrap();
    rows[0].detail = json!({ "n": seq, "rewritten": true });
    let mut prev = rows[0].prev_hash.clone().unwrap();
    let mut statements = Vec::new();
    for row in &rows {
        let hash = audit::chain_hash(&prev, row);
        statements.push(format!(
            "update audit_events set detail = '{}', prev_hash = '\\x{}', hash = '\\x{}' where seq = {}",
            row.detail,
            hex::encode(&prev),
            hex::encode(&hash),
            row.seq
        ));
        prev = hash;
    }
    statements.push(format!(
        "update audit_head set hash = '\\x{}'",
        hex::encode(&prev)
    ));
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    tamper(pool, &refs).await;
}

fn broken_at(result: &audit::Verification, seq: i64, words: &str) {
    assert!(!result.ok, "{result:?}");
    assert_eq!(result.first_bad_seq, Some(seq), "{result:?}");
    let problem = result.problem.clone().unwrap_or_default();
    assert!(problem.contains(words), "{problem}");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn changing_one_field_of_one_row_is_detected_at_that_row(pool: PgPool) {
    seeded(&pool).await;
    tamper(
        &pool,
        &["update audit_events set detail = '{\"n\": 5}' where seq = 5"],
    )
    .await;
    broken_at(&verify(&pool).await, 5, "altered");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn every_field_is_covered(pool: PgPool) {
    seeded(&pool).await;
    // Each change on its own row; the first one found is the earliest.
    let changes = [
        (3, "occurred_at = occurred_at + interval '1 microsecond'"),
        (4, "actor_id = 'someone-else'"),
        (6, "action = 'test.other'"),
        (8, "outcome = 'failure'"),
        (9, "reason = 'because'"),
    ];
    for (seq, set) in changes.iter().rev() {
        tamper(
            &pool,
            &[&format!("update audit_events set {set} where seq = {seq}")],
        )
        .await;
        broken_at(&verify(&pool).await, *seq, "altered");
    }
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn deleting_a_row_is_detected(pool: PgPool) {
    seeded(&pool).await;
    tamper(&pool, &["delete from audit_events where seq = 7"]).await;
    broken_at(&verify(&pool).await, 7, "missing");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn reordering_rows_is_detected(pool: PgPool) {
    seeded(&pool).await;
    tamper(
        &pool,
        &[
            "update audit_events set seq = -3 where seq = 3",
            "update audit_events set seq = 3 where seq = 4",
            "update audit_events set seq = 4 where seq = -3",
        ],
    )
    .await;
    broken_at(&verify(&pool).await, 3, "does not link");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn truncating_the_tail_is_detected_by_the_last_checkpoint(pool: PgPool) {
    seeded(&pool).await;
    tamper(
        &pool,
        &[
            "delete from audit_events where seq > 15",
            "update audit_head set seq = 15, hash = (select hash from audit_events where seq = 15)",
        ],
    )
    .await;
    broken_at(&verify(&pool).await, 16, "removed from the end");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_consistent_rewrite_is_detected_by_a_checkpoint_even_one_kept_elsewhere(pool: PgPool) {
    seeded(&pool).await;
    let exported = audit_keys::stored(&pool).await.unwrap();
    // Someone with database access edits row 2 and recomputes every hash after it, so the chain
    // itself is consistent again.
    rewrite_consistently(&pool, 2).await;
    // The stored checkpoints (signed; the key is not in the database) catch it...
    broken_at(&verify(&pool).await, 10, "rewritten");
    // ...and if the stored checkpoints are deleted too, the chain alone looks fine —
    tamper(&pool, &["delete from audit_checkpoints"]).await;
    assert!(
        verify(&pool).await.ok,
        "without any checkpoint a full rewrite is undetectable"
    );
    // — but a checkpoint exported earlier still catches it.
    let keys = keys(&pool).await;
    let result = audit::verify(&pool, &exported, &keys).await.unwrap();
    broken_at(&result, 10, "rewritten");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_forged_checkpoint_is_refused(pool: PgPool) {
    seeded(&pool).await;
    let keys = keys(&pool).await;
    let mut forged = audit_keys::stored(&pool).await.unwrap();
    forged[0].seq = 9;
    let result = audit::verify(&pool, &forged, &keys).await.unwrap();
    broken_at(&result, 9, "signature");
    let intruder = audit_keys::Signer::from_seed([9; 32]).unwrap();
    let head = audit::rows_after(&pool, 19, 1).await.unwrap();
    let other = intruder.sign(20, head[0].hash.as_deref().unwrap(), t0());
    let result = audit::verify(&pool, &[other], &keys).await.unwrap();
    broken_at(&result, 20, "unknown key");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn nobody_slips_rows_beside_the_chain_or_moves_its_head_without_disabling_triggers(
    pool: PgPool,
) {
    append(&pool, 1, true).await;
    for statement in [
        "insert into audit_events (seq, id, occurred_at, actor_kind, actor_id, action, target_kind, target_id, outcome)
         values (0, gen_random_uuid(), now(), 'system', 'x', 'forged', 't', 't', 'success')",
        "insert into audit_events (seq, id, occurred_at, actor_kind, actor_id, action, target_kind, target_id, outcome, prev_hash, hash)
         values (5, gen_random_uuid(), now(), 'system', 'x', 'forged', 't', 't', 'success', '\\x00', '\\x00')",
        "update audit_head set chain_start = 1000",
        "update audit_head set seq = seq + 5",
        "delete from audit_head",
        "truncate audit_head",
    ] {
        let error = sqlx::query(statement).execute(&pool).await.unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("only") || text.contains("refused") || text.contains("append-only"),
            "{statement}: {text}"
        );
    }
    assert!(verify(&pool).await.ok);
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn rows_slipped_below_the_chain_are_detected(pool: PgPool) {
    append(&pool, 1, true).await;
    tamper(
        &pool,
        &["insert into audit_events (seq, id, occurred_at, actor_kind, actor_id, action, target_kind, target_id, outcome)
           values (0, gen_random_uuid(), now(), 'system', 'x', 'forged', 't', 't', 'success')"],
    )
    .await;
    broken_at(&verify(&pool).await, 0, "slipped in below");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn a_cut_tail_is_detected_even_before_any_checkpoint(pool: PgPool) {
    for n in 1..=5 {
        append(&pool, n, true).await;
    }
    tamper(&pool, &["delete from audit_events where seq > 3"]).await;
    broken_at(&verify(&pool).await, 4, "removed from the end");
}

#[sqlx::test(migrator = "moltops_server::db::MIGRATOR")]
async fn the_key_never_signs_a_head_that_does_not_follow_from_its_last_checkpoint(pool: PgPool) {
    let signer = seeded(&pool).await;
    for n in 21..=25 {
        append(&pool, n, true).await;
    }
    // Rewrite row 12 (before the checkpoint at 20) and every hash after it, head included:
    // consistent, but not what the key signed.
    rewrite_consistently(&pool, 12).await;
    let refused = audit_keys::checkpoint(&pool, &signer, t0())
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("does not follow"), "{refused}");
    assert_eq!(
        audit_keys::stored(&pool).await.unwrap().len(),
        2,
        "nothing was signed"
    );
}
