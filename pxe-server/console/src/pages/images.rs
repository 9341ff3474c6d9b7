//! `/console/images`: the catalogue — each image with its signatures against the trust
//! root's threshold, whether this server serves it, and which machines run it;
//! `/console/images/{name}/{version}`: one image's manifest.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use tugboot_firmware::{KeyId, Manifest, Signed};
use tugboot_fleet::ImageRef;
use tugboot_fleet::facts::keys;
use tugboot_store::{Image, Store};

use super::{error, render, store_error};
use crate::auth::Authed;
use crate::html::{Html, Nav, segment, utc};
use crate::state::Console;

/// Machines listed on an image's page at most.
const MACHINES: usize = 200;

struct Signatures {
    /// Signatures by keys of the current root.
    by_root: usize,
    /// All signatures.
    total: usize,
    threshold: u32,
    keyids: Vec<(String, bool)>,
}

fn signatures(c: &Console, signed: &Signed<Manifest>) -> Signatures {
    let root = c.api.trusted_root().root();
    let usable: Vec<KeyId> = root.usable_keys().map(|k| k.key_id()).collect();
    let keyids: Vec<(String, bool)> = signed
        .signatures
        .iter()
        .map(|s| (s.keyid.to_string(), usable.contains(&s.keyid)))
        .collect();
    Signatures {
        by_root: keyids.iter().filter(|(_, ok)| *ok).count(),
        total: keyids.len(),
        threshold: root.threshold,
        keyids,
    }
}

fn serving(c: &Console, i: &Image) -> bool {
    c.api
        .live()
        .snapshot()
        .catalogue
        .image(&ImageRef::Version {
            name: i.name.clone(),
            version: i.version,
        })
        .is_some()
}

fn sig_cell(h: &mut Html, s: &Signatures) {
    let ok = u32::try_from(s.by_root).unwrap_or(u32::MAX) >= s.threshold;
    h.raw("<span class=\"badge ")
        .raw(if ok { "good" } else { "bad" })
        .raw("\">")
        .show(s.by_root)
        .raw(" of ")
        .show(s.threshold)
        .raw(" needed</span>");
    if s.total > s.by_root {
        h.raw(" <span class=\"why\">+")
            .show(s.total - s.by_root)
            .raw(" by unknown keys</span>");
    }
}

