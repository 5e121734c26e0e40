//! The one REST error type. Every failure becomes a status and the `{code, message}` envelope;
//! internal causes are logged with a correlation id and never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// A 428's confirmation token, for the caller to repeat the call with.
    pub confirmation: Option<Box<Confirmation>>,
}

/// What a 428 offers: the token, and what it confirms.
#[derive(Debug, Clone, Serialize)]
pub struct Confirmation {
    pub confirmation_token: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub action: &'static str,
    pub target: String,
    /// What the token is bound to besides action and target: the request's parameters and reason.
    pub parameters: serde_json::Value,
}

/// The wire form, as in the seed contract's `Error` schema.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub code: &'a str,
    pub message: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub confirmation: Option<&'a Confirmation>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            confirmation: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// Logs the cause under a fresh id and returns an envelope that names only that id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let incident = uuid::Uuid::new_v4();
        tracing::error!(%incident, error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error (incident {incident})"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            code: self.code,
            message: &self.message,
            confirmation: self.confirmation.as_deref(),
        });
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = axum::http::HeaderValue::from_str(&seconds.to_string())
        {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            if db.is_unique_violation() {
                return Self::conflict(format!(
                    "already exists ({})",
                    db.constraint().unwrap_or("unique constraint")
                ));
            }
            if db.is_check_violation() || db.is_foreign_key_violation() {
                return Self::validation(format!(
                    "rejected by the database ({})",
                    db.constraint().unwrap_or("constraint")
                ));
            }
        }
        Self::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
