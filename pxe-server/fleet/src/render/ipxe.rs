//! iPXE scripts, rendered as plain text (pure: no I/O).
//!
//! iPXE has no quoting and no escape character (see [`crate::cmdline`]): everything written
//! into a script is a constant, a validated base URL, a hex digest, a [`KernelCmdline`], or text
//! passed through [`sanitize_message`].

use std::fmt::{self, Write as _};

use tugboot_firmware::Sha256Digest;

use crate::cmdline::KernelCmdline;
use crate::plan::{BootAction, BootPlan, NoBoot};

/// Longest base URL accepted.
pub const MAX_BASE_URL_LEN: usize = 512;
/// Longest message text kept by [`sanitize_message`].
pub const MAX_MESSAGE_LEN: usize = 200;

/// A base URL that cannot be written into scripts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("base URL {url:?} is not usable in a script: {reason}")]
pub struct BaseUrlError {
    /// The URL (cut to 64 characters).
    pub url: String,
    /// Why.
    pub reason: &'static str,
}

/// The URL prefix every script link starts with, e.g. `http://192.0.2.1:8080` (no trailing
/// slash). Only `http`/`https` with a conservative character set: it is written into scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    /// Checks a base URL.
    ///
    /// # Errors
    /// [`BaseUrlError`].
    pub fn parse(url: &str) -> Result<Self, BaseUrlError> {
        let bad = |reason| {
            Err(BaseUrlError {
                url: url.chars().take(64).collect(),
                reason,
            })
        };
        if url.len() > MAX_BASE_URL_LEN {
            return bad("too long");
        }
        let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
        else {
            return bad("must start with http:// or https://");
        };
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() {
            return bad("no host");
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || matches!(c, '.' | '-' | '_' | ':' | '/' | '[' | ']' | '%' | '~')
        };
        if !rest.chars().all(allowed) {
            return bad("only letters, digits and . - _ : / [ ] % ~ are allowed");
        }
        Ok(BaseUrl(url.trim_end_matches('/').to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `<base>/artifacts/sha256/<hex>`.
    pub fn artifact(&self, digest: &Sha256Digest) -> String {
        format!("{}/artifacts/sha256/{}", self.0, digest.to_hex())
    }

    /// The per-machine script URL with iPXE's own settings filled in by iPXE at run time.
    /// `${serial}` is URI-escaped by iPXE (`:uristring`): SMBIOS serials may contain spaces.
    pub fn chain_url(&self) -> String {
        format!(
            "{}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&serial=${{serial:uristring}}&arch=${{buildarch}}&platform=${{platform}}",
            self.0
        )
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes arbitrary text safe for an `echo` line: printable ASCII only (others become `?`),
/// the characters `$ { } # ; | &` become `_`, length capped. The result never contains a token
/// iPXE would interpret.
pub fn sanitize_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_MESSAGE_LEN));
    for c in text.chars().take(MAX_MESSAGE_LEN) {
        out.push(match c {
            '$' | '{' | '}' | '#' | ';' | '|' | '&' => '_',
            ' ' => ' ',
            c if c.is_ascii_graphic() => c,
            _ => '?',
        });
    }
    out
}

/// What a boot script loads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootScript<'a> {
    pub kernel: Sha256Digest,
    pub initrd: Option<Sha256Digest>,
    pub cmdline: &'a KernelCmdline,
    /// One line of context for the console (machine, profile, image); sanitized when written.
    pub comment: &'a str,
    /// Seconds to wait before asking again when loading fails.
    pub retry_secs: u32,
}

/// The per-machine boot script: kernel and initrd by digest, then `boot`; on any failure it
/// prints why, waits and asks the server again.
pub fn render_boot(base: &BaseUrl, s: &BootScript<'_>) -> String {
    let mut out = String::with_capacity(512);
    out.push_str("#!ipxe\n");
    let _ = writeln!(out, "echo tugboot: {}", sanitize_message(s.comment));
    let _ = write!(out, "kernel {}", base.artifact(&s.kernel));
    if s.initrd.is_some() {
        out.push_str(" initrd=initrd");
    }
    if !s.cmdline.is_empty() {
        let _ = write!(out, " {}", s.cmdline);
    }
    out.push_str(" || goto failed\n");
    if let Some(initrd) = &s.initrd {
        let _ = writeln!(
            out,
            "initrd --name initrd {} || goto failed",
            base.artifact(initrd)
        );
    }
    out.push_str("boot || goto failed\n");
    out.push_str(":failed\n");
    let _ = writeln!(
        out,
        "echo tugboot: loading the image failed, asking again in {} seconds",
        s.retry_secs
    );
    retry_tail(&mut out, base, s.retry_secs);
    out
}

fn retry_tail(out: &mut String, base: &BaseUrl, retry_secs: u32) {
    let _ = writeln!(out, "sleep {retry_secs}");
    let _ = writeln!(
        out,
        "chain --autofree --replace {} || exit 1",
        base.chain_url()
    );
}

/// The bootstrap (`/boot.ipxe`) and fallback script: make sure the network is up, then chain to
/// the per-machine script URL, which carries the machine's MAC, UUID, serial and architecture.
pub fn render_chain(base: &BaseUrl, retry_secs: u32) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("#!ipxe\n");
    out.push_str("isset ${ip} || dhcp || goto failed\n");
    let _ = writeln!(
        out,
        "chain --autofree --replace {} || goto failed",
        base.chain_url()
    );
    out.push_str(":failed\n");
    let _ = writeln!(
        out,
        "echo tugboot: cannot reach the boot server, retrying in {retry_secs} seconds"
    );
    let _ = writeln!(out, "sleep {retry_secs}");
    out.push_str("dhcp ||\n");
    let _ = writeln!(
        out,
        "chain --autofree --replace {} || exit 1",
        base.chain_url()
    );
    out
}

