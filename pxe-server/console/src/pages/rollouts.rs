//! `/console/rollouts`: rollouts with their progress and failure rate against the threshold,
//! and a form to start one (confirmed on a second page that shows who it would reach);
//! `/console/rollouts/{id}`: stages, devices, commits over time, and pause / resume / abort,
//! each confirmed first. Every change goes through the API's own rollout functions.

use std::collections::HashSet;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Form};
use serde::Deserialize;
use tugboot_api::server::operator::OperatorError;
use tugboot_api::wire::CreateRollout;
use tugboot_fleet::rollout::{
    Command, NewRollout, Rollout, RolloutRecord, RolloutStage, RolloutState, RolloutThresholds,
    StageSummary, members,
};
use tugboot_fleet::{MachineState, Registry, Selector, Trust};
use tugboot_store::{OutcomeKind, RolloutId, Store};

use super::{cumulative, error, render, store_error};
use crate::auth::{Authed, see_other};
use crate::chart;
use crate::html::{Html, Nav, age, utc};
use crate::state::Console;

/// Badge tone of a rollout state.
#[must_use]
pub fn state_tone(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Running => "good",
        RolloutState::Paused => "warn",
        RolloutState::Aborted => "bad",
        RolloutState::Completed | RolloutState::Pending => "muted",
    }
}

/// A stacked bar of a rollout's devices: committed, failed, timed out, pending, not admitted.
#[must_use]
pub fn progress(s: &StageSummary) -> Html {
    let waiting = s.group.saturating_sub(s.admitted);
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let mut h = chart::stack(
        "Devices",
        &[
            ("good", n(s.committed), "committed"),
            ("bad", n(s.failed), "failed"),
            ("warn", n(s.timed_out), "timed out"),
            ("c0", n(s.pending), "pending"),
        ],
        n(s.group),
    );
    h.raw("<span class=\"counts\">")
        .show(s.committed)
        .raw("/")
        .show(s.group)
        .raw(" committed · ")
        .show(s.failures())
        .raw(" failed · ")
        .show(s.pending)
        .raw(" pending · ")
        .show(waiting)
        .raw(" waiting</span>");
    h
}

/// The failure rate (per mille of judged devices), once enough verdicts are in.
fn rate(r: &RolloutRecord, s: &StageSummary) -> Option<u64> {
    let judged = u64::try_from(s.judged()).unwrap_or(u64::MAX);
    if judged == 0 || judged < u64::from(r.thresholds.min_reports) {
        return None;
    }
    Some(u64::try_from(s.failures()).unwrap_or(u64::MAX) * 1000 / judged)
}

fn stages_text(stages: &[RolloutStage]) -> String {
    stages
        .iter()
        .map(|s| format!("{}:{}", s.percent, s.soak_secs))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `10:600, 50:3600, 100:0` (percent:soak seconds; a bare percent soaks 0 s).
pub(crate) fn parse_stages(text: &str) -> Result<Vec<RolloutStage>, String> {
    text.split([',', ' '])
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (pct, soak) = p.trim().split_once(':').unwrap_or((p.trim(), "0"));
            let percent = pct
                .trim_end_matches('%')
                .parse::<u8>()
                .map_err(|_| format!("stage {p:?}: percent must be 1..=100"))?;
            let soak_secs = soak
                .trim_end_matches('s')
                .parse::<u64>()
                .map_err(|_| format!("stage {p:?}: soak must be whole seconds"))?;
            Ok(RolloutStage { percent, soak_secs })
        })
        .collect()
}

/// The fields of the new-rollout form (also carried, hidden, by the confirmation page).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NewForm {
    #[serde(default)]
    image: String,
    #[serde(default)]
    selector: String,
    #[serde(default)]
    stages: String,
    #[serde(default)]
    max_failure_permille: String,
    #[serde(default)]
    min_reports: String,
}

impl NewForm {
    /// The request, checked as the store will check it.
    fn request(&self) -> Result<CreateRollout, String> {
        let (name, version) = self
            .image
            .rsplit_once('@')
            .and_then(|(n, v)| Some((n.to_owned(), v.parse::<u64>().ok()?)))
            .ok_or("choose an image")?;
        let stages = parse_stages(&self.stages)?;
        let max_failure_permille = self
            .max_failure_permille
            .trim()
            .parse::<u16>()
            .map_err(|_| "failure threshold: whole per mille, 0..=1000")?;
        let min_reports = if self.min_reports.trim().is_empty() {
            1
        } else {
            self.min_reports
                .trim()
                .parse::<u32>()
                .map_err(|_| "reports before judging: a whole number")?
        };
        let req = CreateRollout {
            image_name: name,
            image_version: version,
            selector: self.selector.trim().to_owned(),
            stages,
            max_failure_permille,
            min_reports,
        };
        NewRollout {
            image_name: req.image_name.clone(),
            image_version: req.image_version,
            group_selector: req.selector.clone(),
            stages: req.stages.clone(),
            thresholds: RolloutThresholds {
                max_failure_permille: req.max_failure_permille,
                min_reports: req.min_reports,
            },
        }
        .validate()
        .map_err(|e| e.to_string())?;
        Ok(req)
    }
}

