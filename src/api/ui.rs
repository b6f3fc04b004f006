//! The web UI: static files under `/ui/`, built into the binary from the repository's `ui/`
//! folder (or read from `api.ui_dir`). `/` leads there.
//!
//! The files are plain HTML, CSS and JavaScript with no build step and nothing fetched from
//! elsewhere: the UI works on a plant network without internet. A strict Content Security
//! Policy keeps it to its own scripts and to this API.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use include_dir::{Dir, include_dir};

use super::ApiState;

static UI: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/ui");

const CSP: &str = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
                   form-action 'self'";

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/ui/",
            get(|state: State<ApiState>| file(state, Path(String::new()))),
        )
        .route("/ui/{*path}", get(file))
}

fn media_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

async fn file(State(state): State<ApiState>, Path(path): Path<String>) -> Response {
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}index.html")
    } else {
        path
    };
    // Only plain relative names: no `..`, no absolute paths, no hidden files.
    if path
        .split('/')
        .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return StatusCode::NOT_FOUND.into_response();
    }
    let bytes = match &state.config.ui_dir {
        Some(dir) => tokio::fs::read(dir.join(&path)).await.ok(),
        None => UI.get_file(&path).map(|f| f.contents().to_vec()),
    };
    let Some(bytes) = bytes else {
        return (StatusCode::NOT_FOUND, format!("no {path} in the web UI")).into_response();
    };
    let mut response = ([(header::CONTENT_TYPE, media_type(&path))], bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The UI changes with the binary: revalidate rather than run a stale script.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
