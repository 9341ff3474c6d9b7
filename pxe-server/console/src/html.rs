//! HTML built so that nothing from the fleet can become markup.
//!
//! [`Html`] takes markup only as `&'static str` (literals in this crate) and every other value
//! through [`Html::text`], which escapes `& < > " '`: a label value, a host name or an image
//! name renders as text wherever it lands (element content or a quoted attribute). URLs built
//! from values percent-encode them first ([`segment`], [`query`]).

use std::fmt::Display;

/// A page or fragment under construction (see the module documentation).
#[derive(Debug, Default, Clone)]
pub struct Html {
    buf: String,
}

/// Appends `s` to `out`, escaped for element content and quoted attribute values.
pub fn escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// `s` escaped (see [`escape_into`]).
#[must_use]
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}

/// `s` as one URL path segment: everything but unreserved characters percent-encoded (so a
/// `/`, `?`, `#` or `..` in a name stays inside its segment).
#[must_use]
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~') {
            out.push(char::from(b));
        } else if b == b'.' && s != "." && s != ".." {
            out.push('.');
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from pairs (values percent-encoded; empty values left out).
#[must_use]
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{}={}", segment(k), segment(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

impl Html {
    /// Empty.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Markup written in this crate.
    pub fn raw(&mut self, markup: &'static str) -> &mut Self {
        self.buf.push_str(markup);
        self
    }

    /// A value, escaped.
    pub fn text(&mut self, value: &str) -> &mut Self {
        escape_into(&mut self.buf, value);
        self
    }

    /// A displayable value (numbers, ids), escaped like any other.
    pub fn show(&mut self, value: impl Display) -> &mut Self {
        let s = value.to_string();
        self.text(&s)
    }

    /// Another fragment, already safe.
    pub fn html(&mut self, other: &Html) -> &mut Self {
        self.buf.push_str(&other.buf);
        self
    }

    /// `<a href="{href}">{text}</a>`, both escaped (build `href` with [`segment`]/[`query`]).
    pub fn link(&mut self, href: &str, text: &str) -> &mut Self {
        self.raw("<a href=\"")
            .text(href)
            .raw("\">")
            .text(text)
            .raw("</a>")
    }

    /// `<td>{text}</td>`.
    pub fn td(&mut self, text: &str) -> &mut Self {
        self.raw("<td>").text(text).raw("</td>")
    }

    /// A hidden form field.
    pub fn hidden(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.raw("<input type=\"hidden\" name=\"")
            .raw(name)
            .raw("\" value=\"")
            .text(value)
            .raw("\">")
    }

    /// The markup.
    #[must_use]
    pub fn into_string(self) -> String {
        self.buf
    }

    /// The markup so far.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.buf
    }
}

/// Which navigation entry is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    /// The fleet overview.
    Overview,
    /// Machines.
    Machines,
    /// Images.
    Images,
    /// Rollouts.
    Rollouts,
    /// Live events.
    Events,
    /// Nothing (login).
    None,
}

const NAV: [(Nav, &str, &str); 5] = [
    (Nav::Overview, "/console/", "Overview"),
    (Nav::Machines, "/console/machines", "Machines"),
    (Nav::Images, "/console/images", "Images"),
    (Nav::Rollouts, "/console/rollouts", "Rollouts"),
    (Nav::Events, "/console/events", "Events"),
];

/// A whole page: head (viewport for phones, the embedded stylesheet and script), the
/// navigation with the logout form (`csrf` is the session's token; `None` on the login page),
/// then `body`.
#[must_use]
pub fn page(title: &str, nav: Nav, csrf: Option<&str>, body: &Html) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .raw("<title>")
        .text(title)
        .raw(" · tugboot</title>")
        .raw("<link rel=\"stylesheet\" href=\"/console/assets/console.css\">")
        .raw("<script src=\"/console/assets/console.js\" defer></script>")
        .raw(
            "</head><body><header class=\"top\"><a class=\"brand\" href=\"/console/\">tugboot</a>",
        );
    if let Some(csrf) = csrf {
        h.raw("<nav>");
        for (which, href, label) in NAV {
            h.raw("<a href=\"").text(href).raw("\"");
            if which == nav {
                h.raw(" aria-current=\"page\"");
            }
            h.raw(">").text(label).raw("</a>");
        }
        h.raw("</nav><form class=\"logout\" method=\"post\" action=\"/console/logout\">")
            .hidden("csrf", csrf)
            .raw("<button type=\"submit\">Log out</button></form>");
    }
    h.raw("</header><main>")
        .html(body)
        .raw("</main></body></html>\n");
    h.into_string()
}

/// "3 s ago", "5 min ago", "2 h ago", "4 d ago" (or "in the future" for clock skew).
#[must_use]
pub fn age(now: i64, at: i64) -> String {
    let d = now.saturating_sub(at);
    if d < 0 {
        return "in the future".into();
    }
    match d {
        0..60 => format!("{d} s ago"),
        60..3600 => format!("{} min ago", d / 60),
        3600..172_800 => format!("{} h ago", d / 3600),
        _ => format!("{} d ago", d / 86_400),
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (civil-from-days, proleptic Gregorian).
#[must_use]
pub fn utc(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_become_markup() {
        let mut h = Html::new();
        h.raw("<td title=\"")
            .text("\"><script>alert('x')</script>")
            .raw("\">")
            .text("<b>&")
            .raw("</td>");
        assert_eq!(
            h.as_str(),
            "<td title=\"&quot;&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;\">&lt;b&gt;&amp;</td>"
        );
        let mut l = Html::new();
        l.link(&format!("/console/images/{}", segment("a/../b?c")), "<i>");
        assert_eq!(
            l.as_str(),
            "<a href=\"/console/images/a%2F..%2Fb%3Fc\">&lt;i&gt;</a>"
        );
        assert_eq!(segment(".."), "%2E%2E");
        assert_eq!(query(&[("q", "a b&c"), ("state", "")]), "?q=a%20b%26c");
        assert_eq!(query(&[("state", "")]), "");
    }

    #[test]
    fn times_read_like_a_clock() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(age(100, 95), "5 s ago");
        assert_eq!(age(10_000, 10_000 - 7200), "2 h ago");
        assert_eq!(age(0, 10), "in the future");
    }

    #[test]
    fn pages_carry_the_logout_form_only_with_a_session() {
        let body = Html::new();
        let with = page("Machines", Nav::Machines, Some("abc"), &body);
        assert!(with.contains("name=\"csrf\" value=\"abc\""));
        assert!(with.contains("href=\"/console/machines\" aria-current=\"page\""));
        assert!(with.contains("width=device-width"));
        let without = page("Log in", Nav::None, None, &body);
        assert!(!without.contains("logout"));
    }
}