async fn new_form(c: &Console, h: &mut Html, f: &NewForm, csrf: &str) -> Result<(), Response> {
    let images = c
        .api
        .store()
        .list_images(None)
        .await
        .map_err(|e| store_error(&e, csrf))?;
    h.raw("<section id=\"new\"><h2>New rollout</h2><form class=\"stack\" method=\"post\" action=\"/console/rollouts/new\">")
        .hidden("csrf", csrf)
        .raw("<label>Image <select name=\"image\" required>");
    for i in images.iter().rev().filter(|i| i.published) {
        let label = format!("{}@{}", i.name, i.version);
        h.raw("<option");
        if label == f.image {
            h.raw(" selected");
        }
        h.raw(">").text(&label).raw("</option>");
    }
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_owned()
        } else {
            v.to_owned()
        }
    };
    h.raw("</select></label><label>Machines (selector) <input name=\"selector\" required value=\"")
        .text(&or(&f.selector, "*"))
        .raw("\"></label><p class=\"hint\"><code>*</code> for every approved machine, or <code>label.site=lab,board=rpi4</code>: declared or attested facts only.</p>")
        .raw("<label>Stages (percent:soak seconds) <input name=\"stages\" required value=\"")
        .text(&or(&f.stages, "10:3600, 50:3600, 100:0"))
        .raw("\"></label><label>Pause above this failure rate (‰) <input name=\"max_failure_permille\" inputmode=\"numeric\" required value=\"")
        .text(&or(&f.max_failure_permille, "50"))
        .raw("\"></label><label>Verdicts before judging <input name=\"min_reports\" inputmode=\"numeric\" value=\"")
        .text(&or(&f.min_reports, "1"))
        .raw("\"></label><button type=\"submit\">Review…</button></form></section>");
    Ok(())
}

