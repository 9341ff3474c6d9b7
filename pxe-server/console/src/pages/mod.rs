//! The pages. Each reads one snapshot of the live fleet (and the store where it must be
//! fresh: one machine, rollouts) and renders it; nothing here decides anything the API does
//! not decide the same way.

pub mod events;
pub mod images;
pub mod machines;
pub mod overview;
pub mod rollouts;

use axum::http::StatusCode;
use axum::response::Response;
use tugboot_fleet::{Machine, MachineState};
use tugboot_store::StoreError;

use crate::auth::html;
use crate::health::Standing;
use crate::html::{Html, Nav, page};
use crate::state::Console;

/// A page with the session's navigation.
pub(crate) fn render(title: &str, nav: Nav, csrf: &str, body: &Html) -> Response {
    html(StatusCode::OK, page(title, nav, Some(csrf), body))
}

/// An error page (still with navigation).
pub(crate) fn error(status: StatusCode, message: &str, csrf: &str) -> Response {
    let mut body = Html::new();
    body.raw("<h1>")
        .show(status.as_u16())
        .raw(" ")
        .text(status.canonical_reason().unwrap_or("Error"))
        .raw("</h1><p class=\"flash bad\" role=\"alert\">")
        .text(message)
        .raw("</p>");
    html(status, page("Error", Nav::None, Some(csrf), &body))
}

/// The store failed under a page.
pub(crate) fn store_error(e: &StoreError, csrf: &str) -> Response {
    tracing::error!(error = %e, "console: store error");
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "The fleet store is not answering; try again shortly.",
        csrf,
    )
}

/// A machine's standing now.
pub(crate) fn standing(c: &Console, m: &Machine, now: i64) -> Standing {
    c.health()
        .standing(m.id, now, c.api.config().silent_after_secs)
}

/// `<span class="badge {tone}">{word}</span>` for a standing.
pub(crate) fn standing_badge(h: &mut Html, s: &Standing) {
    h.raw("<span class=\"badge ")
        .raw(s.class())
        .raw("\">")
        .text(s.word())
        .raw("</span>");
    if let Standing::Failing(why) = s {
        h.raw(" <span class=\"why\">").text(why).raw("</span>");
    }
}

/// The operator state as a badge.
pub(crate) fn state_badge(h: &mut Html, state: MachineState) {
    let tone = match state {
        MachineState::Approved => "good",
        MachineState::Revoked => "bad",
        MachineState::Adopted => "warn",
        MachineState::Unknown => "muted",
    };
    h.raw("<span class=\"badge ")
        .raw(tone)
        .raw("\">")
        .text(state.as_str())
        .raw("</span>");
}

/// The version a machine runs as it attested it (`image` fact), else what it last netbooted.
pub(crate) fn running(m: &Machine) -> Option<(String, &'static str)> {
    if let Some(f) = m.facts.get(tugboot_fleet::facts::keys::IMAGE) {
        return Some((f.value.clone(), f.source.as_str()));
    }
    m.last_booted_image
        .as_ref()
        .filter(|i| i.as_str() != "local")
        .map(|i| (i.clone(), "netbooted"))
}

/// Cumulative counts of sorted `times` at no more than `buckets` points between `t0` and
/// `t1` (a chart line need not have one vertex per machine).
pub(crate) fn cumulative(mut times: Vec<i64>, t0: i64, t1: i64, buckets: i64) -> Vec<(i64, u64)> {
    times.sort_unstable();
    let span = (t1 - t0).max(1);
    let step = (span / buckets.max(1)).max(1);
    let mut out: Vec<(i64, u64)> = Vec::new();
    for (i, t) in times.iter().enumerate() {
        let bucket = t0 + ((t - t0).max(0) / step) * step;
        let n = u64::try_from(i + 1).unwrap_or(u64::MAX);
        match out.last_mut() {
            Some(last) if last.0 == bucket => last.1 = n,
            _ => out.push((bucket, n)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_counts_are_bucketed() {
        let pts = cumulative(vec![105, 100, 250, 260, 999], 100, 1000, 9);
        assert_eq!(pts, [(100, 2), (200, 4), (900, 5)]);
        assert!(cumulative(vec![], 0, 10, 5).is_empty());
    }
}
