//! First boot: the setup code goes to the server console, and makes the first Owner device.

use moltops_e2e::{Server, ServerOptions, TestDatabase, scratch, wait_for};
use serde_json::json;

#[tokio::test]
async fn the_first_boot_setup_code_is_printed_on_the_console_and_makes_an_owner() {
    let db = TestDatabase::create().await;
    let dir = scratch("setup");
    let server = Server::start(&db.url, &dir.join("server"), &ServerOptions::default()).await;
    let code = wait_for("the setup code on the console", || async {
        let log = server.log_text();
        let line = log.lines().find(|l| l.contains("Setup code"))?;
        Some(line.rsplit(": ").next()?.trim().to_owned())
    })
    .await;
    let client = reqwest::Client::new();
    let response = client
        .post(server.url("/pair/confirm"))
        .json(&json!({ "pairing_code": code, "device_name": "first laptop" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let tokens: serde_json::Value = response.json().await.unwrap();
    let me: serde_json::Value = client
        .get(server.url("/v1/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "owner");
    assert_eq!(me["name"], "first laptop");

    // A restart with an owner present prints no new code.
    let data_dir = server.data_dir.clone();
    let (http, grpc) = (server.http, server.grpc);
    assert!(server.stop().success());
    let options = ServerOptions {
        http_addr: http.to_string(),
        grpc_addr: grpc.to_string(),
        ..Default::default()
    };
    let again = Server::start(&db.url, &data_dir, &options).await;
    assert!(
        !again.log_text().contains("Setup code"),
        "{}",
        again.log_text()
    );
    drop(again);
    db.drop_database().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_policy_change_in_postgres_reaches_the_running_server_at_once() {
    let fx = moltops_e2e::Fixture::start(ServerOptions::default()).await;
    let viewer = moltops_e2e::create_api_token(&fx.db.as_ref().unwrap().url, "viewer");
    let api = moltops_e2e::Api::new(fx.server(), &viewer);
    assert_eq!(api.get("/v1/pairings").await.0, 403);
    let mut db = fx.db.as_ref().unwrap().connect().await;
    sqlx::query(
        "insert into rbac_rules (ptype, v0, v1, v2) values ('p', 'viewer', 'pairings', 'approve')",
    )
    .execute(&mut db)
    .await
    .unwrap();
    wait_for("the new rule to apply", || async {
        (api.get("/v1/pairings").await.0 == 200).then_some(())
    })
    .await;
    fx.finish().await;
}
