//! Checks board files the way the server loads them and prints the resolved form, or
//! the error with its file, key and line:
//!
//! ```text
//! cargo run -p tugboot-boards --example check_board -- boards/raspberrypi-4.toml
//! cargo run -p tugboot-boards --example check_board            # the built-in catalog
//! ```

use std::process::ExitCode;

use tugboot_boards::{Board, Catalog};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        for b in Catalog::builtin().iter() {
            println!("{:<18} {:<7} {}", b.name, b.arch, b.description);
        }
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for path in args {
        let path = std::path::Path::new(&path);
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let loaded = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|text| Board::from_toml(name, &text).map_err(|e| e.to_string()));
        match loaded.and_then(|b| toml::to_string(&b).map_err(|e| format!("{name}: {e}"))) {
            Ok(resolved) => println!("# {name}: ok\n{resolved}"),
            Err(e) => {
                eprintln!("{e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
