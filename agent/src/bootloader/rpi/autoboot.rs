//! `autoboot.txt`: the sans-IO parser and editor.
//!
//! The file is `config.txt` syntax: `key=value` lines, `# comments`, and `[filter]` lines that
//! make the settings after them conditional. The firmware reads at most 512 bytes of it and
//! knows three filters (`[all]`, `[none]`, `[tryboot]`) and two keys (`boot_partition`,
//! `tryboot_a_b`).
//!
//! [`Autoboot`] keeps every line exactly as read (unknown keys, comments, blank lines, `\r\n`
//! endings, a missing final newline) and edits only the value of the `boot_partition` lines it
//! owns, so `encode(parse(x)) == x` and an edit changes nothing else.
//!
//! The A/B view ([`AbPartitions`]) is strict: the two keys may only appear where their meaning
//! is certain (before any filter, under `[all]`, or `boot_partition` under `[tryboot]`), at
//! most once each per section, with decimal values. A file the firmware would read in a way
//! we cannot predict is refused rather than edited.

/// The firmware reads at most this many bytes of `autoboot.txt` (Raspberry Pi documentation,
/// "autoboot.txt is limited to 512 bytes"); larger files are refused before parsing, and no
/// edit may produce one.
pub const MAX_AUTOBOOT_LEN: usize = 512;
/// The key naming the partition to boot.
pub const BOOT_PARTITION: &str = "boot_partition";
/// The key that makes `tryboot` switch partitions instead of config files.
pub const TRYBOOT_A_B: &str = "tryboot_a_b";
/// Highest partition number accepted (MBR logical partitions included).
pub const MAX_PARTITION: u32 = 63;

/// `autoboot.txt` that cannot be read or written safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AutobootError {
    /// Larger than the firmware reads.
    #[error("{len} bytes is larger than the firmware's {max}-byte limit for autoboot.txt")]
    TooLarge {
        /// Size of the file or of the edited text.
        len: usize,
        /// [`MAX_AUTOBOOT_LEN`].
        max: usize,
    },
    /// A NUL byte (the firmware reads a C string).
    #[error("line {line}: NUL byte")]
    Nul {
        /// 1-based line number.
        line: usize,
    },
    /// An A/B setting written in a form whose meaning to the firmware is not documented.
    #[error("line {line}: {what}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// A `[` line without its closing `]`.
    #[error("line {line}: unterminated filter")]
    BadFilter {
        /// 1-based line number.
        line: usize,
    },
    /// An A/B key whose value is not a decimal partition number in range.
    #[error("line {line}: {key}={value:?} is not a number between {min} and {max}")]
    BadValue {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value (lossy).
        value: String,
        /// Smallest accepted.
        min: u32,
        /// Largest accepted.
        max: u32,
    },
    /// An A/B key set twice in one section.
    #[error("line {line}: {key} set again in section [{section}]")]
    Duplicate {
        /// 1-based line number of the second setting.
        line: usize,
        /// The key.
        key: &'static str,
        /// The section.
        section: String,
    },
    /// An A/B key under a filter whose outcome the agent cannot know.
    #[error("line {line}: {key} under filter [{filter}], which the agent cannot evaluate")]
    UnsupportedFilter {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
        /// The filter (lossy).
        filter: String,
    },
    /// The A/B setup is incomplete.
    #[error("autoboot.txt is not set up for A/B tryboot: {what}")]
    NotAb {
        /// What is missing.
        what: &'static str,
    },
}

/// Which section a line is in, as far as the A/B keys are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Section {
    /// Before any filter, or under `[all]`: applies to every boot.
    All,
    /// Under `[tryboot]`: applies when the tryboot flag is set.
    Tryboot,
    /// Under `[none]`: never applies.
    None,
    /// Under any other filter.
    Other(String),
}

impl Section {
    fn name(&self) -> String {
        match self {
            Self::All => "all".into(),
            Self::Tryboot => "tryboot".into(),
            Self::None => "none".into(),
            Self::Other(s) => s.clone(),
        }
    }
}

