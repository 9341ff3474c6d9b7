//! tugboot's board catalog: one TOML file per kind of hardware (`boards/*.toml`),
//! loaded in two layers. [`raw::BoardFile`] is exactly what a file may say (serde,
//! unknown keys rejected); `TryFrom<BoardFile> for Board` applies the rules that types
//! cannot express (arch codes valid for their method, safe relative boot paths, slots A
//! and B, backend-specific keys). Every error names the file, the TOML key and the
//! reason; parse errors add the line and column. The schema is in docs/boards.md.
//!
//! The DHCP server asks [`Catalog::for_dhcp_arch`] which boards a client may be, then
//! narrows with [`Identify`]; the agent reads [`Board::ab`].

mod board;
mod error;
mod keypath;
pub mod raw;
mod validate;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

pub use board::{
    AbLayout, Arch, Board, BootKind, BootMethod, Bootloader, BootloaderKind, HexBytes, Identify,
    Kernel, KernelFormat, Loader, NetworkHints, Oui, RpiNetboot, Slot, SlotLocation, SlotName,
    TftpPrefix, Transport, UbootEnvCopy,
};
pub use error::{BoardError, FieldError};
pub use validate::{MAX_IANA_ARCH_CODE, arch_code_name};

/// Largest board file accepted, checked before parsing. The shipped files are ~2 KiB.
pub const MAX_BOARD_FILE_BYTES: usize = 64 * 1024;

/// Most board files one catalog (or one directory) may hold.
pub const MAX_BOARDS: usize = 256;

/// The shipped boards, compiled in so the binaries need no data directory.
const BUILTIN: &[(&str, &str)] = &[
    ("arm64-uefi.toml", include_str!("../../arm64-uefi.toml")),
    (
        "qemu-arm64-uboot.toml",
        include_str!("../../qemu-arm64-uboot.toml"),
    ),
    (
        "raspberrypi-3.toml",
        include_str!("../../raspberrypi-3.toml"),
    ),
    (
        "raspberrypi-4.toml",
        include_str!("../../raspberrypi-4.toml"),
    ),
    (
        "raspberrypi-5.toml",
        include_str!("../../raspberrypi-5.toml"),
    ),
    ("x86_64-bios.toml", include_str!("../../x86_64-bios.toml")),
    ("x86_64-uefi.toml", include_str!("../../x86_64-uefi.toml")),
];

impl Board {
    /// Parses and validates one board file. `file_name` is the bare file name
    /// (`raspberrypi-4.toml`): the board's `name` must equal its stem.
    ///
    /// # Errors
    /// [`BoardError::FileName`], [`BoardError::TooLarge`], [`BoardError::Parse`] or
    /// [`BoardError::Invalid`], each naming `file_name`.
    pub fn from_toml(file_name: &str, text: &str) -> Result<Board, BoardError> {
        let stem = file_stem(file_name)?;
        if text.len() > MAX_BOARD_FILE_BYTES {
            return Err(BoardError::TooLarge {
                file: file_name.to_owned(),
                size: u64::try_from(text.len()).unwrap_or(u64::MAX),
                limit: MAX_BOARD_FILE_BYTES,
            });
        }
        let raw: raw::BoardFile =
            toml::from_str(text).map_err(|e| parse_error(file_name, text, &e))?;
        let board = Board::try_from(raw).map_err(|e| e.in_file(file_name))?;
        if board.name != stem {
            return Err(FieldError::new(
                "name",
                format!(
                    "board name {:?} does not match the file name: it must be {stem:?}",
                    board.name
                ),
            )
            .in_file(file_name));
        }
        Ok(board)
    }
}

/// `x.toml` → `x`, refusing paths and other extensions.
fn file_stem(file_name: &str) -> Result<&str, BoardError> {
    let bad = |reason: &str| BoardError::FileName {
        file: file_name.to_owned(),
        reason: reason.to_owned(),
    };
    if file_name.contains(['/', '\\']) {
        return Err(bad("a board file name must not contain a directory"));
    }
    let stem = file_name
        .strip_suffix(".toml")
        .ok_or_else(|| bad("a board file name must end in .toml"))?;
    validate::check_name(stem).map_err(|_| {
        bad("a board file name must be <board name>.toml, with a-z, 0-9, '-', '_' in the name")
    })?;
    Ok(stem)
}

