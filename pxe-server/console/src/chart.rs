//! Small inline SVG charts, sans-IO: numbers in, markup out. No script draws them; they scale
//! with the page (`viewBox`, width 100%) and take their colours from the stylesheet (classes
//! `c0`…`c5`, `good`, `bad`, ...), so the Content-Security-Policy needs no inline styles.
//! Labels are escaped like any other value.

use std::fmt::Write as _;

use crate::html::Html;

/// Series colours (stylesheet classes), cycled.
const COLOURS: [&str; 6] = ["c0", "c1", "c2", "c3", "c4", "c5"];

/// Longest label drawn (longer ones are cut with `…`).
const LABEL_CHARS: usize = 26;

fn cut(label: &str) -> String {
    if label.chars().count() <= LABEL_CHARS {
        label.to_owned()
    } else {
        let mut s: String = label.chars().take(LABEL_CHARS - 1).collect();
        s.push('…');
        s
    }
}

fn svg_open(h: &mut Html, class: &'static str, width: u32, height: u32, label: &str) {
    h.raw("<svg class=\"chart ")
        .raw(class)
        .raw("\" viewBox=\"0 0 ")
        .show(width)
        .raw(" ")
        .show(height)
        .raw("\" role=\"img\" aria-label=\"")
        .text(label)
        .raw("\"><title>")
        .text(label)
        .raw("</title>");
}

fn num(v: f64) -> String {
    let mut s = String::new();
    let _ = write!(s, "{v:.1}");
    s
}

/// Horizontal bars, one per `(label, value)`, longest first as given.
#[must_use]
pub fn bars(label: &str, items: &[(String, u64)]) -> Html {
    let mut h = Html::new();
    if items.is_empty() {
        h.raw("<p class=\"muted\">Nothing yet.</p>");
        return h;
    }
    let row = 22_u32;
    let height = u32::try_from(items.len())
        .unwrap_or(u32::MAX)
        .saturating_mul(row)
        + 4;
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64;
    svg_open(&mut h, "bars", 600, height, label);
    for (i, (name, value)) in items.iter().enumerate() {
        let y = 2.0 + i as f64 * f64::from(row);
        let w = 330.0 * (*value as f64) / max;
        h.raw("<text class=\"lbl\" x=\"190\" y=\"")
            .text(&num(y + 15.0))
            .raw("\" text-anchor=\"end\">")
            .text(&cut(name))
            .raw("</text><rect class=\"")
            .raw(COLOURS[i % COLOURS.len()])
            .raw("\" x=\"198\" y=\"")
            .text(&num(y + 3.0))
            .raw("\" width=\"")
            .text(&num(w.max(1.0)))
            .raw("\" height=\"16\" rx=\"2\"></rect><text class=\"val\" x=\"")
            .text(&num(204.0 + w))
            .raw("\" y=\"")
            .text(&num(y + 15.0))
            .raw("\">")
            .show(value)
            .raw("</text>");
    }
    h.raw("</svg>");
    h
}

/// Cumulative step lines over time: each series is its points `(unix time, value)` in time
/// order; the x axis runs from `t0` to `t1`.
#[must_use]
pub fn steps(label: &str, series: &[(String, Vec<(i64, u64)>)], t0: i64, t1: i64) -> Html {
    let mut h = Html::new();
    if series.iter().all(|(_, p)| p.is_empty()) {
        h.raw("<p class=\"muted\">Nothing yet.</p>");
        return h;
    }
    let (left, right, top, bottom) = (44.0, 590.0, 10.0, 176.0);
    let span = (t1 - t0).max(1) as f64;
    let max = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let x = |t: i64| left + (right - left) * ((t - t0) as f64 / span).clamp(0.0, 1.0);
    let y = |v: u64| bottom - (bottom - top) * (v as f64 / max);
    svg_open(&mut h, "steps", 600, 200, label);
    h.raw("<line class=\"axis\" x1=\"44\" y1=\"176\" x2=\"590\" y2=\"176\"></line>")
        .raw("<line class=\"axis\" x1=\"44\" y1=\"10\" x2=\"44\" y2=\"176\"></line>")
        .raw("<text class=\"val\" x=\"40\" y=\"16\" text-anchor=\"end\">")
        .text(num(max).trim_end_matches(".0"))
        .raw("</text><text class=\"val\" x=\"40\" y=\"176\" text-anchor=\"end\">0</text>")
        .raw("<text class=\"val\" x=\"44\" y=\"194\">")
        .text(&crate::html::utc(t0)[..16])
        .raw("</text><text class=\"val\" x=\"590\" y=\"194\" text-anchor=\"end\">")
        .text(&crate::html::utc(t1)[..16])
        .raw("</text>");
    for (i, (_, points)) in series.iter().enumerate() {
        if points.is_empty() {
            continue;
        }
        let mut d = format!("M{} {}", num(x(points[0].0)), num(y(0)));
        for (t, v) in points {
            let _ = write!(d, " H{} V{}", num(x(*t)), num(y(*v)));
        }
        let _ = write!(d, " H{}", num(x(t1)));
        h.raw("<path class=\"line ")
            .raw(COLOURS[i % COLOURS.len()])
            .raw("\" d=\"")
            .text(&d)
            .raw("\"></path>");
    }
    h.raw("</svg><ul class=\"legend\">");
    for (i, (name, points)) in series.iter().enumerate() {
        h.raw("<li><span class=\"swatch ")
            .raw(COLOURS[i % COLOURS.len()])
            .raw("\"></span>")
            .text(name)
            .raw(" (")
            .show(points.last().map_or(0, |p| p.1))
            .raw(")</li>");
    }
    h.raw("</ul>");
    h
}

