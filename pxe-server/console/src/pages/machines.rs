//! `/console/machines`: search and filter the registry; `/console/machines/{id}`: one machine
//! — identity, what it runs (slot, version), its facts with provenance, certificates, boots,
//! reports and health history.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use tugboot_api::server::operator::health_view;
use tugboot_fleet::facts::keys;
use tugboot_fleet::{Machine, MachineId, MachineState};
use tugboot_store::Store;

use super::{error, render, running, standing, standing_badge, state_badge, store_error};
use crate::auth::Authed;
use crate::chart;
use crate::health::{Standing, report_problem};
use crate::html::{Html, Nav, age, query, utc};
use crate::state::Console;

/// Machines per page.
pub const PAGE: usize = 50;

/// The filters (all optional, combined with AND).
#[derive(Debug, Default, Deserialize)]
pub struct Filter {
    /// Text in the name, MAC, host name, address, serial or id.
    #[serde(default)]
    pub q: String,
    /// `key=value` (a label with that value) or `key` (has the label).
    #[serde(default)]
    pub label: String,
    /// Board name.
    #[serde(default)]
    pub board: String,
    /// Operator state.
    #[serde(default)]
    pub state: String,
    /// `failing`, `silent`, `healthy`, `not-enrolled`.
    #[serde(default)]
    pub health: String,
    /// Page, from 1.
    #[serde(default)]
    pub page: Option<usize>,
}

impl Filter {
    fn matches(&self, m: &Machine, s: &Standing) -> bool {
        if !self.q.is_empty() {
            let q = self.q.to_ascii_lowercase();
            let hay = [
                Some(m.display_name()),
                m.mac.map(|x| x.to_string()),
                m.serial.clone(),
                m.facts.value(keys::HOSTNAME).map(str::to_owned),
                m.facts.value(keys::ADDRESS).map(str::to_owned),
                Some(m.id.to_string()),
            ];
            if !hay
                .iter()
                .flatten()
                .any(|v| v.to_ascii_lowercase().contains(&q))
            {
                return false;
            }
        }
        if !self.label.is_empty() {
            let (k, v) = match self.label.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (self.label.trim(), None),
            };
            if !m
                .labels()
                .any(|(lk, lv)| lk == k && v.is_none_or(|v| v == lv))
            {
                return false;
            }
        }
        if !self.board.is_empty() && m.board() != Some(self.board.as_str()) {
            return false;
        }
        if !self.state.is_empty() && m.state.as_str() != self.state {
            return false;
        }
        match self.health.as_str() {
            "" => true,
            "not-enrolled" => *s == Standing::NotEnrolled,
            h => s.word() == h,
        }
    }

    fn link(&self, page: usize) -> String {
        let p = page.to_string();
        format!(
            "/console/machines{}",
            query(&[
                ("q", &self.q),
                ("label", &self.label),
                ("board", &self.board),
                ("state", &self.state),
                ("health", &self.health),
                ("page", if page > 1 { &p } else { "" }),
            ])
        )
    }
}

fn select(
    h: &mut Html,
    name: &'static str,
    label: &'static str,
    current: &str,
    options: &[String],
) {
    h.raw("<label>")
        .raw(label)
        .raw(" <select name=\"")
        .raw(name)
        .raw("\"><option value=\"\">any</option>");
    for o in options {
        h.raw("<option");
        if o == current {
            h.raw(" selected");
        }
        h.raw(">").text(o).raw("</option>");
    }
    h.raw("</select></label>");
}

