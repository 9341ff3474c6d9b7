//! Any bytes as a board file: loading must return Ok or a BoardError, never panic,
//! and an error must render (its Display walks the key-path and position code).
//! Seeds: the shipped boards/*.toml. Every rule runs before the name-matches-file
//! check, so a fixed file name still reaches all of them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tugboot_boards::Board;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Board::from_toml("fuzz.toml", text) {
        Ok(board) => assert!(!board.boot.is_empty()),
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