/// One line as read: its bytes (without `\n`, with a `\r` if there was one), and for the
/// `boot_partition` lines the agent may edit, where the value sits.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    raw: Vec<u8>,
    /// Byte range of the value inside `raw` for an editable `boot_partition` line.
    value: Option<(usize, usize)>,
}

/// A parsed `autoboot.txt`.
///
/// Invariant: `lines` joined with `\n` (plus a final `\n` if `final_newline`) is the file, at
/// most [`MAX_AUTOBOOT_LEN`] bytes, without NUL; `all_line` / `tryboot_line` index lines whose
/// `value` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoboot {
    lines: Vec<Line>,
    final_newline: bool,
    all_partition: Option<(usize, u32)>,
    tryboot_partition: Option<(usize, u32)>,
    tryboot_a_b: Option<u32>,
}

/// The two partitions of an A/B `autoboot.txt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbPartitions {
    /// `boot_partition` under `[all]`: booted without the tryboot flag.
    pub default: u32,
    /// `boot_partition` under `[tryboot]`: booted once after `reboot "0 tryboot"`.
    pub tryboot: u32,
}

fn trim(bytes: &[u8]) -> &[u8] {
    bytes.trim_ascii()
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Strict decimal `1..=MAX_PARTITION` (or `0..=1` for `tryboot_a_b`).
fn number(
    bytes: &[u8],
    line: usize,
    key: &'static str,
    min: u32,
    max: u32,
) -> Result<u32, AutobootError> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|s| {
            // No leading zeros: an edit rewrites the value canonically.
            !s.is_empty()
                && s.len() <= 3
                && s.bytes().all(|b| b.is_ascii_digit())
                && (*s == "0" || !s.starts_with('0'))
        })
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| AutobootError::BadValue {
            line,
            key,
            value: lossy(bytes),
            min,
            max,
        })
}