/// What an error script does after printing the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Wait this many seconds, then ask the server again.
    Retry { after_secs: u32 },
    /// Return to the firmware (which tries its next boot device).
    Exit,
}

/// A script that prints why this machine cannot boot from the network, then retries or exits.
pub fn render_error(base: &BaseUrl, reason: &str, action: ErrorAction) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("#!ipxe\n");
    let _ = writeln!(out, "echo tugboot: {}", sanitize_message(reason));
    match action {
        ErrorAction::Retry { after_secs } => {
            let _ = writeln!(out, "echo tugboot: asking again in {after_secs} seconds");
            retry_tail(&mut out, base, after_secs);
        }
        ErrorAction::Exit => {
            out.push_str("echo tugboot: returning to the firmware\n");
            out.push_str("exit 1\n");
        }
    }
    out
}

/// The script of the `local` template: leave iPXE successfully so the firmware boots the next
/// device (normally the local disk).
pub fn render_local(comment: &str) -> String {
    format!(
        "#!ipxe\necho tugboot: {}\necho tugboot: booting from the next boot device\nexit 0\n",
        sanitize_message(comment)
    )
}

/// The per-machine script of a plan, or one that says why there is none: a machine no profile
/// covers gets `no_profile` (retry or exit to the firmware), every other failure retries.
#[must_use]
pub fn render_plan(
    base: &BaseUrl,
    plan: &Result<BootPlan, NoBoot>,
    retry_secs: u32,
    no_profile: ErrorAction,
) -> String {
    match plan {
        Ok(p) => match &p.action {
            BootAction::Linux(l) => render_boot(
                base,
                &BootScript {
                    kernel: l.kernel,
                    initrd: l.initrd,
                    cmdline: &l.cmdline,
                    comment: &p.comment(),
                    retry_secs,
                },
            ),
            BootAction::Local => render_local(&p.comment()),
        },
        Err(e @ NoBoot::NoProfile { .. }) => render_error(base, &e.to_string(), no_profile),
        Err(e) => render_error(
            base,
            &e.to_string(),
            ErrorAction::Retry {
                after_secs: retry_secs,
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/ipxe");

    fn fixture(name: &str) -> String {
        let path = format!("{FIXTURES}/{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn base() -> BaseUrl {
        BaseUrl::parse("http://192.0.2.1:8080/").unwrap()
    }

    #[test]
    fn boot_script_matches_fixture() {
        let cmdline =
            KernelCmdline::parse("console=ttyS0,115200n8  quiet\troot=/dev/ram0").unwrap();
        let script = render_boot(
            &base(),
            &BootScript {
                kernel: Sha256Digest::of(b"kernel"),
                initrd: Some(Sha256Digest::of(b"initrd")),
                cmdline: &cmdline,
                comment: "machine 52-54-00-12-34-56 profile edge image edge-gw v42",
                retry_secs: 10,
            },
        );
        assert_eq!(script, fixture("boot.ipxe"));
    }

    #[test]
    fn boot_script_without_initrd_or_cmdline() {
        let cmdline = KernelCmdline::default();
        let script = render_boot(
            &base(),
            &BootScript {
                kernel: Sha256Digest::of(b"kernel"),
                initrd: None,
                cmdline: &cmdline,
                comment: "x",
                retry_secs: 5,
            },
        );
        assert_eq!(script, fixture("boot-kernel-only.ipxe"));
        assert!(!script.contains("initrd"));
    }

    #[test]
    fn chain_error_local_match_fixtures() {
        assert_eq!(render_chain(&base(), 10), fixture("chain.ipxe"));
        assert_eq!(
            render_error(
                &base(),
                "no profile for mac 52-54-00-12-34-56; ${evil} #x && y",
                ErrorAction::Retry { after_secs: 30 }
            ),
            fixture("error-retry.ipxe")
        );
        assert_eq!(
            render_error(
                &base(),
                "image edge-gw v9 is not published",
                ErrorAction::Exit
            ),
            fixture("error-exit.ipxe")
        );
        assert_eq!(render_local("profile disk"), fixture("local.ipxe"));
    }

    #[test]
    fn sanitized_messages_have_no_ipxe_syntax() {
        let s = sanitize_message("a\nb ${x} ; || && #c \u{e9}");
        assert_eq!(s, "a?b __x_ _ __ __ _c ?");
        for token in s.split(' ') {
            assert!(
                crate::cmdline::check_token(token).is_ok() || token.is_empty(),
                "{token:?}"
            );
        }
        assert_eq!(sanitize_message(&"x".repeat(1000)).len(), MAX_MESSAGE_LEN);
    }

    #[test]
    fn base_url_rules() {
        assert_eq!(base().as_str(), "http://192.0.2.1:8080");
        assert_eq!(
            BaseUrl::parse("https://[2001:db8::1]:8443/boot")
                .unwrap()
                .as_str(),
            "https://[2001:db8::1]:8443/boot"
        );
        for bad in [
            "ftp://x",
            "http://",
            "http:///x",
            "http://a b",
            "http://x/${y}",
            "http://x/#y",
            "http://x/?a=b",
            "http://x\n",
        ] {
            assert!(BaseUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