/// `GET /console/images`.
pub async fn list(State(c): State<Arc<Console>>, Extension(auth): Extension<Authed>) -> Response {
    let images = match c.api.store().list_images(None).await {
        Ok(i) => i,
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let fleet = c.api.live().snapshot();
    let mut running: HashMap<&str, usize> = HashMap::new();
    let mut netbooted: HashMap<&str, usize> = HashMap::new();
    for m in fleet.registry.iter() {
        if let Some(v) = m.facts.value(keys::IMAGE) {
            *running.entry(v).or_default() += 1;
        }
        if let Some(v) = &m.last_booted_image {
            *netbooted.entry(v.as_str()).or_default() += 1;
        }
    }
    let mut h = Html::new();
    h.raw("<h1>Images</h1><p class=\"hint\">The catalogue as stored. <em>Served</em>: verified against this server's trust root with every artifact present here. Signatures count keys of the current root against its threshold.</p>");
    if images.is_empty() {
        h.raw("<p class=\"muted\">No image published yet (<code>tugboot images push</code>).</p>");
    } else {
        h.raw("<div class=\"scroll\"><table><thead><tr><th>Image</th><th>Published</th><th>Served</th><th>Boards</th><th>Signatures</th><th>Running</th><th>Netbooted</th><th>Created</th></tr></thead><tbody>");
        for i in images.iter().rev() {
            let label = format!("{}@{}", i.name, i.version);
            let signed = Signed::<Manifest>::from_bytes(&i.manifest).ok();
            h.raw("<tr><td>")
                .link(
                    &format!("/console/images/{}/{}", segment(&i.name), i.version),
                    &label,
                )
                .raw("</td>")
                .td(if i.published { "yes" } else { "yanked" })
                .td(if serving(&c, i) { "yes" } else { "no" })
                .td(&signed
                    .as_ref()
                    .map_or_else(|| "?".into(), |s| s.value().boards.join(", ")))
                .raw("<td>");
            match &signed {
                Some(s) => sig_cell(&mut h, &signatures(&c, s)),
                None => {
                    h.raw("<span class=\"badge bad\">manifest unreadable</span>");
                }
            }
            h.raw("</td>")
                .td(&running
                    .get(label.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string())
                .td(&netbooted
                    .get(label.as_str())
                    .copied()
                    .unwrap_or(0)
                    .to_string())
                .td(&utc(i.created_at))
                .raw("</tr>");
        }
        h.raw("</tbody></table></div>");
    }
    render("Images", Nav::Images, &auth.csrf, &h)
}

/// `GET /console/images/{name}/{version}`.
pub async fn show(
    State(c): State<Arc<Console>>,
    Extension(auth): Extension<Authed>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    let Ok(version) = version.parse::<u64>() else {
        return error(StatusCode::NOT_FOUND, "No such image.", &auth.csrf);
    };
    let i = match c.api.store().get_image(&name, version).await {
        Ok(Some(i)) => i,
        Ok(None) => return error(StatusCode::NOT_FOUND, "No such image.", &auth.csrf),
        Err(e) => return store_error(&e, &auth.csrf),
    };
    let Ok(signed) = Signed::<Manifest>::from_bytes(&i.manifest) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The stored manifest does not decode.",
            &auth.csrf,
        );
    };
    let m = signed.value();
    let sigs = signatures(&c, &signed);
    let label = format!("{name}@{version}");
    let mut h = Html::new();
    h.raw("<h1>")
        .text(&label)
        .raw("</h1><div class=\"grid2\"><section><h2>Manifest</h2><table class=\"kv\">");
    let row = |h: &mut Html, k: &'static str, v: &str| {
        h.raw("<tr><th>").raw(k).raw("</th>").td(v).raw("</tr>");
    };
    row(
        &mut h,
        "Published",
        if i.published { "yes" } else { "yanked" },
    );
    row(
        &mut h,
        "Served here",
        if serving(&c, &i) { "yes" } else { "no" },
    );
    row(&mut h, "Boards", &m.boards.join(", "));
    row(&mut h, "Created", &m.created.to_string());
    row(&mut h, "Expires", &m.expires.to_string());
    row(
        &mut h,
        "Minimum version",
        &m.min_version.map_or_else(|| "—".into(), |v| v.to_string()),
    );
    row(&mut h, "Manifest SHA-256", &i.manifest_digest);
    for (k, v) in &m.labels {
        h.raw("<tr><th>label ")
            .text(k)
            .raw("</th>")
            .td(v)
            .raw("</tr>");
    }
    h.raw("</table></section><section><h2>Signatures</h2><p>");
    sig_cell(&mut h, &sigs);
    h.raw("</p><ul class=\"mono\">");
    for (k, ok) in &sigs.keyids {
        h.raw("<li>")
            .text(k)
            .raw(if *ok {
                " <span class=\"badge good\">root key</span>"
            } else {
                " <span class=\"badge warn\">not in the root</span>"
            })
            .raw("</li>");
    }
    h.raw("</ul></section></div><section><h2>Artifacts</h2><div class=\"scroll\"><table><thead><tr><th>Role</th><th>Name</th><th>Size</th><th>SHA-256</th></tr></thead><tbody>");
    for a in &m.artifacts {
        h.raw("<tr>")
            .td(a.role.as_str())
            .td(&a.name)
            .td(&a.size.to_string())
            .raw("<td class=\"mono\">")
            .text(&a.sha256.to_hex())
            .raw("</td></tr>");
    }
    h.raw("</tbody></table></div></section>");
    let fleet = c.api.live().snapshot();
    let machines: Vec<_> = fleet
        .registry
        .iter()
        .filter(|x| {
            x.facts.value(keys::IMAGE) == Some(label.as_str())
                || x.last_booted_image.as_deref() == Some(label.as_str())
        })
        .collect();
    h.raw("<section><h2>Machines running it</h2><p>")
        .show(machines.len())
        .raw(" (reported running it, or netbooted it last).</p><ul class=\"inline\">");
    for x in machines.iter().take(MACHINES) {
        h.raw("<li>")
            .link(&format!("/console/machines/{}", x.id), &x.display_name())
            .raw("</li>");
    }
    h.raw("</ul></section>");
    render(&label, Nav::Images, &auth.csrf, &h)
}
