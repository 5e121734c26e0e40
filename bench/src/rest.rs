//! The few REST calls the bench makes, as an operator would: enrollment tokens, the node list,
//! one job per node (ping, or a confirmed gateway restart) with an `Idempotency-Key`, and the job
//! list. Only the fields the bench reads are decoded.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::error::{BenchError, BenchResult};

/// A REST client bound to one control plane and one API token.
#[derive(Clone)]
pub struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnrollmentToken {
    pub token: String,
    pub ca_pin: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct NodeBrief {
    pub id: Uuid,
    pub status: String,
}

#[derive(Debug, Deserialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// A job (a command queued for an agent), as `GET /v1/jobs` and the create calls return it.
#[derive(Debug, Clone, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub node_id: Uuid,
    pub status: String,
    pub result: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deliveries: i64,
}

impl Job {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self.status.as_str(),
            "succeeded" | "failed" | "cancelled" | "expired"
        )
    }
}

/// What `GET /v1/audit/verify` found.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AuditVerification {
    pub ok: bool,
    pub rows_checked: i64,
    pub head_seq: i64,
    pub first_bad_seq: Option<i64>,
    pub problem: Option<String>,
}

/// How many times a create call is sent again (same `Idempotency-Key`) after a transport error or
/// a 5xx, before the bench gives up.
const CREATE_ATTEMPTS: u32 = 4;

