//! Errors of the board catalog: every one names the file, and where it can the TOML key
//! and the line, so an operator can fix a board file without reading this crate.

use std::fmt;
use std::path::PathBuf;

/// Why a board file or a board directory could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BoardError {
    /// The text is not TOML, or does not fit the schema (unknown key, wrong type,
    /// missing key). `key` is the TOML path the error points at (empty for the top
    /// level); `line` and `column` are 1-based and come from the TOML parser's span.
    #[error("{file}: {}, key `{}`: {message}", Position::new(.line, .column), KeyDisplay(.key))]
    Parse {
        /// The board file name, e.g. `raspberrypi-4.toml`.
        file: String,
        /// 1-based line of the error, when the parser reported a position.
        line: Option<usize>,
        /// 1-based column (in characters) of the error, when known.
        column: Option<usize>,
        /// TOML path of the offending key, e.g. `boot[1].arch_codes`.
        key: String,
        /// The TOML parser's own message.
        message: String,
    },
    /// The file parsed, but a value breaks a rule of the schema (see docs/boards.md).
    #[error("{file}: key `{}`: {reason}", KeyDisplay(.key))]
    Invalid {
        /// The board file name.
        file: String,
        /// TOML path of the offending key.
        key: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The file is larger than [`crate::MAX_BOARD_FILE_BYTES`]; it was not parsed.
    #[error("{file}: {size} bytes is over the {limit}-byte limit for a board file")]
    TooLarge {
        /// The board file name.
        file: String,
        /// Its size in bytes (at least `limit + 1`).
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The file is not UTF-8 (TOML must be).
    #[error("{file}: not valid UTF-8")]
    NotUtf8 {
        /// The board file name.
        file: String,
    },
    /// The file name is not `<board name>.toml`, or is not a plain file name.
    #[error("{file}: {reason}")]
    FileName {
        /// The file name as given.
        file: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Two files define the same board name.
    #[error("{file}: board `{name}` is already defined by {first}")]
    DuplicateBoard {
        /// The second file.
        file: String,
        /// The board name.
        name: String,
        /// The file that defined it first.
        first: String,
    },
    /// More board files than [`crate::MAX_BOARDS`].
    #[error("more than {limit} board files")]
    TooMany {
        /// The limit.
        limit: usize,
    },
    /// A board directory or file could not be read.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl BoardError {
    /// The board file the error is about, when it is about one.
    #[must_use]
    pub fn file(&self) -> Option<&str> {
        match self {
            Self::Parse { file, .. }
            | Self::Invalid { file, .. }
            | Self::TooLarge { file, .. }
            | Self::NotUtf8 { file }
            | Self::FileName { file, .. }
            | Self::DuplicateBoard { file, .. } => Some(file),
            Self::TooMany { .. } | Self::Io { .. } => None,
        }
    }

    /// The TOML path of the offending key, for parse and validation errors.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::Parse { key, .. } | Self::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }

    /// The 1-based line of a parse error, when the parser reported one.
    #[must_use]
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { line, .. } => *line,
            _ => None,
        }
    }
}

/// A validation failure of one key, before it is tied to a file: the error of
/// `TryFrom<BoardFile> for Board`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key `{}`: {reason}", KeyDisplay(.key))]
pub struct FieldError {
    /// TOML path of the offending key, e.g. `slots[1].name`.
    pub key: String,
    /// What is wrong, in words.
    pub reason: String,
}

impl FieldError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn in_file(self, file: &str) -> BoardError {
        BoardError::Invalid {
            file: file.to_owned(),
            key: self.key,
            reason: self.reason,
        }
    }
}

struct Position(Option<usize>, Option<usize>);

impl Position {
    fn new(line: &Option<usize>, column: &Option<usize>) -> Self {
        Self(*line, *column)
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, "line {line}, column {column}"),
            (Some(line), None) => write!(f, "line {line}"),
            _ => f.write_str("unknown position"),
        }
    }
}

struct KeyDisplay<'a>(&'a str);

impl fmt::Display for KeyDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("<top level>")
        } else {
            f.write_str(self.0)
        }
    }
}
