//! The 428 dance for destructive operations (see [`crate::confirm`]).

use axum::http::{HeaderMap, StatusCode};

use super::AppState;
use super::error::{ApiError, ApiResult, Confirmation};
use crate::confirm::{self, ConfirmError, Intent};

/// The token the caller sent, or a 428 that carries a fresh one for exactly this intent.
pub async fn token_or_428(
    state: &AppState,
    headers: &HeaderMap,
    intent: &Intent<'_>,
) -> ApiResult<String> {
    if let Some(token) = headers.get(confirm::HEADER).and_then(|v| v.to_str().ok()) {
        return Ok(token.trim().to_owned());
    }
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::from_os_rng();
    let (token, expires_at) =
        confirm::issue(&state.pool, intent, state.clock.now(), &mut rng).await?;
    let mut error = ApiError::new(
        StatusCode::PRECONDITION_REQUIRED,
        "confirmation_required",
        format!(
            "{} is destructive: repeat the same call with header X-Confirmation-Token within {} minutes",
            intent.action,
            confirm::TTL.num_minutes()
        ),
    );
    error.confirmation = Some(Box::new(Confirmation {
        confirmation_token: token.to_string(),
        expires_at,
        action: intent.action,
        target: intent.target.clone(),
        parameters: intent.params.clone(),
    }));
    Err(error)
}

pub fn confirm_error(e: ConfirmError) -> ApiError {
    match e {
        ConfirmError::Invalid => {
            ApiError::new(StatusCode::FORBIDDEN, "confirmation_invalid", e.to_string())
        }
        ConfirmError::Database(d) => d.into(),
    }
}