impl Api {
    pub fn new(base: &str, token: &str) -> BenchResult<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|cause| BenchError::Http {
                what: "building the HTTP client".into(),
                cause,
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            client,
        })
    }

    /// One call; returns the status and the body as JSON (`Null` when empty).
    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> BenchResult<(StatusCode, Value)> {
        let what = format!("{method} {path}");
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .query(query)
            .bearer_auth(&self.token);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|cause| BenchError::Http {
            what: what.clone(),
            cause,
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|cause| BenchError::Http {
            what: what.clone(),
            cause,
        })?;
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// Calls and decodes, refusing any status but `expected`.
    async fn expect<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
        expected: StatusCode,
    ) -> BenchResult<T> {
        let what = format!("{method} {path}");
        let (status, value) = self.call(method, path, query, body, &[]).await?;
        if status != expected {
            return Err(api_error(what, status, &value));
        }
        decode(what, value)
    }

    pub async fn create_enrollment_token(
        &self,
        labels: &BTreeMap<String, String>,
        max_uses: usize,
        ttl: Duration,
    ) -> BenchResult<EnrollmentToken> {
        let body = json!({
            "labels": labels,
            "max_uses": max_uses,
            "ttl_seconds": ttl.as_secs(),
            "note": "moltops-bench simulated agents",
        });
        self.expect(
            Method::POST,
            "/v1/enrollment-tokens",
            &[],
            Some(&body),
            StatusCode::CREATED,
        )
        .await
    }

    /// Every node matching `selector` (and `status`, if given), in enrollment order.
    pub async fn nodes(&self, selector: &str, status: Option<&str>) -> BenchResult<Vec<NodeBrief>> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut query = vec![("selector", selector), ("limit", "1000")];
            if let Some(status) = status {
                query.push(("status", status));
            }
            if let Some(c) = &cursor {
                query.push(("cursor", c.as_str()));
            }
            let page: Page<NodeBrief> = self
                .expect(Method::GET, "/v1/nodes", &query, None, StatusCode::OK)
                .await?;
            all.extend(page.items);
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/nodes?limit=100&selector=…`: one page, the call the api scenario times.
    pub async fn list_nodes_page(&self, selector: &str) -> BenchResult<usize> {
        let query = [("limit", "100"), ("selector", selector)];
        let page: Page<NodeBrief> = self
            .expect(Method::GET, "/v1/nodes", &query, None, StatusCode::OK)
            .await?;
        Ok(page.items.len())
    }

    /// `PATCH /v1/nodes/{id}`: replaces a node's labels (an audited change).
    pub async fn set_labels(
        &self,
        node_id: Uuid,
        labels: &BTreeMap<String, String>,
    ) -> BenchResult<()> {
        let path = format!("/v1/nodes/{node_id}");
        let body = json!({ "labels": labels });
        let _: Value = self
            .expect(Method::PATCH, &path, &[], Some(&body), StatusCode::OK)
            .await?;
        Ok(())
    }

    /// `GET /v1/audit/verify`: a walk of the whole audit chain.
    pub async fn verify_audit(&self) -> BenchResult<AuditVerification> {
        self.expect(Method::GET, "/v1/audit/verify", &[], None, StatusCode::OK)
            .await
    }

    /// Queues a ping on one node.
    pub async fn ping(&self, node_id: Uuid, idempotency_key: &str) -> BenchResult<Uuid> {
        let path = format!("/v1/nodes/{node_id}/ping");
        let job: Job = self
            .create(&path, None, idempotency_key, StatusCode::ACCEPTED, None)
            .await
            .and_then(|v| decode(format!("POST {path}"), v))?;
        Ok(job.id)
    }

    /// Queues a gateway restart on one node, confirming it as an operator does: the first call
    /// answers 428 with a confirmation token, the identical call with it queues the job.
    pub async fn restart_gateway(&self, node_id: Uuid, idempotency_key: &str) -> BenchResult<Uuid> {
        let path = format!("/v1/nodes/{node_id}/ops/action");
        let body = json!({ "action": "restart", "reason": "moltops-bench fan-out (simulated agents; nothing changes)" });
        let (status, first) = self
            .call_with_retries(&path, Some(&body), idempotency_key, None)
            .await?;
        let answer = if status == StatusCode::PRECONDITION_REQUIRED {
            let token = first["confirmation_token"]
                .as_str()
                .ok_or_else(|| api_error(format!("POST {path}"), status, &first))?
                .to_owned();
            self.create(
                &path,
                Some(&body),
                idempotency_key,
                StatusCode::OK,
                Some(&token),
            )
            .await?
        } else if status == StatusCode::OK {
            // The same key was used before: the job it created.
            first
        } else {
            return Err(api_error(format!("POST {path}"), status, &first));
        };
        answer["job_id"]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| api_error(format!("POST {path}"), StatusCode::OK, &answer))
    }

    /// A create call with an `Idempotency-Key`, sent again after a transport error or a 5xx: the
    /// key makes the retry return the job the first attempt may have created.
    async fn create(
        &self,
        path: &str,
        body: Option<&Value>,
        idempotency_key: &str,
        expected: StatusCode,
        confirmation: Option<&str>,
    ) -> BenchResult<Value> {
        let (status, value) = self
            .call_with_retries(path, body, idempotency_key, confirmation)
            .await?;
        if status != expected {
            return Err(api_error(format!("POST {path}"), status, &value));
        }
        Ok(value)
    }

    async fn call_with_retries(
        &self,
        path: &str,
        body: Option<&Value>,
        idempotency_key: &str,
        confirmation: Option<&str>,
    ) -> BenchResult<(StatusCode, Value)> {
        let mut headers = vec![("idempotency-key", idempotency_key)];
        if let Some(token) = confirmation {
            headers.push(("x-confirmation-token", token));
        }
        let mut attempt = 1;
        loop {
            let answer = self.call(Method::POST, path, &[], body, &headers).await;
            let retry = match &answer {
                Err(BenchError::Http { .. }) => true,
                Ok((status, _)) => status.is_server_error(),
                Err(_) => false,
            };
            if !retry || attempt >= CREATE_ATTEMPTS {
                return answer;
            }
            attempt += 1;
            // Spacing retries out, not waiting for a state: the server asked us to come back.
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
    }

    /// One page of jobs, newest first.
    pub async fn jobs_page(
        &self,
        selector: &str,
        kind: Option<&str>,
        status: Option<&str>,
        limit: usize,
        cursor: Option<&str>,
    ) -> BenchResult<(Vec<Job>, Option<String>)> {
        let limit = limit.to_string();
        let mut query = vec![("selector", selector), ("limit", &limit)];
        if let Some(kind) = kind {
            query.push(("kind", kind));
        }
        if let Some(status) = status {
            query.push(("status", status));
        }
        if let Some(cursor) = cursor {
            query.push(("cursor", cursor));
        }
        let page: Page<Job> = self
            .expect(Method::GET, "/v1/jobs", &query, None, StatusCode::OK)
            .await?;
        Ok((page.items, page.next_cursor))
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: String, value: Value) -> BenchResult<T> {
    serde_json::from_value(value.clone()).map_err(|e| BenchError::Api {
        what,
        status: 200,
        body: format!("unexpected body ({e}): {}", truncated(&value)),
    })
}

fn api_error(what: String, status: StatusCode, body: &Value) -> BenchError {
    BenchError::Api {
        what,
        status: status.as_u16(),
        body: truncated(body),
    }
}

fn truncated(value: &Value) -> String {
    value.to_string().chars().take(500).collect()
}
