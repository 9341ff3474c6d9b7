//! `/console/`: the fleet at a glance — counts by state, version and board, the machines that
//! need attention (failing first, then silent), rollouts in progress, versions over time and
//! recent netboot durations.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use tugboot_fleet::facts::keys;
use tugboot_fleet::rollout::RolloutState;
use tugboot_store::Store;

use super::{cumulative, render, standing, standing_badge, state_badge, store_error};
use crate::auth::Authed;
use crate::chart;
use crate::health::Standing;
use crate::html::{Html, Nav, age, query};
use crate::state::Console;

/// Machines listed under "needs attention" at most.
const ATTENTION: usize = 20;
/// Versions drawn in the adoption chart.
const SERIES: usize = 5;

/// `GET /console/`.
pub async fn show(State(c): State<Arc<Console>>, Extension(auth): Extension<Authed>) -> Response {
    let now = c.api.unix_now();
    let rollouts = match c.api.store().list_rollouts().await {
        Ok(r) => r,
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let summaries = c.api.rollout_summaries().await;
    let fleet = c.api.live().snapshot();

    let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut by_version: HashMap<&str, u64> = HashMap::new();
    let mut by_board: HashMap<&str, u64> = HashMap::new();
    let mut adopted_at: HashMap<&str, Vec<i64>> = HashMap::new();
    let (mut failing, mut silent, mut healthy) = (0_u64, 0_u64, 0_u64);
    let mut attention = Vec::new();
    for m in fleet.registry.iter() {
        *by_state.entry(m.state.as_str()).or_default() += 1;
        match m.facts.get(keys::IMAGE) {
            Some(f) => {
                *by_version.entry(f.value.as_str()).or_default() += 1;
                adopted_at.entry(f.value.as_str()).or_default().push(f.at);
            }
            None => *by_version.entry("(not reported)").or_default() += 1,
        }
        *by_board
            .entry(m.board().unwrap_or("(unknown)"))
            .or_default() += 1;
        let s = standing(&c, m, now);
        match s {
            Standing::Failing(_) => failing += 1,
            Standing::Silent(_) => silent += 1,
            Standing::Healthy => healthy += 1,
            _ => {}
        }
        if s.rank() < 2 {
            attention.push((s, m));
        }
    }
    attention.sort_by(|a, b| a.0.rank().cmp(&b.0.rank()).then(a.1.id.cmp(&b.1.id)));
    let loading = c.health().loaded_at.is_none();

    let mut h = Html::new();
    h.raw("<h1>Fleet</h1><div class=\"cards\">");
    let card = |h: &mut Html, label: &str, value: u64, tone: &'static str, href: &str| {
        h.raw("<a class=\"card ")
            .raw(tone)
            .raw("\" href=\"")
            .text(href)
            .raw("\"><span class=\"n\">")
            .show(value)
            .raw("</span><span class=\"l\">")
            .text(label)
            .raw("</span></a>");
    };
    card(
        &mut h,
        "machines",
        u64::try_from(fleet.registry.len()).unwrap_or(u64::MAX),
        "",
        "/console/machines",
    );
    card(
        &mut h,
        "failing",
        failing,
        if failing > 0 { "bad" } else { "" },
        &format!("/console/machines{}", query(&[("health", "failing")])),
    );
    card(
        &mut h,
        "silent",
        silent,
        if silent > 0 { "warn" } else { "" },
        &format!("/console/machines{}", query(&[("health", "silent")])),
    );
    card(
        &mut h,
        "healthy",
        healthy,
        "",
        &format!("/console/machines{}", query(&[("health", "healthy")])),
    );
    for (state, n) in &by_state {
        card(
            &mut h,
            state,
            *n,
            "",
            &format!("/console/machines{}", query(&[("state", state)])),
        );
    }
    card(
        &mut h,
        "images served",
        u64::try_from(fleet.catalogue.len()).unwrap_or(u64::MAX),
        "",
        "/console/images",
    );
    h.raw("</div>");
    if loading {
        h.raw("<p class=\"flash\">Reading the machines' latest reports; failing and silent counts follow in a moment.</p>");
    }

    h.raw("<section><h2>Needs attention</h2>");
    if attention.is_empty() {
        h.raw("<p class=\"muted\">Nothing is failing or silent.</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>Machine</th><th>State</th><th>Health</th><th>Version</th><th>Last seen</th></tr></thead><tbody>");
        for (s, m) in attention.iter().take(ATTENTION) {
            h.raw("<tr><td>")
                .link(&format!("/console/machines/{}", m.id), &m.display_name())
                .raw("</td><td>");
            state_badge(&mut h, m.state);
            h.raw("</td><td>");
            standing_badge(&mut h, s);
            h.raw("</td>")
                .td(m.facts.value(keys::IMAGE).unwrap_or("—"))
                .td(&age(now, m.last_seen))
                .raw("</tr>");
        }
        h.raw("</tbody></table></div>");
        if attention.len() > ATTENTION {
            h.raw("<p>")
                .show(attention.len() - ATTENTION)
                .raw(" more in ");
            h.link("/console/machines?health=failing", "failing")
                .raw(" and ")
                .link("/console/machines?health=silent", "silent")
                .raw(".</p>");
        }
    }
    h.raw("</section>");

    let active: Vec<_> = rollouts
        .iter()
        .filter(|r| {
            matches!(
                r.state,
                RolloutState::Running | RolloutState::Paused | RolloutState::Pending
            )
        })
        .collect();
    h.raw("<section><h2>Rollouts in progress</h2>");
    if active.is_empty() {
        h.raw("<p class=\"muted\">None. ")
            .link("/console/rollouts", "Start one")
            .raw(".</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>Rollout</th><th>Image</th><th>State</th><th>Progress</th></tr></thead><tbody>");
        for r in active {
            let s = summaries.get(&r.id.0).copied().unwrap_or_default();
            h.raw("<tr><td>")
                .link(
                    &format!("/console/rollouts/{}", r.id),
                    &format!("#{}", r.id),
                )
                .raw("</td>")
                .td(&format!("{}@{}", r.image_name, r.image_version))
                .raw("<td><span class=\"badge ")
                .raw(super::rollouts::state_tone(r.state))
                .raw("\">")
                .text(r.state.as_str())
                .raw("</span></td><td class=\"progress\">")
                .html(&super::rollouts::progress(&s))
                .raw("</td></tr>");
        }
        h.raw("</tbody></table></div>");
    }
    h.raw("</section>");

    let mut versions: Vec<(String, u64)> = by_version
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    versions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut boards: Vec<(String, u64)> = by_board
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    boards.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    h.raw("<div class=\"grid2\"><section><h2>Versions</h2><p class=\"hint\">The image each machine reports it runs (attested).</p>")
        .html(&chart::bars("Machines by version", &versions))
        .raw("</section><section><h2>Boards</h2>")
        .html(&chart::bars("Machines by board", &boards))
        .raw("</section></div>");

    let mut top: Vec<(&str, Vec<i64>)> = adopted_at.into_iter().collect();
    top.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
    top.truncate(SERIES);
    let t0 = top
        .iter()
        .flat_map(|(_, t)| t.iter().copied())
        .min()
        .unwrap_or(now);
    let series: Vec<(String, Vec<(i64, u64)>)> = top
        .into_iter()
        .map(|(v, times)| (v.to_owned(), cumulative(times, t0, now, 120)))
        .collect();
    let boots: Vec<(String, i64)> = {
        let log = c.log();
        let all: Vec<_> = log.boots().collect();
        all.iter()
            .skip(all.len().saturating_sub(30))
            .map(|b| (format!("{} {}", b.mac, b.image), b.millis))
            .collect()
    };
    h.raw("<div class=\"grid2\"><section><h2>Versions over time</h2><p class=\"hint\">When the machines got the version they run now.</p>")
        .html(&chart::steps("Versions over time", &series, t0, now))
        .raw("</section><section><h2>Netboot durations</h2><p class=\"hint\">First DHCP packet to boot plan, the last ")
        .show(boots.len())
        .raw(" netboots this server saw.</p>")
        .html(&chart::columns("Netboot durations", &boots))
        .raw("</section></div>");
    render("Fleet", Nav::Overview, &auth.csrf, &h)
}
