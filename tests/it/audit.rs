//! The audit trail end to end over the real binaries: `moltopsctl audit export` keeps the log and
//! its signed checkpoints off the box, and `moltopsctl audit verify` (with and without the
//! exported checkpoints) catches a row edited in the database behind the server's back, even with
//! the stored checkpoints deleted. The consistent-rewrite case, which needs the chain encoding, is
//! in control-plane/tests/it/audit.rs.

use std::process::Command;

use moltops_e2e::{Fixture, ServerOptions, binary};
use serde_json::json;

#[tokio::test]
async fn the_cli_exports_the_log_and_verify_catches_an_edit_behind_the_servers_back() {
    let fx = Fixture::start(ServerOptions::default()).await;
    fx.enroll("agent", json!({ "env": "lab" })).await;
    let (status, _) = fx.api.post("/v1/enrollment-tokens", json!({})).await;
    assert_eq!(status, 201);
    let (status, checkpoint) = fx.api.post("/v1/audit/checkpoints", json!(null)).await;
    assert!(status == 201 || status == 200, "{checkpoint}");
    let server = fx.server().url("");
    let ctl = |args: &[&str]| {
        Command::new(binary("moltopsctl"))
            .arg("--server")
            .arg(&server)
            .args(args)
            .env("MOLTOPS_TOKEN", &fx.api.token)
            .env("MOLTOPS_CONFIG_DIR", fx.dir.join("cli"))
            .output()
            .unwrap()
    };
    let export = fx.dir.join("audit.jsonl");
    let out = ctl(&["audit", "export", "--output", export.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&export).unwrap();
    assert!(
        text.lines().any(|l| l.contains(r#""type":"checkpoint""#)),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(r#""action":"node.enroll""#)),
        "{text}"
    );
    let out = ctl(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Someone with database access edits the first row and deletes the stored checkpoints.
    let mut conn = fx.db.as_ref().unwrap().connect().await;
    let rows: i64 = sqlx::query_scalar("select count(*) from audit_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(rows >= 3);
    sqlx::query("begin").execute(&mut conn).await.unwrap();
    sqlx::query("set local session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update audit_events set target_id = 'someone-else' where seq = 1")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("delete from audit_checkpoints")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("commit").execute(&mut conn).await.unwrap();
    let out = ctl(&["audit", "verify"]);
    assert!(
        !out.status.success(),
        "an edited row is caught by the chain itself"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("BROKEN at 1"), "{stdout}");
    // And with the earlier export's checkpoints it fails as well.
    let out = ctl(&["audit", "verify", "--checkpoints", export.to_str().unwrap()]);
    assert!(!out.status.success());
    fx.finish().await;
}