/// `GET /console/rollouts`.
pub async fn list(State(c): State<Arc<Console>>, Extension(auth): Extension<Authed>) -> Response {
    let rollouts = match c.api.store().list_rollouts().await {
        Ok(r) => r,
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let summaries = c.api.rollout_summaries().await;
    let now = c.api.unix_now();
    let mut h = Html::new();
    h.raw("<h1>Rollouts</h1>");
    if rollouts.is_empty() {
        h.raw("<p class=\"muted\">No rollout yet.</p>");
    } else {
        h.raw("<div class=\"scroll\"><table class=\"rollouts\"><thead><tr><th>Rollout</th><th>Image</th><th>Machines</th><th>State</th><th>Stage</th><th>Progress</th><th>Failure rate</th><th>Updated</th></tr></thead><tbody>");
        for r in rollouts.iter().rev() {
            let s = summaries.get(&r.id.0).copied().unwrap_or_default();
            h.raw("<tr><td>")
                .link(
                    &format!("/console/rollouts/{}", r.id),
                    &format!("#{}", r.id),
                )
                .raw("</td>")
                .td(&format!("{}@{}", r.image_name, r.image_version))
                .raw("<td><code>")
                .text(&r.group_selector)
                .raw("</code></td><td><span class=\"badge ")
                .raw(state_tone(r.state))
                .raw("\">")
                .text(r.state.as_str())
                .raw("</span></td>")
                .td(&format!("{} of {}", r.current_stage + 1, r.stages.len()))
                .raw("<td class=\"progress\">")
                .html(&progress(&s))
                .raw("</td><td>")
                .text(&rate(r, &s).map_or_else(|| "—".into(), |v| format!("{v} ‰")))
                .raw(" / ")
                .show(r.thresholds.max_failure_permille)
                .raw(" ‰</td>")
                .td(&age(now, r.updated_at))
                .raw("</tr>");
        }
        h.raw("</tbody></table></div>");
    }
    if let Err(resp) = new_form(&c, &mut h, &NewForm::default(), &auth.csrf).await {
        return resp;
    }
    render("Rollouts", Nav::Rollouts, &auth.csrf, &h)
}

/// Approved machines the selector picks (authenticated facts only), as the controller will.
fn reach(registry: &Registry, selector: &Selector) -> (usize, Vec<String>) {
    let picked: Vec<_> = registry
        .iter()
        .filter(|m| m.state == MachineState::Approved)
        .filter(|m| {
            selector.matches(
                &tugboot_fleet::selector::Subject::machine(m, &m.facts),
                Trust::Authenticated,
            )
        })
        .collect();
    let names = picked.iter().take(10).map(|m| m.display_name()).collect();
    (picked.len(), names)
}

/// `POST /console/rollouts/new`: the confirmation page (nothing is created yet).
pub async fn preview(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Form(f): Form<NewForm>,
) -> Response {
    let mut h = Html::new();
    let req = match f.request() {
        Ok(r) => r,
        Err(e) => {
            h.raw("<h1>New rollout</h1><p class=\"flash bad\" role=\"alert\">")
                .text(&e)
                .raw("</p>");
            if let Err(resp) = new_form(&c, &mut h, &f, &auth.csrf).await {
                return resp;
            }
            let mut resp = render("New rollout", Nav::Rollouts, &auth.csrf, &h);
            *resp.status_mut() = StatusCode::BAD_REQUEST;
            return resp;
        }
    };
    let selector = Selector::parse(&req.selector).unwrap_or_else(|_| Selector::all());
    let (n, names) = reach(&c.api.live().snapshot().registry, &selector);
    h.raw("<h1>Start this rollout?</h1><table class=\"kv\">")
        .raw("<tr><th>Image</th>")
        .td(&format!("{}@{}", req.image_name, req.image_version))
        .raw("</tr><tr><th>Machines</th><td><code>")
        .text(&selector.to_string())
        .raw("</code> — ")
        .show(n)
        .raw(" approved machine(s) now");
    if !names.is_empty() {
        h.raw(": ").text(&names.join(", "));
        if n > names.len() {
            h.raw(", …");
        }
    }
    h.raw("</td></tr><tr><th>Stages</th>")
        .td(&stages_text(&req.stages))
        .raw("</tr><tr><th>Pauses above</th>")
        .td(&format!(
            "{} ‰ failures, judged after {} verdict(s)",
            req.max_failure_permille, req.min_reports
        ))
        .raw("</tr></table><form class=\"confirm\" method=\"post\" action=\"/console/rollouts\">")
        .hidden("csrf", &auth.csrf)
        .hidden("image", &f.image)
        .hidden("selector", &f.selector)
        .hidden("stages", &f.stages)
        .hidden("max_failure_permille", &f.max_failure_permille)
        .hidden("min_reports", &f.min_reports)
        .raw("<button type=\"submit\" id=\"confirm\">Start rollout</button> ")
        .link("/console/rollouts", "Cancel")
        .raw("</form>");
    render("Start rollout?", Nav::Rollouts, &auth.csrf, &h)
}

fn operator_error(e: &OperatorError, csrf: &str) -> Response {
    match e {
        OperatorError::BadRequest(m) => error(StatusCode::BAD_REQUEST, m, csrf),
        OperatorError::NotFound(m) => error(StatusCode::NOT_FOUND, m, csrf),
        OperatorError::Conflict(m) => error(StatusCode::CONFLICT, m, csrf),
        OperatorError::Store(e) => store_error(e, csrf),
        other => error(StatusCode::INTERNAL_SERVER_ERROR, &other.to_string(), csrf),
    }
}

/// `POST /console/rollouts`: creates the rollout confirmed on the preview page.
pub async fn create(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Form(f): Form<NewForm>,
) -> Response {
    let req = match f.request() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e, &auth.csrf),
    };
    match c.api.create_rollout(req).await {
        Ok(r) => {
            tracing::info!(rollout = %r.id, "rollout created in the console");
            see_other(&format!("/console/rollouts/{}", r.id))
        }
        Err(e) => operator_error(&e, &auth.csrf),
    }
}

fn command_of(action: &str) -> Option<(Command, &'static str, &'static str)> {
    Some(match action {
        "pause" => (
            Command::Pause,
            "Pause",
            "No further machine is admitted until you resume. Machines already told to update keep going.",
        ),
        "resume" => (
            Command::Resume,
            "Resume",
            "Admitting continues where it stopped; the report timeouts of admitted machines start again.",
        ),
        "abort" => (
            Command::Abort,
            "Abort",
            "The rollout ends for good: machines not yet updated are no longer offered the image. This cannot be undone.",
        ),
        _ => return None,
    })
}

