//! The web admin: its built files (`web-admin/dist`) served at `/`, on the same origin as the API
//! so the browser's cookie session and CSRF header work without CORS. Paths of the API (`/v1/…`,
//! `/pair/…`, `/health`, `/ready`) never fall through to it: an unknown API route is a JSON 404.
//! Any other path without a file extension is a route of the single-page app and gets
//! `index.html`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

/// What the browser may load and from where: only this origin, no inline scripts, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

fn is_api(path: &str) -> bool {
    path == "/v1"
        || path.starts_with("/v1/")
        || path.starts_with("/pair/")
        || path == "/health"
        || path == "/ready"
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The router's fallback: the web admin for browser routes, the JSON 404 for everything else.
pub async fn fallback(State(state): State<AppState>, method: Method, uri: Uri) -> Response {
    let path = uri.path();
    if is_api(path) || !(method == Method::GET || method == Method::HEAD) {
        return ApiError::not_found("no such route").into_response();
    }
    let Some(dir) = state.settings.web_dir.as_deref() else {
        let page = "<!doctype html><meta charset=utf-8><title>moltops</title>\
                    <h1>moltops</h1><p>The web admin is not built on this server. Build it with \
                    <code>npm ci &amp;&amp; npm run build</code> in <code>web-admin/</code>, or \
                    point <code>MOLTOPS_WEB_DIR</code> at a built copy. The API is at \
                    <code>/v1</code>.</p>";
        return (StatusCode::NOT_FOUND, headers("x.html", false), page).into_response();
    };
    // Only plain segments (no dot-files, no escapes): nothing can climb out of the directory or
    // reach hidden files.
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments
        .iter()
        .any(|s| s.starts_with('.') || s.contains(['\\', '\0', '%']))
    {
        return ApiError::not_found("no such file").into_response();
    }
    let relative = segments.join("/");
    let last_has_extension = segments.last().is_some_and(|s| s.contains('.'));
    let (file, name) = if relative.is_empty() || !last_has_extension {
        (dir.join("index.html"), "index.html".to_owned())
    } else {
        (dir.join(&relative), relative.clone())
    };
    match tokio::fs::read(&file).await {
        Ok(bytes) => {
            let immutable = name.starts_with("assets/");
            let body = if method == Method::HEAD {
                Vec::new()
            } else {
                bytes
            };
            (StatusCode::OK, headers(&name, immutable), body).into_response()
        }
        Err(_) => ApiError::not_found("no such file").into_response(),
    }
}

fn headers(name: &str, immutable: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(name)),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            // Vite names built assets by their content hash.
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_never_reach_the_web_admin() {
        for p in ["/v1", "/v1/nope", "/pair/start", "/health", "/ready"] {
            assert!(is_api(p), "{p}");
        }
        for p in ["/", "/nodes/1", "/assets/index.js", "/v1x"] {
            assert!(!is_api(p), "{p}");
        }
        assert_eq!(
            content_type("assets/a.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
    }
}