fn parse_error(file: &str, text: &str, e: &toml::de::Error) -> BoardError {
    let message = e.message().trim().to_owned();
    // "missing field `x`" points at the table that lacks it: name the key itself.
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
        .map(str::to_owned);
    let (line, column, mut key) = match e.span() {
        Some(span) => {
            let (line, column) = keypath::line_column(text, span.start);
            let key = if missing.is_some() {
                keypath::table_path_at(text, span.start)
            } else {
                keypath::key_path_at(text, span.start)
            };
            (Some(line), Some(column), key)
        }
        None => (None, None, String::new()),
    };
    if let Some(field) = missing {
        key = if key.is_empty() {
            field
        } else {
            format!("{key}.{field}")
        };
    }
    BoardError::Parse {
        file: file.to_owned(),
        line,
        column,
        key,
        message,
    }
}

/// A validated set of boards, unique by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    boards: BTreeMap<String, Board>,
}

impl Catalog {
    /// The boards shipped in `boards/*.toml`, compiled into the binary.
    #[must_use]
    pub fn builtin() -> Catalog {
        // Not reachable: the test `builtin_boards_all_load` loads every shipped file.
        #[allow(clippy::expect_used)]
        Catalog::from_sources(BUILTIN.iter().copied())
            .expect("shipped board files are validated by this crate's tests")
    }

    /// Every `*.toml` file directly in `dir` (subdirectories such as `loader/`, hidden
    /// files and other files are skipped). Files larger than [`MAX_BOARD_FILE_BYTES`] are refused
    /// without being read whole.
    ///
    /// # Errors
    /// [`BoardError::Io`] if the directory or a file cannot be read, otherwise the
    /// first error of [`Catalog::from_sources`], in file-name order.
    pub fn load_dir(dir: &Path) -> Result<Catalog, BoardError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| BoardError::Io { path, source }
        };
        let mut files: Vec<(String, String)> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not UTF-8, so not `<board name>.toml`
            };
            // Hidden files (editor swap and lock files) are not boards.
            if !name.ends_with(".toml") || name.starts_with('.') {
                continue;
            }
            // Follows symlinks: a linked board file is still a board file.
            let meta = std::fs::metadata(&path).map_err(io(&path))?;
            if !meta.is_file() {
                continue;
            }
            if files.len() == MAX_BOARDS {
                return Err(BoardError::TooMany { limit: MAX_BOARDS });
            }
            let text = read_capped(&path, &name)?;
            files.push((name, text));
        }
        files.sort();
        Catalog::from_sources(files.iter().map(|(n, t)| (n.as_str(), t.as_str())))
    }

    /// Builds a catalog from `(file name, text)` pairs, e.g. files read elsewhere or
    /// strings in tests.
    ///
    /// # Errors
    /// The first file that fails [`Board::from_toml`], a [`BoardError::DuplicateBoard`]
    /// or [`BoardError::TooMany`].
    pub fn from_sources<'a>(
        it: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Catalog, BoardError> {
        let mut boards = BTreeMap::new();
        let mut origin: BTreeMap<String, String> = BTreeMap::new();
        for (file, text) in it {
            if boards.len() == MAX_BOARDS {
                return Err(BoardError::TooMany { limit: MAX_BOARDS });
            }
            let board = Board::from_toml(file, text)?;
            if let Some(first) = origin.get(&board.name) {
                return Err(BoardError::DuplicateBoard {
                    file: file.to_owned(),
                    name: board.name,
                    first: first.clone(),
                });
            }
            origin.insert(board.name.clone(), file.to_owned());
            boards.insert(board.name.clone(), board);
        }
        Ok(Catalog { boards })
    }

    /// The board called `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Board> {
        self.boards.get(name)
    }

    /// Every board, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Board> {
        self.boards.values()
    }

    /// Number of boards.
    #[must_use]
    pub fn len(&self) -> usize {
        self.boards.len()
    }

    /// Whether the catalog has no boards.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.boards.is_empty()
    }

    /// The boards a DHCP client sending option 93 = `code` may be, sorted by name.
    /// Several boards can share a code (0 is x86 BIOS and every Raspberry Pi); the
    /// caller narrows with [`Identify`] (MAC OUI, option 97, option 60).
    #[must_use]
    pub fn for_dhcp_arch(&self, code: u16) -> Vec<&Board> {
        self.iter()
            .filter(|b| b.method_for_arch(code).is_some())
            .collect()
    }
}