/// Parses `autoboot.txt`. Never panics; see the module documentation for what is refused.
///
/// # Errors
/// [`AutobootError`] for a file that is too large, has NUL bytes or a broken filter line, or
/// whose A/B keys are malformed, duplicated or conditional on an unknown filter.
pub fn parse(data: &[u8]) -> Result<Autoboot, AutobootError> {
    if data.len() > MAX_AUTOBOOT_LEN {
        return Err(AutobootError::TooLarge {
            len: data.len(),
            max: MAX_AUTOBOOT_LEN,
        });
    }
    let (body, final_newline) = match data.strip_suffix(b"\n") {
        Some(body) => (body, true),
        None => (data, false),
    };
    let mut doc = Autoboot {
        lines: Vec::new(),
        final_newline,
        all_partition: None,
        tryboot_partition: None,
        tryboot_a_b: None,
    };
    if data.is_empty() {
        return Ok(doc);
    }
    let mut section = Section::All;
    let mut seen_a_b_in_all = false;
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let lineno = i + 1;
        if raw.contains(&0) {
            return Err(AutobootError::Nul { line: lineno });
        }
        let mut line = Line {
            raw: raw.to_vec(),
            value: None,
        };
        let text = trim(raw);
        if let Some(rest) = text.strip_prefix(b"[") {
            let close = rest
                .iter()
                .position(|&b| b == b']')
                .ok_or(AutobootError::BadFilter { line: lineno })?;
            let name = rest.get(..close).unwrap_or_default();
            section = match name {
                b"all" => Section::All,
                b"tryboot" => Section::Tryboot,
                b"none" => Section::None,
                _ => Section::Other(lossy(name)),
            };
        } else if !text.is_empty() && !text.starts_with(b"#") {
            let eq = text.iter().position(|&b| b == b'=');
            let (key_raw, value_raw) = match eq {
                Some(eq) => (
                    text.get(..eq).unwrap_or_default(),
                    text.get(eq + 1..).unwrap_or_default(),
                ),
                None => (text, &b""[..]),
            };
            let (key, value) = (trim(key_raw), trim(value_raw));
            let key = if key == BOOT_PARTITION.as_bytes() {
                Some(BOOT_PARTITION)
            } else if key == TRYBOOT_A_B.as_bytes() {
                Some(TRYBOOT_A_B)
            } else if key.eq_ignore_ascii_case(BOOT_PARTITION.as_bytes())
                || key.eq_ignore_ascii_case(TRYBOOT_A_B.as_bytes())
            {
                // Whether the firmware matches keys case-insensitively is not documented.
                return Err(AutobootError::Syntax {
                    line: lineno,
                    what: "A/B key not in lower case",
                });
            } else {
                None
            };
            if key.is_some() && (key_raw.len() != key.map_or(0, str::len) || value_raw != value) {
                // Whether the firmware trims spaces around '=' is not documented either.
                return Err(AutobootError::Syntax {
                    line: lineno,
                    what: "spaces around '=' in an A/B setting",
                });
            }
            if let Some(key) = key {
                if eq.is_none() {
                    return Err(AutobootError::BadValue {
                        line: lineno,
                        key,
                        value: String::new(),
                        min: 0,
                        max: MAX_PARTITION,
                    });
                }
                let duplicate = || AutobootError::Duplicate {
                    line: lineno,
                    key,
                    section: section.name(),
                };
                match (&section, key) {
                    (Section::None, _) => {}
                    (Section::Other(filter), _) => {
                        return Err(AutobootError::UnsupportedFilter {
                            line: lineno,
                            key,
                            filter: filter.clone(),
                        });
                    }
                    (Section::Tryboot, TRYBOOT_A_B) => {
                        // The firmware decides between config.txt and tryboot.txt before it
                        // knows the section outcome matters; refuse the ambiguity.
                        return Err(AutobootError::UnsupportedFilter {
                            line: lineno,
                            key,
                            filter: "tryboot".into(),
                        });
                    }
                    (Section::All, TRYBOOT_A_B) => {
                        if seen_a_b_in_all {
                            return Err(duplicate());
                        }
                        seen_a_b_in_all = true;
                        doc.tryboot_a_b = Some(number(value, lineno, key, 0, 1)?);
                    }
                    (Section::All | Section::Tryboot, _) => {
                        let n = number(value, lineno, key, 1, MAX_PARTITION)?;
                        let slot = if section == Section::All {
                            &mut doc.all_partition
                        } else {
                            &mut doc.tryboot_partition
                        };
                        if slot.is_some() {
                            return Err(duplicate());
                        }
                        *slot = Some((doc.lines.len(), n));
                        line.value = value_range(raw);
                    }
                }
            }
        }
        doc.lines.push(line);
    }
    Ok(doc)
}

/// Where the (trimmed) value of a `key=value` line lies in its raw bytes.
fn value_range(raw: &[u8]) -> Option<(usize, usize)> {
    let eq = raw.iter().position(|&b| b == b'=')?;
    let after = raw.get(eq + 1..)?;
    let lead = after.len() - after.trim_ascii_start().len();
    let start = eq + 1 + lead;
    let tail = raw.get(start..)?;
    let end = start + tail.trim_ascii_end().len();
    Some((start, end))
}

impl Autoboot {
    /// The canonical A/B file the Raspberry Pi documentation shows:
    ///
    /// ```text
    /// [all]
    /// tryboot_a_b=1
    /// boot_partition=<default>
    /// [tryboot]
    /// boot_partition=<tryboot>
    /// ```
    ///
    /// # Errors
    /// [`AutobootError::BadValue`] for partitions outside `1..=MAX_PARTITION`.
    pub fn new_ab(parts: AbPartitions) -> Result<Self, AutobootError> {
        let text = format!(
            "[all]\n{TRYBOOT_A_B}=1\n{BOOT_PARTITION}={}\n[tryboot]\n{BOOT_PARTITION}={}\n",
            parts.default, parts.tryboot
        );
        parse(text.as_bytes())
    }

