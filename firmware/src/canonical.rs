//! The canonical JSON encoding that signatures cover: RFC 8785 (JCS) restricted to the subset the
//! format uses. Objects with keys sorted, no insignificant whitespace, strings with JSON's minimal
//! escaping, integers only (|n| ≤ 2^53 − 1), no floats, no nulls.
//!
//! Keys are sorted here explicitly rather than relying on `serde_json::Map` being a `BTreeMap`: a
//! `preserve_order` feature switched on anywhere in a dependency tree would silently change that.
//! Byte order equals JCS's UTF-16 order for the ASCII keys the format allows, and is a total order
//! for any other key, so the encoding stays a function of the value.

use serde_json::Value;

use crate::error::FormatError;

/// Largest integer every JSON implementation (IEEE 754 doubles included) reads exactly.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Encodes a JSON value canonically, refusing what the subset does not allow.
pub fn encode(value: &Value) -> Result<Vec<u8>, FormatError> {
    let mut out = Vec::with_capacity(512);
    write_value(value, &mut out)?;
    Ok(out)
}

/// Serializes `value` with serde and encodes it canonically.
pub fn to_canonical<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, FormatError> {
    encode(&serde_json::to_value(value)?)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), FormatError> {
    match value {
        Value::Null => return Err(FormatError::Null),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                if u > MAX_SAFE_INTEGER {
                    return Err(FormatError::IntegerRange { field: "number" });
                }
                out.extend_from_slice(u.to_string().as_bytes());
            } else if let Some(i) = n.as_i64() {
                if i.unsigned_abs() > MAX_SAFE_INTEGER {
                    return Err(FormatError::IntegerRange { field: "number" });
                }
                out.extend_from_slice(i.to_string().as_bytes());
            } else {
                return Err(FormatError::Float);
            }
        }
        Value::String(s) => write_string(s, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out)?;
                out.push(b':');
                write_value(item, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// serde_json's string escaping is exactly JCS's: `"` and `\` escaped, the controls with a short
/// form (`\b \t \n \f \r`) use it, other controls `\u00xx` in lowercase hex, nothing else escaped.
fn write_string(s: &str, out: &mut Vec<u8>) -> Result<(), FormatError> {
    serde_json::to_writer(out, s)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> Result<String, FormatError> {
        let v: Value = serde_json::from_str(text).unwrap();
        encode(&v).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn sorts_and_strips() {
        assert_eq!(
            canon(r#" { "b" : [ 1 , true ], "a":{"z":"x","y":-3} } "#).unwrap(),
            r#"{"a":{"y":-3,"z":"x"},"b":[1,true]}"#
        );
    }

    #[test]
    fn minimal_escaping_like_jcs() {
        // RFC 8785 §3.2.2.2 examples: controls, quote, backslash; '/' and non-ASCII stay literal.
        let text = "\"\\u0000\\u0008\\u0009\\u000a\\u000c\\u000d\\u001f\\u007f\\\"\\\\\\/é€😀\"";
        assert_eq!(
            canon(text).unwrap(),
            "\"\\u0000\\b\\t\\n\\f\\r\\u001f\u{7f}\\\"\\\\/é€😀\""
        );
    }

    #[test]
    fn refuses_outside_subset() {
        assert!(matches!(canon("1.5"), Err(FormatError::Float)));
        assert!(matches!(canon("1e3"), Err(FormatError::Float)));
        assert!(matches!(canon("1.0"), Err(FormatError::Float)));
        assert!(matches!(canon("null"), Err(FormatError::Null)));
        assert!(matches!(
            canon("[9007199254740992]"),
            Err(FormatError::IntegerRange { .. })
        ));
        assert!(matches!(
            canon("-9007199254740992"),
            Err(FormatError::IntegerRange { .. })
        ));
        assert_eq!(canon("9007199254740991").unwrap(), "9007199254740991");
        assert_eq!(canon("-9007199254740991").unwrap(), "-9007199254740991");
    }
}
