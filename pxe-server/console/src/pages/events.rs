//! `/console/events`: what the fleet does right now — DHCP, TFTP and HTTP requests, boot
//! plans served, device reports, rollout transitions — rendered on load and then pushed with
//! server-sent events (`/console/events/stream`); netboot durations as a chart.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse as _, Response};
use futures_util::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::render;
use crate::auth::{Authed, SESSION_COOKIE, cookie};
use crate::chart;
use crate::html::{Html, Nav, utc};
use crate::live::Row;
use crate::state::Console;

/// Rows rendered with the page (the rest arrive live).
const SHOWN: usize = 200;

fn row_html(h: &mut Html, r: &Row) {
    let secs = r.at_ms.div_euclid(1000);
    h.raw("<tr class=\"tone-")
        .raw(r.tone)
        .raw("\"><td class=\"when\">")
        .text(&utc(secs)[..19])
        .raw("</td><td><span class=\"badge ")
        .raw(r.tone)
        .raw("\">")
        .text(r.kind)
        .raw("</span></td><td>");
    match &r.href {
        Some(href) => h.link(href, &r.who),
        None => h.text(&r.who),
    };
    h.raw("</td>").td(&r.text).raw("</tr>");
}

/// `GET /console/events`.
pub async fn show(State(c): State<Arc<Console>>, Extension(auth): Extension<Authed>) -> Response {
    let (rows, boots, skipped) = {
        let log = c.log();
        let rows: Vec<Arc<Row>> = log.recent().take(SHOWN).cloned().collect();
        let all: Vec<_> = log.boots().cloned().collect();
        (rows, all, log.skipped)
    };
    let mut h = Html::new();
    h.raw("<h1>Events <span class=\"live\" data-live-status></span></h1><p class=\"hint\">Since this server started; newest first. Requests seen by DHCP, TFTP and HTTP, boot plans served, device reports, rollout transitions.");
    if skipped > 0 {
        h.raw(" ")
            .show(skipped)
            .raw(" events were skipped under load.");
    }
    h.raw("</p>");
    let recent: Vec<(String, i64)> = boots
        .iter()
        .skip(boots.len().saturating_sub(50))
        .map(|b| (format!("{} {}", b.mac, b.image), b.millis))
        .collect();
    h.raw(
        "<section><h2>Netboot durations</h2><p class=\"hint\">First DHCP packet to boot plan.</p>",
    )
    .html(&chart::columns("Netboot durations", &recent))
    .raw("</section>");
    h.raw("<section><div class=\"scroll\"><table class=\"events\"><thead><tr><th>When (UTC)</th><th>Kind</th><th>Who</th><th>What</th></tr></thead><tbody data-live-events>");
    for r in &rows {
        row_html(&mut h, r);
    }
    h.raw("</tbody></table></div>");
    if rows.is_empty() {
        h.raw("<p class=\"muted\" data-live-empty>Nothing yet: events appear here as they happen.</p>");
    }
    h.raw("</section>");
    render("Events", Nav::Events, &auth.csrf, &h)
}

fn sse_event(r: &Row) -> Event {
    let data = serde_json::to_string(r).unwrap_or_else(|_| "{}".into());
    Event::default()
        .id(r.seq.to_string())
        .event("row")
        .data(data)
}

/// `GET /console/events/stream`: one SSE `row` event per fleet event (JSON of [`Row`]); a
/// reconnecting browser sends `Last-Event-ID` and first gets what it missed from the kept
/// rows. `lagged` says how many this stream skipped when it fell behind. The stream ends when
/// the session does (logout, expiry).
pub async fn stream(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let session = cookie(&headers, SESSION_COOKIE)
        .unwrap_or_default()
        .to_owned();
    let rx = c.rows.subscribe();
    let backlog: Vec<Arc<Row>> = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|seq| c.log().since(seq))
        .unwrap_or_default();
    let last = backlog.first().map_or(0, |r| r.seq.saturating_sub(1));
    Sse::new(rows(c, session, rx, backlog, last))
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn rows(
    c: Arc<Console>,
    session: String,
    rx: tokio::sync::broadcast::Receiver<Arc<Row>>,
    backlog: Vec<Arc<Row>>,
    last: u64,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (c, session, rx, backlog.into_iter(), last);
    futures_util::stream::unfold(
        state,
        |(c, session, mut rx, mut backlog, mut last)| async move {
            loop {
                let row = match backlog.next() {
                    Some(r) => r,
                    None => match rx.recv().await {
                        Ok(r) => r,
                        Err(RecvError::Lagged(n)) => {
                            let ev = Event::default().event("lagged").data(n.to_string());
                            return Some((Ok(ev), (c, session, rx, backlog, last)));
                        }
                        Err(RecvError::Closed) => return None,
                    },
                };
                if !c.session_alive(&session) {
                    return None;
                }
                if row.seq <= last {
                    continue;
                }
                last = row.seq;
                let ev = sse_event(&row);
                return Some((Ok(ev), (c, session, rx, backlog, last)));
            }
        },
    )
}
