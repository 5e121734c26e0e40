//! Authorization policy: casbin, with its rules in Postgres (`rbac_rules`) behind a small adapter
//! on our own pool. Every REST handler reaches it through `Principal::authorize`, the one
//! enforcement point; the rules map (role, object, action) to allow.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use casbin::{Adapter, CoreApi, DefaultModel, Enforcer, Filter, Model};
use sqlx::PgPool;

use crate::auth::{Action, Role};

/// Postgres channel a trigger on `rbac_rules` notifies on every change.
pub const CHANNEL_RBAC_CHANGED: &str = "moltops_rbac_changed";

const MODEL: &str = r#"
[request_definition]
r = role, obj, act

[policy_definition]
p = role, obj, act

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = r.role == p.role && (p.obj == "*" || r.obj == p.obj) && (p.act == "*" || r.act == p.act)
"#;

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("policy: {0}")]
    Casbin(#[from] casbin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the policy lock is poisoned")]
    Poisoned,
}

/// The (object, action) a REST action needs.
pub fn permission(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::NodesRead => ("nodes", "read"),
        Action::NodesWrite => ("nodes", "write"),
        Action::NodesRevoke => ("nodes", "revoke"),
        Action::CommandsRead => ("commands", "read"),
        Action::CommandsCreate => ("commands", "create"),
        Action::EnrollmentTokensRead => ("enrollment_tokens", "read"),
        Action::EnrollmentTokensWrite => ("enrollment_tokens", "write"),
        Action::CaRead => ("ca", "read"),
        Action::PairingsApprove => ("pairings", "approve"),
        Action::ApiTokensManage => ("api_tokens", "manage"),
        Action::SelfRead => ("self", "read"),
        Action::UsersRead => ("users", "read"),
        Action::UsersManage => ("users", "manage"),
        Action::RolesRead => ("roles", "read"),
        Action::RolesManage => ("roles", "manage"),
        Action::AuditRead => ("audit", "read"),
        Action::AuditExport => ("audit", "export"),
        Action::AuditVerify => ("audit", "verify"),
    }
}

/// The loaded policy, shared by all handlers of this replica.
pub struct Authz {
    enforcer: RwLock<Enforcer>,
}

impl std::fmt::Debug for Authz {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authz").finish_non_exhaustive()
    }
}

impl Authz {
    /// Loads the rules from Postgres.
    pub async fn load(pool: &PgPool) -> Result<Arc<Self>, RbacError> {
        let enforcer = Self::enforcer(pool).await?;
        Ok(Arc::new(Self {
            enforcer: RwLock::new(enforcer),
        }))
    }

    async fn enforcer(pool: &PgPool) -> Result<Enforcer, RbacError> {
        let model = DefaultModel::from_str(MODEL).await?;
        Ok(Enforcer::new(model, PgAdapter { pool: pool.clone() }).await?)
    }

    /// Re-reads the rules (after they change).
    pub async fn reload(&self, pool: &PgPool) -> Result<(), RbacError> {
        let fresh = Self::enforcer(pool).await?;
        let mut current = self.enforcer.write().map_err(|_| RbacError::Poisoned)?;
        *current = fresh;
        Ok(())
    }

    /// Whether `role` may perform `action`. Fails closed: any policy error denies.
    pub fn allows(&self, role: &Role, action: Action) -> bool {
        let (object, act) = permission(action);
        let Ok(enforcer) = self.enforcer.read() else {
            return false;
        };
        enforcer
            .enforce((role.as_str(), object, act))
            .unwrap_or(false)
    }
}

/// casbin's storage interface over `rbac_rules`.
pub struct PgAdapter {
    pool: PgPool,
}

fn adapter_error(e: sqlx::Error) -> casbin::Error {
    casbin::Error::from(casbin::error::AdapterError(Box::new(e)))
}

/// A rule padded to the six stored columns.
fn columns(rule: &[String]) -> [String; 6] {
    let mut out: [String; 6] = Default::default();
    for (slot, value) in out.iter_mut().zip(rule) {
        slot.clone_from(value);
    }
    out
}