/// `GET /console/machines`.
pub async fn list(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Query(f): Query<Filter>,
) -> Response {
    let now = c.api.unix_now();
    let fleet = c.api.live().snapshot();
    let mut boards: Vec<String> = fleet
        .registry
        .iter()
        .filter_map(|m| m.board().map(str::to_owned))
        .collect();
    boards.sort();
    boards.dedup();
    let mut rows: Vec<(Standing, &Machine)> = fleet
        .registry
        .iter()
        .map(|m| (standing(&c, m, now), m))
        .filter(|(s, m)| f.matches(m, s))
        .collect();
    rows.sort_by(|a, b| a.0.rank().cmp(&b.0.rank()).then(a.1.id.cmp(&b.1.id)));
    let pages = rows.len().div_ceil(PAGE).max(1);
    let page = f.page.unwrap_or(1).clamp(1, pages);

    let mut h = Html::new();
    h.raw("<h1>Machines</h1><form class=\"filters\" method=\"get\" action=\"/console/machines\">")
        .raw("<label>Search <input type=\"search\" name=\"q\" placeholder=\"name, MAC, host, address\" value=\"")
        .text(&f.q)
        .raw("\"></label><label>Label <input name=\"label\" placeholder=\"key=value\" value=\"")
        .text(&f.label)
        .raw("\"></label>");
    select(&mut h, "board", "Board", &f.board, &boards);
    let states: Vec<String> = MachineState::ALL
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    select(&mut h, "state", "State", &f.state, &states);
    let healths: Vec<String> = ["failing", "silent", "healthy", "not-enrolled"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    select(&mut h, "health", "Health", &f.health, &healths);
    h.raw("<button type=\"submit\">Filter</button> ")
        .link("/console/machines", "Clear")
        .raw("</form><p class=\"count\">")
        .show(rows.len())
        .raw(" of ")
        .show(fleet.registry.len())
        .raw(" machines</p>");
    h.raw("<div class=\"scroll\"><table class=\"machines\"><thead><tr><th>Machine</th><th>MAC</th><th>State</th><th>Health</th><th>Board</th><th>Version</th><th>Slot</th><th>Labels</th><th>Last seen</th></tr></thead><tbody>");
    for (s, m) in rows.iter().skip((page - 1) * PAGE).take(PAGE) {
        h.raw("<tr><td>")
            .link(&format!("/console/machines/{}", m.id), &m.display_name())
            .raw("</td>")
            .td(&m.mac.map_or_else(|| "—".into(), |x| x.to_string()))
            .raw("<td>");
        state_badge(&mut h, m.state);
        h.raw("</td><td>");
        standing_badge(&mut h, s);
        h.raw("</td>")
            .td(m.board().unwrap_or("—"))
            .td(&running(m).map_or_else(|| "—".into(), |(v, _)| v))
            .td(m.facts.value(keys::SLOT).unwrap_or("—"))
            .raw("<td class=\"labels\">");
        for (k, v) in m.labels() {
            h.raw("<span class=\"label\">")
                .text(k)
                .raw("=")
                .text(v)
                .raw("</span> ");
        }
        h.raw("</td>").td(&age(now, m.last_seen)).raw("</tr>");
    }
    h.raw("</tbody></table></div>");
    if pages > 1 {
        h.raw("<nav class=\"pages\">");
        if page > 1 {
            h.link(&f.link(page - 1), "← previous");
        }
        h.raw(" <span>page ")
            .show(page)
            .raw(" of ")
            .show(pages)
            .raw("</span> ");
        if page < pages {
            h.link(&f.link(page + 1), "next →");
        }
        h.raw("</nav>");
    }
    render("Machines", Nav::Machines, &auth.csrf, &h)
}

fn row(h: &mut Html, label: &'static str, value: &str) {
    h.raw("<tr><th>")
        .raw(label)
        .raw("</th>")
        .td(value)
        .raw("</tr>");
}

/// `GET /console/machines/{id}`: read from the store (not the snapshot), so it is current.
#[allow(clippy::too_many_lines)] // one page, top to bottom
pub async fn show(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<i64>().map(MachineId) else {
        return error(StatusCode::NOT_FOUND, "No such machine.", &auth.csrf);
    };
    let store = c.api.store();
    let now = c.api.unix_now();
    let m = match store.get_machine(id).await {
        Ok(Some(m)) => m,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such machine.", &auth.csrf),
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let (certs, reports) = match (
        store.list_device_certs(id).await,
        store.list_reports(id, 50).await,
    ) {
        (Ok(c), Ok(r)) => (c, r),
        (Err(e), _) | (_, Err(e)) => return store_error(&e, &auth.csrf),
    };
    let view = health_view(
        &reports,
        !certs.is_empty(),
        now,
        c.api.config().silent_after_secs,
    );
    let s = standing(&c, &m, now);

    let mut h = Html::new();
    h.raw("<h1>").text(&m.display_name()).raw(" ");
    state_badge(&mut h, m.state);
    h.raw(" ");
    standing_badge(&mut h, &s);
    h.raw("</h1><div class=\"grid2\"><section><h2>Identity</h2><table class=\"kv\">");
    row(&mut h, "Id", &m.id.to_string());
    row(&mut h, "Name", m.name.as_deref().unwrap_or("—"));
    row(
        &mut h,
        "MAC",
        &m.mac.map_or_else(|| "—".into(), |x| x.to_string()),
    );
    row(
        &mut h,
        "SMBIOS UUID",
        &m.uuid.map_or_else(|| "—".into(), |u| u.to_string()),
    );
    row(&mut h, "Serial", m.serial.as_deref().unwrap_or("—"));
    row(&mut h, "Board", m.board().unwrap_or("—"));
    row(&mut h, "Profile", m.profile().unwrap_or("—"));
    row(
        &mut h,
        "First seen",
        &format!("{} ({})", utc(m.first_seen), age(now, m.first_seen)),
    );
    row(
        &mut h,
        "Last seen",
        &format!("{} ({})", utc(m.last_seen), age(now, m.last_seen)),
    );
    h.raw("</table></section><section><h2>Running</h2><table class=\"kv\">");
    let fact = |k: &str| {
        m.facts
            .get(k)
            .map_or_else(|| "—".to_owned(), |f| format!("{} ({})", f.value, f.source))
    };
    row(&mut h, "Version", &fact(keys::IMAGE));
    row(&mut h, "Slot", &fact(keys::SLOT));
    row(&mut h, "Installed", &fact(keys::INSTALLED));
    row(
        &mut h,
        "Last netbooted",
        m.last_booted_image.as_deref().unwrap_or("—"),
    );
    let st = &view.status;
    if st.is_null() {
        row(&mut h, "Status", "no status report");
    } else {
        row(
            &mut h,
            "Status",
            &format!(
                "slot {} · {} · {}",
                st["slot"].as_str().unwrap_or("?"),
                st["image"].as_str().unwrap_or("?"),
                age(now, st["received_at"].as_i64().unwrap_or(now))
            ),
        );
        if let Some(e) = st["last_error"].as_str() {
            row(&mut h, "Last error", e);
        }
    }
    let silent = &view.silent;
    row(
        &mut h,
        "Reports",
        &match silent["last_report_age_secs"].as_i64() {
            Some(a) => format!(
                "last {} ({})",
                age(now, now - a),
                if silent["silent"] == true {
                    "silent"
                } else {
                    "on time"
                }
            ),
            None if certs.is_empty() => "not enrolled".into(),
            None => "never reported".into(),
        },
    );
    h.raw("</table></section></div>");

    // Labels get their own list: what an operator scans for first.
    h.raw("<section><h2>Labels</h2>");
    if m.labels().next().is_none() {
        h.raw("<p class=\"muted\">No labels.</p>");
    } else {
        h.raw("<ul class=\"labels\" id=\"labels\">");
        for (k, v) in m.labels() {
            h.raw("<li><span class=\"label\"><span class=\"k\">")
                .text(k)
                .raw("</span>=<span class=\"v\">")
                .text(v)
                .raw("</span></span></li>");
        }
        h.raw("</ul>");
    }
    h.raw("</section>");

    h.raw("<section><h2>Facts</h2><div class=\"scroll\"><table><thead><tr><th>Fact</th><th>Value</th><th>Said by</th><th>When</th></tr></thead><tbody>");
    for (k, f) in m.facts.iter() {
        h.raw("<tr>")
            .td(k.as_str())
            .td(&f.value)
            .raw("<td><span class=\"src ")
            .raw(match f.source {
                tugboot_fleet::Source::Observed(_) => "observed",
                tugboot_fleet::Source::Attested => "attested",
                tugboot_fleet::Source::Declared(_) => "declared",
            })
            .raw("\">")
            .text(f.source.as_str())
            .raw("</span></td>")
            .td(&age(now, f.at))
            .raw("</tr>");
    }
    h.raw("</tbody></table></div></section>");

    let versions: Vec<(i64, u64)> = reports
        .iter()
        .rev()
        .filter(|r| r.image_version > 0)
        .map(|r| (r.received_at, r.image_version))
        .collect();
    if !versions.is_empty() {
        let t0 = versions.first().map_or(now, |p| p.0);
        h.raw("<section><h2>Version over time</h2>")
            .html(&chart::steps(
                "Version over time",
                &[("version".to_owned(), versions)],
                t0,
                now,
            ))
            .raw("</section>");
    }

    h.raw("<section><h2>Health history</h2>");
    if reports.is_empty() {
        h.raw("<p class=\"muted\">No reports.</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>Received</th><th>Kind</th><th>Slot</th><th>Version</th><th>Checks</th><th>Verdict</th></tr></thead><tbody>");
        for r in &reports {
            let kind = r
                .outcome
                .as_ref()
                .map_or_else(|| "status".to_owned(), |o| format!("update {}", o.kind));
            let checks = r
                .checks
                .get("checks")
                .and_then(|c| c.as_object())
                .map_or_else(
                    || "—".to_owned(),
                    |o| {
                        let ok = o.values().filter(|v| v["ok"] == true).count();
                        format!("{ok}/{} passed", o.len())
                    },
                );
            let verdict = report_problem(r);
            h.raw("<tr>")
                .td(&format!(
                    "{} ({})",
                    utc(r.received_at),
                    age(now, r.received_at)
                ))
                .td(&kind)
                .td(r.checks["slot"].as_str().unwrap_or("—"))
                .td(&r.image_version.to_string())
                .td(&checks)
                .raw("<td><span class=\"badge ")
                .raw(if verdict.is_some() { "bad" } else { "good" })
                .raw("\">")
                .text(verdict.as_deref().unwrap_or("healthy"))
                .raw("</span></td></tr>");
        }
        h.raw("</tbody></table></div>");
    }
    h.raw("</section>");

    // Boots this server saw (the store keeps the last one: "Last netbooted" above).
    let mac = m.mac.map(|x| x.to_string());
    let href = format!("/console/machines/{}", m.id);
    let (boots, events): (Vec<_>, Vec<_>) = {
        let log = c.log();
        let boots: Vec<_> = log
            .boots()
            .filter(|b| b.machine == Some(m.id.0) || Some(&b.mac) == mac.as_ref())
            .cloned()
            .collect();
        let events: Vec<_> = log
            .recent()
            .filter(|r| Some(&r.who) == mac.as_ref() || r.href.as_deref() == Some(href.as_str()))
            .take(20)
            .cloned()
            .collect();
        (boots, events)
    };
    h.raw("<section><h2>Boots</h2>");
    if boots.is_empty() {
        h.raw("<p class=\"muted\">No netboot measured since this server started.</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>When</th><th>Image</th><th>DHCP to boot plan</th></tr></thead><tbody>");
        for b in boots.iter().rev() {
            h.raw("<tr>")
                .td(&utc(b.at_ms / 1000))
                .td(&b.image)
                .td(&format!("{:.1} s", b.millis as f64 / 1000.0))
                .raw("</tr>");
        }
        h.raw("</tbody></table></div>");
    }
    h.raw("</section><section><h2>Recent events</h2>");
    if events.is_empty() {
        h.raw("<p class=\"muted\">None since this server started.</p>");
    } else {
        h.raw("<ul class=\"events\">");
        for r in &events {
            h.raw("<li><span class=\"badge ")
                .raw(r.tone)
                .raw("\">")
                .text(r.kind)
                .raw("</span> ")
                .text(&utc(r.at_ms / 1000))
                .raw(" · ")
                .text(&r.text)
                .raw("</li>");
        }
        h.raw("</ul>");
    }
    h.raw("</section><section><h2>Certificates</h2>");
    if certs.is_empty() {
        h.raw("<p class=\"muted\">Not enrolled.</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>Serial</th><th>Issued</th><th>Expires</th><th>Revoked</th></tr></thead><tbody>");
        for cert in &certs {
            h.raw("<tr>")
                .td(&cert.serial)
                .td(&utc(cert.issued_at))
                .td(&utc(cert.not_after))
                .td(&cert.revoked_at.map_or_else(|| "—".into(), utc))
                .raw("</tr>");
        }
        h.raw("</tbody></table></div>");
    }
    h.raw("</section>");
    render(&m.display_name(), Nav::Machines, &auth.csrf, &h)
}
