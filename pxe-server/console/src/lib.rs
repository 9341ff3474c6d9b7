//! tugboot's web console: the fleet, its images and its rollouts in a browser.
//!
//! Server-rendered HTML with a little JavaScript (the live event view over server-sent events),
//! the stylesheet and the script compiled into the binary: works offline, no CDN, built by
//! cargo alone. `tugboot serve` mounts [`router`] on the device API's listener (HTTPS with the
//! tugboot CA's server certificate) under `/console/` when `[api] console` is on (the default).
//!
//! It reads what the device API reads — the fleet store, the live fleet (catalogue, registry)
//! — and acts only through the API's own operator functions
//! ([`tugboot_api::server::operator`]): one implementation of every rule.
//!
//! - [`auth`]: login with the operator token, sessions, CSRF, security headers;
//! - [`session`], [`health`], [`live`], [`chart`], [`html`]: sans-IO cores (sessions, which
//!   machines are failing or silent, the event log and netboot durations, SVG charts, escaping);
//! - [`state`]: the running state and its background tasks;
//! - `pages`: one module per page.
//!
//! See `docs/console.md`.

pub mod auth;
pub mod chart;
pub mod health;
pub mod html;
pub mod live;
pub mod session;
pub mod state;

mod assets;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tugboot_api::ApiState;

pub use state::Console;

/// The console's routes for the API listener, with their background tasks started on the
/// current tokio runtime (see [`Console::start_tasks`]).
pub fn router(api: Arc<ApiState>) -> Router {
    let console = Console::new(api);
    console.start_tasks();
    routes(console)
}

/// The routes over an existing console state (tests and the benchmark start no tasks).
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route("/console/", get(pages::overview::show))
        .route("/console/machines", get(pages::machines::list))
        .route("/console/machines/{id}", get(pages::machines::show))
        .route("/console/images", get(pages::images::list))
        .route("/console/images/{name}/{version}", get(pages::images::show))
        .route(
            "/console/rollouts",
            get(pages::rollouts::list).post(pages::rollouts::create),
        )
        .route("/console/rollouts/new", post(pages::rollouts::preview))
        .route("/console/rollouts/{id}", get(pages::rollouts::show))
        .route(
            "/console/rollouts/{id}/{action}",
            get(pages::rollouts::confirm).post(pages::rollouts::command),
        )
        .route("/console/events", get(pages::events::show))
        .route("/console/events/stream", get(pages::events::stream))
        .route("/console/logout", post(auth::logout))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            auth::require_session,
        ))
        .route("/console/login", get(auth::login_form).post(auth::login))
        .route("/console/assets/{file}", get(assets::serve))
        .route("/console", get(|| async { auth::see_other("/console/") }))
        .route("/", get(|| async { auth::see_other("/console/") }))
        .layer(axum::extract::DefaultBodyLimit::max(auth::MAX_FORM_BYTES))
        .layer(axum::middleware::map_response(auth::security_headers))
        .with_state(console)
}

/// Entry point shared with the fuzz target (`fuzz/`) and the seed test: every piece of request
/// text the console parses itself (forms and query strings go through `serde_urlencoded`):
/// the `Cookie` header, the `next` of the login page, the stages of a new rollout, and the
/// escaping every value goes through. Must never panic.
///
/// Lines of `data` (lossy UTF-8) are each tried as all of them.
pub fn fuzz_inputs(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines().chain([text.as_ref()]) {
        if let Ok(v) = axum::http::HeaderValue::from_str(line) {
            let mut h = axum::http::HeaderMap::new();
            h.append(axum::http::header::COOKIE, v);
            for name in [auth::SESSION_COOKIE, auth::LOGIN_COOKIE] {
                if let Some(value) = auth::cookie(&h, name) {
                    assert!(line.contains(value));
                }
            }
        }
        let next = auth::safe_next(Some(line));
        assert!(
            next.starts_with("/console/") && !next.contains("//"),
            "{next}"
        );
        if let Ok(stages) = pages::rollouts::parse_stages(line) {
            assert!(stages.len() <= line.len());
        }
        let escaped = html::escape(line);
        assert!(!escaped.contains(['<', '>', '"', '\'']), "{escaped}");
        let seg = html::segment(line);
        assert!(
            !seg.contains(['/', '?', '#', '<', '"']) && seg != "." && seg != "..",
            "{seg}"
        );
    }
}
