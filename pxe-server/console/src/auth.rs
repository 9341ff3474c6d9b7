//! Login, logout, the session gate in front of every page, and the headers every answer
//! carries.
//!
//! - Login is a form POST of the operator token (the one in `operator-token`, compared in
//!   constant time by the API). The form carries a one-time value that must equal an HttpOnly
//!   cookie set with the form (login CSRF). Credentials never appear in a URL.
//! - A session is a `__Host-` cookie: `Secure`, `HttpOnly`, `SameSite=Strict`, `Path=/`, no
//!   domain; its value is 128 random bits, looked up in the server-side table
//!   ([`crate::session`]).
//! - Every POST behind the gate must carry the session's CSRF token in its `csrf` field; the
//!   gate checks it before any handler runs, so no form can forget it. A browser's `Origin`
//!   and `Sec-Fetch-Site` must also say the request comes from the console itself.
//! - A request without a live session is sent to the login page (`303`, with the page it
//!   wanted as `next`, a path only).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest as _, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::html::{Html, Nav, page, query};
use crate::session::{TOKEN_BYTES, constant_time_eq};
use crate::state::Console;

/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-tugboot_session";
/// The login form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "__Host-tugboot_login";
/// Largest form body accepted.
pub const MAX_FORM_BYTES: usize = 16 * 1024;

/// What the gate found: the session's CSRF token, for the forms a page renders.
#[derive(Debug, Clone)]
pub struct Authed {
    /// The token (hex).
    pub csrf: String,
}

/// The value of cookie `name`, if the request carries it.
#[must_use]
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn random() -> Option<[u8; TOKEN_BYTES]> {
    let mut b = [0u8; TOKEN_BYTES];
    match getrandom::getrandom(&mut b) {
        Ok(()) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "no randomness for a console token");
            None
        }
    }
}

fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: Option<i64>) {
    let mut c = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict");
    if let Some(a) = max_age {
        c.push_str(&format!("; Max-Age={a}"));
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// A `303 See Other` to `to`.
#[must_use]
pub fn see_other(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// A page answer.
#[must_use]
pub fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// Where to go after login: a console path, nothing else (no scheme, no host, no `//`).
#[must_use]
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with("/console/")
                && !n.contains("//")
                && !n.contains('\\')
                && n.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            n
        }
        _ => "/console/",
    }
}

fn session_of(c: &Console, headers: &HeaderMap) -> Option<crate::session::Session> {
    let id = cookie(headers, SESSION_COOKIE)?;
    c.sessions().touch(id, c.api.unix_now())
}

/// Whether the browser says this request comes from a page of the console itself (headers
/// that a browser sets and a page cannot; absent from non-browser clients, which the CSRF
/// token covers).
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
    {
        return false;
    }
    match (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin == format!("https://{host}"),
        (Some(_), None) => false,
        (None, _) => true,
    }
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// The gate in front of every page (see the module documentation).
pub async fn require_session(State(c): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let Some(session) = session_of(&c, req.headers()) else {
        if req.method() == Method::GET || req.method() == Method::HEAD {
            let wanted = req
                .uri()
                .path_and_query()
                .map_or("/console/", axum::http::uri::PathAndQuery::as_str);
            return see_other(&format!(
                "/console/login{}",
                query(&[("next", safe_next(Some(wanted)))])
            ));
        }
        return see_other("/console/login");
    };
    let mut req = req;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        if !same_origin(req.headers()) {
            tracing::warn!("console request refused: cross-site");
            return forbidden("This request did not come from the console.");
        }
        let (parts, body) = req.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return html(StatusCode::PAYLOAD_TOO_LARGE, "form too large\n".into());
        };
        let probe = Request::from_parts(parts.clone(), Body::from(bytes.clone()));
        let presented = axum::Form::<CsrfField>::from_request(probe, &())
            .await
            .map(|f| f.0.csrf)
            .unwrap_or_default();
        if !session.csrf_ok(&presented) {
            tracing::warn!("console request refused: missing or wrong CSRF token");
            return forbidden(
                "The form is stale or did not come from the console: reload the page and try again.",
            );
        }
        req = Request::from_parts(parts, Body::from(bytes));
    }
    req.extensions_mut().insert(Authed { csrf: session.csrf });
    next.run(req).await
}

