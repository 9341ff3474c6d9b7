//! The entry function of the `efi_load_option` fuzz target (and of the seed test).

use super::efivarfs::{encode_variable, parse_variable};
use super::load_option::{self, encode_device_path, parse_device_path};
use crate::bootloader::fuzzing::RoundTripMismatch;

fn ensure(ok: bool, what: &'static str) -> Result<(), RoundTripMismatch> {
    if ok {
        Ok(())
    } else {
        Err(RoundTripMismatch { what })
    }
}

/// Takes an efivarfs file (attributes + data) or a bare `EFI_LOAD_OPTION`: parses the
/// variable and the load option either way; whatever parses must re-encode to the same bytes
/// (option, device path node by node), and formatting must not panic.
///
/// Returns whether a load option was found.
///
/// # Errors
/// [`RoundTripMismatch`] if a property fails.
pub fn load_option(data: &[u8]) -> Result<bool, RoundTripMismatch> {
    if let Ok(var) = parse_variable(data) {
        ensure(encode_variable(&var) == data, "variable: re-encode differs")?;
        ensure(
            var.as_u16_list().is_ok() == var.data.len().is_multiple_of(2),
            "variable: u16 list",
        )?;
        ensure(
            var.as_u16().is_ok() == (var.data.len() == 2),
            "variable: u16",
        )?;
    }
    let mut accepted = false;
    for candidate in [Some(data), data.get(4..)].into_iter().flatten() {
        let Ok(option) = load_option::parse(candidate) else {
            continue;
        };
        accepted = true;
        ensure(
            option.encode().is_ok_and(|b| b == candidate),
            "load option: re-encode differs",
        )?;
        let nodes = parse_device_path(&option.file_path_list).map_err(|_| RoundTripMismatch {
            what: "load option: accepted path list does not parse",
        })?;
        ensure(
            encode_device_path(&nodes).is_ok_and(|b| b == option.file_path_list),
            "device path: re-encode differs",
        )?;
        let text = option.to_string();
        ensure(
            text.starts_with(&option.description()),
            "display: no description",
        )?;
        let _ = option.file_path();
    }
    Ok(accepted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_or_bare() {
        let bare = [1, 0, 0, 0, 4, 0, b'x', 0, 0, 0, 0x7f, 0xff, 4, 0];
        assert_eq!(load_option(&bare), Ok(true));
        let mut file = vec![7, 0, 0, 0];
        file.extend_from_slice(&bare);
        assert_eq!(load_option(&file), Ok(true));
        assert_eq!(load_option(&[7, 0, 0, 0, 1]), Ok(false));
    }
}