/// One stacked bar: segments `(class, value, label)` out of `total`.
#[must_use]
pub fn stack(label: &str, segments: &[(&'static str, u64, &str)], total: u64) -> Html {
    let mut h = Html::new();
    svg_open(&mut h, "stack", 300, 14, label);
    h.raw("<rect class=\"track\" x=\"0\" y=\"0\" width=\"300\" height=\"14\" rx=\"3\"></rect>");
    let total = total.max(1) as f64;
    let mut x = 0.0;
    for (class, value, name) in segments {
        if *value == 0 {
            continue;
        }
        let w = 300.0 * (*value as f64) / total;
        h.raw("<rect class=\"")
            .raw(class)
            .raw("\" x=\"")
            .text(&num(x))
            .raw("\" y=\"0\" width=\"")
            .text(&num(w))
            .raw("\" height=\"14\"><title>")
            .text(name)
            .raw(": ")
            .show(value)
            .raw("</title></rect>");
        x += w;
    }
    h.raw("</svg>");
    h
}

/// A failure rate against its threshold (both per mille): a bar with a marker at the
/// threshold; the bar is `bad` once the rate is above it.
#[must_use]
pub fn gauge(label: &str, rate_permille: Option<u64>, threshold_permille: u16) -> Html {
    let mut h = Html::new();
    let threshold = u64::from(threshold_permille);
    let scale = (threshold * 2)
        .max(rate_permille.unwrap_or(0))
        .clamp(10, 1000) as f64;
    svg_open(&mut h, "gauge", 300, 24, label);
    h.raw("<rect class=\"track\" x=\"0\" y=\"4\" width=\"300\" height=\"12\" rx=\"3\"></rect>");
    if let Some(rate) = rate_permille {
        let class = if rate > threshold { "bad" } else { "good" };
        h.raw("<rect class=\"")
            .raw(class)
            .raw("\" x=\"0\" y=\"4\" width=\"")
            .text(&num((300.0 * rate as f64 / scale).min(300.0)))
            .raw("\" height=\"12\" rx=\"3\"></rect>");
    }
    let tx = (300.0 * threshold as f64 / scale).min(299.0);
    h.raw("<line class=\"mark\" x1=\"")
        .text(&num(tx))
        .raw("\" y1=\"0\" x2=\"")
        .text(&num(tx))
        .raw("\" y2=\"20\"></line></svg>");
    h
}

/// Vertical bars in time order, e.g. netboot durations: `(label, milliseconds)`.
#[must_use]
pub fn columns(label: &str, items: &[(String, i64)]) -> Html {
    let mut h = Html::new();
    if items.is_empty() {
        h.raw("<p class=\"muted\">No netboot measured yet.</p>");
        return h;
    }
    let max = items.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64;
    let n = items.len() as f64;
    let slot = 546.0 / n;
    svg_open(&mut h, "columns", 600, 180, label);
    h.raw("<line class=\"axis\" x1=\"44\" y1=\"156\" x2=\"590\" y2=\"156\"></line>")
        .raw("<text class=\"val\" x=\"40\" y=\"16\" text-anchor=\"end\">")
        .text(&format!("{:.1} s", max / 1000.0))
        .raw("</text><text class=\"val\" x=\"40\" y=\"156\" text-anchor=\"end\">0</text>");
    for (i, (name, v)) in items.iter().enumerate() {
        let bh = 140.0 * (*v as f64) / max;
        h.raw("<rect class=\"c0\" x=\"")
            .text(&num(44.0 + i as f64 * slot + slot * 0.15))
            .raw("\" y=\"")
            .text(&num(156.0 - bh))
            .raw("\" width=\"")
            .text(&num((slot * 0.7).max(1.0)))
            .raw("\" height=\"")
            .text(&num(bh.max(1.0)))
            .raw("\"><title>")
            .text(name)
            .raw(": ")
            .text(&format!("{:.1} s", *v as f64 / 1000.0))
            .raw("</title></rect>");
    }
    h.raw("<text class=\"val\" x=\"44\" y=\"174\">oldest</text>")
        .raw("<text class=\"val\" x=\"590\" y=\"174\" text-anchor=\"end\">newest</text></svg>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_text_and_sizes_follow_values() {
        let b = bars(
            "Versions",
            &[("<script>x</script>".into(), 10), ("os@2".into(), 5)],
        );
        let s = b.as_str();
        assert!(s.contains("&lt;script&gt;x&lt;/script&gt;"), "{s}");
        assert!(!s.contains("<script>"));
        assert!(s.contains("width=\"330.0\""), "{s}");
        assert!(s.contains("width=\"165.0\""), "{s}");
        assert!(bars("x", &[]).as_str().contains("Nothing yet"));
    }

    #[test]
    fn steps_climb_at_their_times() {
        let c = steps(
            "Adoption",
            &[("os@2".into(), vec![(100, 1), (200, 3)])],
            100,
            300,
        );
        let s = c.as_str();
        assert!(
            s.contains("d=\"M44.0 176.0 H44.0 V120.7 H317.0 V10.0 H590.0\""),
            "{s}"
        );
        assert!(s.contains("os@2 (3)"));
    }

    #[test]
    fn gauge_turns_bad_above_the_threshold() {
        assert!(gauge("r", Some(80), 50).as_str().contains("class=\"bad\""));
        assert!(gauge("r", Some(20), 50).as_str().contains("class=\"good\""));
        assert!(!gauge("r", None, 50).as_str().contains("class=\"good\""));
        let st = stack("p", &[("good", 1, "committed"), ("bad", 1, "failed")], 4);
        assert!(st.as_str().contains("width=\"75.0\""));
    }
}