fn forbidden(message: &str) -> Response {
    let mut body = Html::new();
    body.raw("<h1>Refused</h1><p>").text(message).raw("</p>");
    html(
        StatusCode::FORBIDDEN,
        page("Refused", Nav::None, None, &body),
    )
}

/// `?next=` of the login page.
#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let Some(token) = random() else {
        return html(StatusCode::SERVICE_UNAVAILABLE, "no randomness\n".into());
    };
    let token = hex::encode(token);
    let mut body = Html::new();
    body.raw("<section class=\"login\"><h1>Log in</h1>");
    if let Some(e) = error {
        body.raw("<p class=\"flash bad\" role=\"alert\" id=\"login-error\">")
            .text(e)
            .raw("</p>");
    }
    body.raw("<form method=\"post\" action=\"/console/login\">")
        .hidden("login_csrf", &token)
        .hidden("next", next)
        .raw("<label for=\"token\">Operator token</label>")
        .raw("<input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required autofocus>")
        .raw("<p class=\"hint\">The contents of <code>operator-token</code> in the API state directory (<code>data/api/operator-token</code> by default).</p>")
        .raw("<button type=\"submit\">Log in</button></form></section>");
    let mut resp = html(status, page("Log in", Nav::None, None, &body));
    set_cookie(&mut resp, LOGIN_COOKIE, &token, Some(600));
    resp
}

/// `GET /console/login`.
pub async fn login_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if session_of(&c, &headers).is_some() {
        return see_other(next);
    }
    login_page(StatusCode::OK, next, None)
}

/// The login form.
#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    login_csrf: String,
    #[serde(default)]
    next: Option<String>,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginForm")
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// `POST /console/login`.
pub async fn login(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty()
        || !constant_time_eq(expected.as_bytes(), form.login_csrf.as_bytes())
        || !same_origin(&headers)
    {
        tracing::warn!("console login refused: stale form or cross-site");
        return login_page(
            StatusCode::FORBIDDEN,
            &next,
            Some("The login form expired: try again."),
        );
    }
    if !c.api.is_operator_token(form.token.trim()) {
        tracing::warn!("console login refused: wrong operator token");
        // Slows down guessing a little (the token has 256 bits anyway).
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("Wrong operator token."),
        );
    }
    let (Some(id), Some(csrf)) = (random(), random()) else {
        return html(StatusCode::SERVICE_UNAVAILABLE, "no randomness\n".into());
    };
    let id = c.sessions().create(id, csrf, c.api.unix_now());
    tracing::info!("console login");
    let mut resp = see_other(&next);
    set_cookie(&mut resp, SESSION_COOKIE, &id, None);
    set_cookie(&mut resp, LOGIN_COOKIE, "", Some(0));
    resp
}

/// `POST /console/logout` (behind the gate, so with the CSRF token).
pub async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        c.sessions().remove(id);
    }
    tracing::info!("console logout");
    let mut resp = see_other("/console/login");
    set_cookie(&mut resp, SESSION_COOKIE, "", Some(0));
    resp
}

/// Headers on every console answer: a strict Content-Security-Policy (own scripts and styles
/// only, no inline script, no framing), no sniffing, no caching of pages, and no referrer
/// outside the console. (Not `no-referrer`: with it a browser sends `Origin: null` on the
/// console's own form posts, and the origin check could no longer tell them from a
/// cross-site one.)
pub async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, k: &'static str, v: &'static str| {
        h.insert(k, HeaderValue::from_static(v));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "same-origin");
    set(h, "x-frame-options", "DENY");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_console_path_or_the_overview() {
        assert_eq!(
            safe_next(Some("/console/machines?q=a")),
            "/console/machines?q=a"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/console/",
            "/console//evil",
            "/console/\\evil",
            "/api/v1/admin/machines",
            "/console/a b",
        ] {
            assert_eq!(safe_next(Some(bad)), "/console/", "{bad}");
        }
        assert_eq!(safe_next(None), "/console/");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-tugboot_session=abc"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("x__Host-tugboot_login=no"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE), None);
    }

    #[test]
    fn cross_site_posts_are_told_apart() {
        let mut h = HeaderMap::new();
        assert!(same_origin(&h), "non-browser clients rely on the token");
        h.insert(header::HOST, HeaderValue::from_static("10.0.0.1:8443"));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://10.0.0.1:8443"),
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("same-origin"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://10.0.0.1:8443"),
        );
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h));
    }
}
