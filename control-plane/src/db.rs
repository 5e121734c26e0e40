//! The Postgres pool and migrations. Migrations run on every start under an advisory lock, so
//! replicas starting together apply each migration exactly once.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Advisory lock keys (arbitrary, fixed, distinct).
pub const ADVISORY_LOCK_MIGRATIONS: i64 = 0x6d6f_6c74_0001;
pub const ADVISORY_LOCK_CA: i64 = 0x6d6f_6c74_0002;
pub const ADVISORY_LOCK_AUDIT_KEY: i64 = 0x6d6f_6c74_0003;
/// Held by the replica that forwards the audit log to an external sink.
pub const ADVISORY_LOCK_AUDIT_FORWARD: i64 = 0x6d6f_6c74_0004;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects, failing with a message that names the setting when the URL is wrong.
pub async fn connect(database_url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(database_url)
        .await
}

/// Applies pending migrations. sqlx's migrator already takes a session-level advisory lock on
/// Postgres; we take our own as well so that the guarantee does not depend on that detail.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    let mut conn = pool.acquire().await?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(ADVISORY_LOCK_MIGRATIONS)
        .execute(&mut *conn)
        .await?;
    let result = MIGRATOR.run(&mut *conn).await;
    let unlock = sqlx::query("select pg_advisory_unlock($1)")
        .bind(ADVISORY_LOCK_MIGRATIONS)
        .execute(&mut *conn)
        .await;
    result?;
    unlock?;
    Ok(())
}