    /// The file's bytes.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_AUTOBOOT_LEN);
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push(b'\n');
            }
            out.extend_from_slice(&line.raw);
        }
        if self.final_newline {
            out.push(b'\n');
        }
        out
    }

    /// The A/B partitions.
    ///
    /// # Errors
    /// [`AutobootError::NotAb`] unless `tryboot_a_b=1` and `boot_partition` are set for every
    /// boot and `boot_partition` under `[tryboot]`.
    pub fn ab(&self) -> Result<AbPartitions, AutobootError> {
        if self.tryboot_a_b != Some(1) {
            return Err(AutobootError::NotAb {
                what: "tryboot_a_b=1 is not set under [all]",
            });
        }
        let (_, default) = self.all_partition.ok_or(AutobootError::NotAb {
            what: "no boot_partition under [all]",
        })?;
        let (_, tryboot) = self.tryboot_partition.ok_or(AutobootError::NotAb {
            what: "no boot_partition under [tryboot]",
        })?;
        Ok(AbPartitions { default, tryboot })
    }

    /// Sets both `boot_partition` values in place, changing nothing else.
    ///
    /// # Errors
    /// [`AutobootError::NotAb`] for a file that is not an A/B file, `BadValue` for partitions
    /// out of range, `TooLarge` if the edit would exceed the firmware's limit (then `self` is
    /// unchanged).
    pub fn set_ab(&mut self, parts: AbPartitions) -> Result<(), AutobootError> {
        self.ab()?;
        for n in [parts.default, parts.tryboot] {
            if !(1..=MAX_PARTITION).contains(&n) {
                return Err(AutobootError::BadValue {
                    line: 0,
                    key: BOOT_PARTITION,
                    value: n.to_string(),
                    min: 1,
                    max: MAX_PARTITION,
                });
            }
        }
        let mut edited = self.clone();
        for (which, n) in [
            (edited.all_partition, parts.default),
            (edited.tryboot_partition, parts.tryboot),
        ] {
            let Some((index, _)) = which else { continue };
            let Some(line) = edited.lines.get_mut(index) else {
                continue;
            };
            let Some((start, end)) = line.value else {
                continue;
            };
            let mut raw = line.raw.get(..start).unwrap_or_default().to_vec();
            let digits = n.to_string();
            raw.extend_from_slice(digits.as_bytes());
            raw.extend_from_slice(line.raw.get(end..).unwrap_or_default());
            line.value = Some((start, start + digits.len()));
            line.raw = raw;
        }
        edited.all_partition = edited.all_partition.map(|(i, _)| (i, parts.default));
        edited.tryboot_partition = edited.tryboot_partition.map(|(i, _)| (i, parts.tryboot));
        let len = edited.encode().len();
        if len > MAX_AUTOBOOT_LEN {
            return Err(AutobootError::TooLarge {
                len,
                max: MAX_AUTOBOOT_LEN,
            });
        }
        *self = edited;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &[u8] = b"[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";

    #[test]
    fn parse_documented_example() {
        let doc = parse(DOC).unwrap();
        assert_eq!(
            doc.ab(),
            Ok(AbPartitions {
                default: 2,
                tryboot: 3
            })
        );
        assert_eq!(doc.encode(), DOC);
    }

    #[test]
    fn new_ab_is_the_documented_text() {
        let doc = Autoboot::new_ab(AbPartitions {
            default: 2,
            tryboot: 3,
        })
        .unwrap();
        assert_eq!(doc.encode(), DOC);
        assert!(
            Autoboot::new_ab(AbPartitions {
                default: 0,
                tryboot: 3
            })
            .is_err()
        );
    }

    #[test]
    fn edit_keeps_everything_else() {
        let text = b"# managed by tugboot\r\n[all]\r\ntryboot_a_b=1\r\n  boot_partition=2\r\nfoo = bar\r\n[none]\r\nboot_partition=9\r\n[tryboot]\r\nboot_partition=3\r\n[all]\r\nunknown_key=1";
        let mut doc = parse(text).unwrap();
        assert_eq!(doc.encode(), text);
        doc.set_ab(AbPartitions {
            default: 3,
            tryboot: 12,
        })
        .unwrap();
        let want = b"# managed by tugboot\r\n[all]\r\ntryboot_a_b=1\r\n  boot_partition=3\r\nfoo = bar\r\n[none]\r\nboot_partition=9\r\n[tryboot]\r\nboot_partition=12\r\n[all]\r\nunknown_key=1";
        assert_eq!(doc.encode(), want.to_vec());
        assert_eq!(
            parse(&doc.encode()).unwrap().ab(),
            Ok(AbPartitions {
                default: 3,
                tryboot: 12
            })
        );
    }

    #[test]
    fn refusals() {
        let cases: &[(&[u8], &str)] = &[
            (b"[all]\nboot_partition=2\nboot_partition=3\n", "set again"),
            (b"[all\n", "unterminated"),
            (b"boot_partition=0x2\n", "not a number"),
            (b"boot_partition=\n", "not a number"),
            (b"boot_partition\n", "not a number"),
            (b"boot_partition=64\n", "not a number"),
            (b"boot_partition=02\n", "not a number"),
            (b"[pi4]\nboot_partition=2\n", "cannot evaluate"),
            (b"[tryboot]\ntryboot_a_b=1\n", "cannot evaluate"),
            (b"tryboot_a_b=2\n", "not a number"),
            (b"a=\0\n", "NUL"),
        ];
        for (text, msg) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.contains(msg),
                "{:?}: {err}",
                String::from_utf8_lossy(text)
            );
        }
        let big = vec![b'#'; MAX_AUTOBOOT_LEN + 1];
        assert!(matches!(parse(&big), Err(AutobootError::TooLarge { .. })));
    }

    #[test]
    fn not_ab_is_readable_but_not_editable() {
        for text in [
            &b""[..],
            b"boot_partition=2\n",
            b"tryboot_a_b=1\nboot_partition=2\n",
            b"tryboot_a_b=0\nboot_partition=2\n[tryboot]\nboot_partition=3\n",
            b"tryboot_a_b=1\n[tryboot]\nboot_partition=3\n",
        ] {
            let mut doc = parse(text).unwrap();
            assert!(matches!(doc.ab(), Err(AutobootError::NotAb { .. })));
            let parts = AbPartitions {
                default: 2,
                tryboot: 2,
            };
            assert!(doc.set_ab(parts).is_err());
            assert_eq!(doc.encode(), text);
        }
    }

    #[test]
    fn edit_that_would_exceed_the_limit_is_refused() {
        let mut text = DOC.to_vec();
        text.extend(std::iter::repeat_n(b'#', MAX_AUTOBOOT_LEN - DOC.len()));
        let mut doc = parse(&text).unwrap();
        let before = doc.clone();
        let err = doc.set_ab(AbPartitions {
            default: 12,
            tryboot: 13,
        });
        assert!(matches!(err, Err(AutobootError::TooLarge { .. })));
        assert_eq!(doc, before);
        doc.set_ab(AbPartitions {
            default: 3,
            tryboot: 2,
        })
        .unwrap();
        assert_eq!(doc.encode().len(), MAX_AUTOBOOT_LEN);
    }

    #[test]
    fn undocumented_spellings_are_refused() {
        for text in [
            &b"Boot_Partition=5\n"[..],
            b"boot_partition = 5\n",
            b"boot_partition =5\n",
            b"tryboot_a_b= 1\n",
            b"[ALL]\nboot_partition=5\n",
            b"[TryBoot]\nboot_partition=6\n",
        ] {
            assert!(parse(text).is_err(), "{:?}", String::from_utf8_lossy(text));
        }
        let doc = parse(b"[none]\ntryboot_a_b=0\n[tryboot]\nboot_partition=6\n[all]\ntryboot_a_b=1\nboot_partition=5").unwrap();
        assert_eq!(
            doc.ab(),
            Ok(AbPartitions {
                default: 5,
                tryboot: 6
            })
        );
    }
}