async fn load(c: &Console, id: &str, csrf: &str) -> Result<RolloutRecord, Response> {
    let Ok(id) = id.parse::<i64>() else {
        return Err(error(StatusCode::NOT_FOUND, "No such rollout.", csrf));
    };
    match c.api.store().get_rollout(RolloutId(id)).await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(error(StatusCode::NOT_FOUND, "No such rollout.", csrf)),
        Err(e) => Err(store_error(&e, csrf)),
    }
}

/// `GET /console/rollouts/{id}`.
#[allow(clippy::too_many_lines)] // one page, top to bottom
pub async fn show(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Path(id): Path<String>,
) -> Response {
    let r = match load(&c, &id, &auth.csrf).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let outcomes = match c
        .api
        .store()
        .image_outcomes(&r.image_name, r.image_version)
        .await
    {
        Ok(o) => o,
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let now = c.api.unix_now();
    let s = c
        .api
        .rollout_summaries()
        .await
        .get(&r.id.0)
        .copied()
        .unwrap_or_default();
    let fleet = c.api.live().snapshot();
    let group: HashSet<_> = members::members(&r, &fleet.registry)
        .unwrap_or_default()
        .into_iter()
        .collect();
    let model = Rollout::from_record(&r, c.api.config().report_timeout_secs);

    let mut h = Html::new();
    h.raw("<h1>Rollout #")
        .show(r.id)
        .raw(" <span class=\"badge ")
        .raw(state_tone(r.state))
        .raw("\" id=\"rollout-state\">")
        .text(r.state.as_str())
        .raw("</span></h1><div data-live-rollout=\"")
        .text(&format!("/console/rollouts/{}", r.id))
        .raw("\" class=\"actions\">");
    for action in ["pause", "resume", "abort"] {
        if let Some((cmd, label, _)) = command_of(action)
            && model.command(cmd).is_ok()
        {
            h.raw("<a class=\"button ")
                .raw(if action == "abort" { "danger" } else { "" })
                .raw("\" id=\"")
                .raw(action)
                .raw("\" href=\"")
                .text(&format!("/console/rollouts/{}/{action}", r.id))
                .raw("\">")
                .raw(label)
                .raw("</a> ");
        }
    }
    h.raw("<span class=\"live\" data-live-status></span></div>");
    h.raw("<div class=\"grid2\"><section><h2>What</h2><table class=\"kv\"><tr><th>Image</th><td>")
        .link(
            &format!(
                "/console/images/{}/{}",
                crate::html::segment(&r.image_name),
                r.image_version
            ),
            &format!("{}@{}", r.image_name, r.image_version),
        )
        .raw("</td></tr><tr><th>Machines</th><td><code>")
        .text(&r.group_selector)
        .raw("</code></td></tr><tr><th>Created</th>")
        .td(&format!(
            "{} ({})",
            utc(r.created_at),
            age(now, r.created_at)
        ))
        .raw("</tr><tr><th>Last change</th>")
        .td(&format!(
            "{} ({})",
            utc(r.updated_at),
            age(now, r.updated_at)
        ))
        .raw("</tr></table></section><section><h2>Health</h2><p>Failure rate ")
        .text(&rate(&r, &s).map_or_else(
            || {
                format!(
                    "not judged yet ({} of {} verdicts)",
                    s.judged(),
                    r.thresholds.min_reports
                )
            },
            |v| format!("{v} ‰"),
        ))
        .raw(", pauses above ")
        .show(r.thresholds.max_failure_permille)
        .raw(" ‰.</p>")
        .html(&chart::gauge(
            "Failure rate against the threshold",
            rate(&r, &s),
            r.thresholds.max_failure_permille,
        ))
        .raw("<p class=\"progress\">")
        .html(&progress(&s))
        .raw("</p></section></div>");

    h.raw("<section><h2>Stages</h2><div class=\"scroll\"><table><thead><tr><th>#</th><th>Share</th><th>Soak</th><th></th></tr></thead><tbody>");
    for (i, st) in r.stages.iter().enumerate() {
        let idx = u32::try_from(i).unwrap_or(u32::MAX);
        let where_ = match (r.state, idx.cmp(&r.current_stage)) {
            (RolloutState::Completed, _) | (_, std::cmp::Ordering::Less) => "done",
            (RolloutState::Pending, _) | (_, std::cmp::Ordering::Greater) => "",
            (RolloutState::Paused, std::cmp::Ordering::Equal) => "current (paused)",
            (RolloutState::Aborted, std::cmp::Ordering::Equal) => "aborted here",
            (_, std::cmp::Ordering::Equal) => "current",
        };
        h.raw("<tr>")
            .td(&(i + 1).to_string())
            .td(&format!("{} %", st.percent))
            .td(&format!("{} s", st.soak_secs))
            .td(where_)
            .raw("</tr>");
    }
    h.raw("</tbody></table></div></section>");

    let mut committed = Vec::new();
    let mut failed = Vec::new();
    for v in outcomes.iter().filter(|v| group.contains(&v.device)) {
        match v.kind {
            OutcomeKind::Committed => committed.push(v.at),
            OutcomeKind::RolledBack | OutcomeKind::Failed | OutcomeKind::Rejected => {
                failed.push(v.at);
            }
            _ => {}
        }
    }
    let t0 = r.created_at.min(now);
    let series = vec![
        ("committed".to_owned(), cumulative(committed, t0, now, 120)),
        ("failed".to_owned(), cumulative(failed, t0, now, 120)),
    ];
    h.raw("<section><h2>Machines on ")
        .text(&format!("{}@{}", r.image_name, r.image_version))
        .raw(" over time</h2>")
        .html(&chart::steps("Outcomes over time", &series, t0, now))
        .raw("</section>");
    render(&format!("Rollout #{}", r.id), Nav::Rollouts, &auth.csrf, &h)
}

/// `GET /console/rollouts/{id}/{action}`: asks before pausing, resuming or aborting.
pub async fn confirm(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some((_, label, what)) = command_of(&action) else {
        return error(StatusCode::NOT_FOUND, "Unknown rollout action.", &auth.csrf);
    };
    let r = match load(&c, &id, &auth.csrf).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let mut h = Html::new();
    h.raw("<h1>")
        .raw(label)
        .raw(" rollout #")
        .show(r.id)
        .raw("?</h1><p>")
        .text(&format!(
            "{}@{} to {} — now {}, stage {} of {}.",
            r.image_name,
            r.image_version,
            r.group_selector,
            r.state,
            r.current_stage + 1,
            r.stages.len()
        ))
        .raw("</p><p>")
        .raw(what)
        .raw("</p><form class=\"confirm\" method=\"post\" action=\"")
        .text(&format!("/console/rollouts/{}/{action}", r.id))
        .raw("\">")
        .hidden("csrf", &auth.csrf)
        .raw("<button type=\"submit\" id=\"confirm\" class=\"")
        .raw(if action == "abort" { "danger" } else { "" })
        .raw("\">")
        .raw(label)
        .raw("</button> ")
        .link(&format!("/console/rollouts/{}", r.id), "Cancel")
        .raw("</form>");
    render(&format!("{label} rollout?"), Nav::Rollouts, &auth.csrf, &h)
}

/// `POST /console/rollouts/{id}/{action}`.
pub async fn command(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Path((id, action)): Path<(String, String)>,
) -> Response {
    let Some((cmd, _, _)) = command_of(&action) else {
        return error(StatusCode::NOT_FOUND, "Unknown rollout action.", &auth.csrf);
    };
    let Ok(id) = id.parse::<i64>() else {
        return error(StatusCode::NOT_FOUND, "No such rollout.", &auth.csrf);
    };
    match c.api.command_rollout(RolloutId(id), cmd).await {
        Ok(r) => {
            tracing::info!(rollout = %r.id, action, "rollout command in the console");
            see_other(&format!("/console/rollouts/{}", r.id))
        }
        Err(e) => operator_error(&e, &auth.csrf),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_read_like_the_cli_writes_them() {
        assert_eq!(
            parse_stages("10:600, 50:3600,100").unwrap(),
            [
                RolloutStage {
                    percent: 10,
                    soak_secs: 600
                },
                RolloutStage {
                    percent: 50,
                    soak_secs: 3600
                },
                RolloutStage {
                    percent: 100,
                    soak_secs: 0
                },
            ]
        );
        assert!(parse_stages("10%:60s").is_ok());
        assert!(parse_stages("ten").is_err());
        assert!(parse_stages("300:0").is_err());
    }

    #[test]
    fn the_form_is_checked_before_the_confirmation() {
        let mut f = NewForm {
            image: "os@3".into(),
            selector: "label.site=lab".into(),
            stages: "50:0, 100:0".into(),
            max_failure_permille: "50".into(),
            min_reports: String::new(),
        };
        let r = f.request().unwrap();
        assert_eq!(
            (r.image_name.as_str(), r.image_version, r.min_reports),
            ("os", 3, 1)
        );
        f.stages = "100:0, 50:0".into();
        assert!(f.request().unwrap_err().contains("stages"));
        f.stages = "100".into();
        f.selector = "site".into();
        assert!(f.request().unwrap_err().contains("selector"));
        f.selector = "*".into();
        f.max_failure_permille = "2000".into();
        assert!(f.request().is_err());
        f.image = "noversion".into();
        assert!(f.request().is_err());
    }
}