#[async_trait]
impl Adapter for PgAdapter {
    async fn load_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        let rows = sqlx::query!("select ptype, v0, v1, v2, v3, v4, v5 from rbac_rules order by id")
            .fetch_all(&self.pool)
            .await
            .map_err(adapter_error)?;
        for row in rows {
            let sec = if row.ptype.starts_with('g') { "g" } else { "p" };
            let mut rule = vec![row.v0, row.v1, row.v2, row.v3, row.v4, row.v5];
            while rule.last().is_some_and(String::is_empty) {
                rule.pop();
            }
            m.add_policy(sec, &row.ptype, rule);
        }
        Ok(())
    }

    async fn load_filtered_policy<'a>(
        &mut self,
        m: &mut dyn Model,
        _f: Filter<'a>,
    ) -> casbin::Result<()> {
        // The policy is small; filtering happens in the enforcer.
        self.load_policy(m).await
    }

    async fn save_policy(&mut self, m: &mut dyn Model) -> casbin::Result<()> {
        let mut tx = self.pool.begin().await.map_err(adapter_error)?;
        sqlx::query!("delete from rbac_rules")
            .execute(&mut *tx)
            .await
            .map_err(adapter_error)?;
        for sec in ["p", "g"] {
            let Some(assertions) = m.get_model().get(sec) else {
                continue;
            };
            for (ptype, assertion) in assertions {
                for rule in assertion.get_policy() {
                    let [v0, v1, v2, v3, v4, v5] = columns(rule);
                    sqlx::query!(
                        "insert into rbac_rules (ptype, v0, v1, v2, v3, v4, v5) values ($1, $2, $3, $4, $5, $6, $7)",
                        ptype,
                        v0,
                        v1,
                        v2,
                        v3,
                        v4,
                        v5
                    )
                    .execute(&mut *tx)
                    .await
                    .map_err(adapter_error)?;
                }
            }
        }
        tx.commit().await.map_err(adapter_error)
    }

    async fn clear_policy(&mut self) -> casbin::Result<()> {
        sqlx::query!("delete from rbac_rules")
            .execute(&self.pool)
            .await
            .map_err(adapter_error)?;
        Ok(())
    }

    fn is_filtered(&self) -> bool {
        false
    }

    async fn add_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        self.add_policies("", ptype, vec![rule]).await
    }

    async fn add_policies(
        &mut self,
        _sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        let mut tx = self.pool.begin().await.map_err(adapter_error)?;
        for rule in rules {
            let [v0, v1, v2, v3, v4, v5] = columns(&rule);
            sqlx::query!(
                "insert into rbac_rules (ptype, v0, v1, v2, v3, v4, v5) values ($1, $2, $3, $4, $5, $6, $7)
                 on conflict on constraint rbac_rules_rule_key do nothing",
                ptype,
                v0,
                v1,
                v2,
                v3,
                v4,
                v5
            )
            .execute(&mut *tx)
            .await
            .map_err(adapter_error)?;
        }
        tx.commit().await.map_err(adapter_error)?;
        Ok(true)
    }

    async fn remove_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        rule: Vec<String>,
    ) -> casbin::Result<bool> {
        self.remove_policies("", ptype, vec![rule]).await
    }

    async fn remove_policies(
        &mut self,
        _sec: &str,
        ptype: &str,
        rules: Vec<Vec<String>>,
    ) -> casbin::Result<bool> {
        let mut tx = self.pool.begin().await.map_err(adapter_error)?;
        let mut removed = 0;
        for rule in rules {
            let [v0, v1, v2, v3, v4, v5] = columns(&rule);
            removed += sqlx::query!(
                "delete from rbac_rules where ptype = $1 and v0 = $2 and v1 = $3 and v2 = $4 and v3 = $5
                 and v4 = $6 and v5 = $7",
                ptype,
                v0,
                v1,
                v2,
                v3,
                v4,
                v5
            )
            .execute(&mut *tx)
            .await
            .map_err(adapter_error)?
            .rows_affected();
        }
        tx.commit().await.map_err(adapter_error)?;
        Ok(removed > 0)
    }

    async fn remove_filtered_policy(
        &mut self,
        _sec: &str,
        ptype: &str,
        field_index: usize,
        field_values: Vec<String>,
    ) -> casbin::Result<bool> {
        // Empty strings are wildcards, as in casbin's own adapters.
        let mut values: [Option<String>; 6] = Default::default();
        for (offset, value) in field_values.into_iter().enumerate() {
            if let Some(slot) = values.get_mut(field_index + offset)
                && !value.is_empty()
            {
                *slot = Some(value);
            }
        }
        let [v0, v1, v2, v3, v4, v5] = values;
        let done = sqlx::query!(
            "delete from rbac_rules where ptype = $1
               and ($2::text is null or v0 = $2) and ($3::text is null or v1 = $3)
               and ($4::text is null or v2 = $4) and ($5::text is null or v3 = $5)
               and ($6::text is null or v4 = $6) and ($7::text is null or v5 = $7)",
            ptype,
            v0,
            v1,
            v2,
            v3,
            v4,
            v5
        )
        .execute(&self.pool)
        .await
        .map_err(adapter_error)?;
        Ok(done.rows_affected() > 0)
    }
}