/// What a DHCP client said about itself, as far as board recognition goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DhcpClient<'a> {
    /// Option 93 (first code, when the client lists several).
    pub arch_code: u16,
    /// `chaddr`.
    pub mac: [u8; 6],
    /// Option 60, if sent.
    pub vendor_class: Option<&'a [u8]>,
    /// Option 97 with its type byte, if sent.
    pub client_guid: Option<&'a [u8]>,
}

impl Catalog {
    /// The boards `client` may be, sorted by name:
    ///
    /// 1. boards whose methods claim `arch_code` ([`Catalog::for_dhcp_arch`]);
    /// 2. minus boards that list MAC OUIs none of which matches, unless the client
    ///    GUID matches the board's prefix (a Pi with an overridden MAC);
    /// 3. each remaining board scores one point per matching hint (MAC OUI, GUID
    ///    prefix, vendor class prefix); if any board scores, only the top scorers stay.
    ///
    /// So a DHCPDISCOVER with code 0 from `dc:a6:32:..` is a `raspberrypi-4`, not an
    /// `x86_64-bios`, while one from any other MAC stays `x86_64-bios`. More than one
    /// result means the catalog cannot tell them apart; the caller decides (e.g. by
    /// the machine's recorded board).
    #[must_use]
    pub fn boards_for_client(&self, client: &DhcpClient<'_>) -> Vec<&Board> {
        let scored: Vec<(usize, &Board)> = self
            .for_dhcp_arch(client.arch_code)
            .into_iter()
            .filter_map(|b| {
                let id = &b.identify;
                let mac = id.matches_mac(&client.mac);
                let guid = client
                    .client_guid
                    .is_some_and(|g| id.matches_client_guid(g));
                let vendor = client
                    .vendor_class
                    .is_some_and(|v| id.matches_vendor_class(v));
                if !id.mac_ouis.is_empty() && !mac && !guid {
                    return None;
                }
                Some((
                    usize::from(mac) + usize::from(guid) + usize::from(vendor),
                    b,
                ))
            })
            .collect();
        let best = scored.iter().map(|(s, _)| *s).max().unwrap_or(0);
        scored
            .into_iter()
            .filter(|(s, _)| *s == best)
            .map(|(_, b)| b)
            .collect()
    }
}

/// Reads at most [`MAX_BOARD_FILE_BYTES`] + 1 bytes, so an oversized (or endless)
/// file costs no more than that.
fn read_capped(path: &Path, name: &str) -> Result<String, BoardError> {
    let file = std::fs::File::open(path).map_err(|source| BoardError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let cap = u64::try_from(MAX_BOARD_FILE_BYTES).unwrap_or(u64::MAX);
    let mut bytes = Vec::new();
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| BoardError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() > MAX_BOARD_FILE_BYTES {
        let size = std::fs::metadata(path).map_or(cap + 1, |m| m.len().max(cap + 1));
        return Err(BoardError::TooLarge {
            file: name.to_owned(),
            size,
            limit: MAX_BOARD_FILE_BYTES,
        });
    }
    String::from_utf8(bytes).map_err(|_| BoardError::NotUtf8 {
        file: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_boards_all_load() {
        for (file, text) in BUILTIN {
            if let Err(e) = Board::from_toml(file, text) {
                panic!("shipped board does not load: {e}");
            }
        }
        let catalog = Catalog::builtin();
        assert_eq!(catalog.len(), BUILTIN.len());
    }

    #[test]
    fn builtin_lists_every_shipped_file() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let builtin: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
        assert_eq!(on_disk, builtin, "add new board files to BUILTIN in lib.rs");
    }
}
