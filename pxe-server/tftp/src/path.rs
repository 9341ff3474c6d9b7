//! Mapping a requested file name onto the TFTP root, without touching the disk.
//!
//! Rules (see docs/tftp.md): leading `/` are stripped, so GRUB's `/grub/grub.cfg` and
//! `grub/grub.cfg` name the same file; `\` is treated as `/` (Windows-era PXE ROMs and pxelinux
//! configs use it) *before* any check, so it cannot smuggle a `..`; empty and `.` components are
//! dropped; a `..` component, a NUL, a control character or a Windows drive prefix is refused
//! outright rather than resolved. Symlinks are the shell's job (`server`), which canonicalises and
//! checks the result stays under the root.

use std::path::PathBuf;

use thiserror::Error;

/// Longest path (after normalisation) we look up.
pub const MAX_PATH_LEN: usize = 512;
/// Most components in a path.
pub const MAX_COMPONENTS: usize = 32;

/// Why a requested name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PathError {
    /// Nothing left after stripping separators.
    #[error("empty path")]
    Empty,
    /// A `..` component.
    #[error("path escapes the root")]
    ParentComponent,
    /// NUL or another control character.
    #[error("control character in path")]
    ControlCharacter,
    /// A `C:`-style prefix.
    #[error("drive prefix in path")]
    DrivePrefix,
    /// Longer than [`MAX_PATH_LEN`] or more than [`MAX_COMPONENTS`] components.
    #[error("path too long")]
    TooLong,
}

/// A request path reduced to safe, relative components joined with `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CleanPath(String);

impl CleanPath {
    /// Normalise `requested` (see the module docs for the rules).
    pub fn new(requested: &str) -> Result<Self, PathError> {
        if requested.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if requested.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        let unified = requested.replace('\\', "/");
        let bytes = unified.as_bytes();
        if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
            return Err(PathError::DrivePrefix);
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in unified.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err(PathError::ParentComponent),
                other => parts.push(other),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Empty);
        }
        if parts.len() > MAX_COMPONENTS {
            return Err(PathError::TooLong);
        }
        Ok(Self(parts.join("/")))
    }

    /// The normalised relative path, `/`-separated, no leading `/`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path relative to the root, as a `PathBuf`.
    #[must_use]
    pub fn to_relative(&self) -> PathBuf {
        self.0.split('/').collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_paths_map_inside_root() {
        assert_eq!(
            CleanPath::new("/grub/grub.cfg").unwrap().as_str(),
            "grub/grub.cfg"
        );
        assert_eq!(
            CleanPath::new("//etc/passwd").unwrap().as_str(),
            "etc/passwd"
        );
        assert_eq!(CleanPath::new("a/./b//c").unwrap().as_str(), "a/b/c");
        assert_eq!(
            CleanPath::new("pxelinux.cfg\\default").unwrap().as_str(),
            "pxelinux.cfg/default"
        );
    }

    #[test]
    fn escapes_refused() {
        assert_eq!(CleanPath::new("../x"), Err(PathError::ParentComponent));
        assert_eq!(CleanPath::new("a/../../x"), Err(PathError::ParentComponent));
        assert_eq!(CleanPath::new("a\\..\\x"), Err(PathError::ParentComponent));
        assert_eq!(CleanPath::new("/.."), Err(PathError::ParentComponent));
        assert_eq!(CleanPath::new("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(CleanPath::new("a\nb"), Err(PathError::ControlCharacter));
        assert_eq!(CleanPath::new("C:\\boot"), Err(PathError::DrivePrefix));
        assert_eq!(CleanPath::new("/"), Err(PathError::Empty));
        assert_eq!(CleanPath::new("./."), Err(PathError::Empty));
        assert_eq!(CleanPath::new(&"a/".repeat(40)), Err(PathError::TooLong));
        assert_eq!(CleanPath::new(&"a".repeat(600)), Err(PathError::TooLong));
    }

    #[test]
    fn dots_inside_names_are_fine() {
        assert_eq!(CleanPath::new("..foo").unwrap().as_str(), "..foo");
        assert_eq!(CleanPath::new("a/b..c").unwrap().as_str(), "a/b..c");
        assert_eq!(
            CleanPath::new("/a/b").unwrap().to_relative(),
            PathBuf::from("a/b")
        );
    }
}
