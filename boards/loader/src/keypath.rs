//! Names the TOML key a parse error points at.
//!
//! The `toml` crate reports a byte span and a message but keeps the key path to itself,
//! so this module re-reads the text up to the span: table headers (`[a.b]`,
//! `[[boot]]` with its index) and the last `key =` line give a path such as
//! `boot[1].arch_codes`. It is a reader of TOML's line structure, not a TOML parser:
//! a multi-line string containing `[x]` or `k =` can mislead it, and then the path is
//! only approximate. Line and column come from the span and are always exact.

use std::collections::BTreeMap;

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The TOML path of the key at byte `offset`; empty for the top level. Inside an
/// array of inline tables (`env = [{ .. }, { .. }]`) the element index is added.
pub(crate) fn key_path_at(text: &str, offset: usize) -> String {
    path_at(text, offset, false)
}

/// The path for a "missing field" error, whose span covers the table that lacks the
/// key: the enclosing table, or the inline table the span starts in.
pub(crate) fn table_path_at(text: &str, offset: usize) -> String {
    path_at(text, offset, true)
}

fn path_at(text: &str, offset: usize, table_only: bool) -> String {
    let offset = floor_char_boundary(text, offset);
    let spot = locate(text, offset);
    let in_value = spot.value_start.is_some_and(|v| offset >= v);
    if !in_value {
        return if table_only {
            spot.table
        } else {
            join(&spot.table, spot.key.as_deref())
        };
    }
    let mut path = join(&spot.table, spot.key.as_deref());
    if let Some(index) = spot
        .value_start
        .and_then(|v| inline_table_index(text, v, offset))
    {
        path.push_str(&format!("[{index}]"));
    }
    path
}

/// In `key = [ {..}, {..} ]`, which inline table `offset` is in (counting `{`s).
fn inline_table_index(text: &str, value_start: usize, offset: usize) -> Option<usize> {
    let value = text.get(value_start..offset)?;
    if !value.trim_start().starts_with('[') {
        return None;
    }
    let mut braces = value.matches('{').count();
    if text.get(offset..).is_some_and(|rest| rest.starts_with('{')) {
        braces += 1;
    }
    braces.checked_sub(1)
}

struct Spot {
    /// Path of the enclosing `[table]` / `[[array]]` element.
    table: String,
    /// Key of the last `key =` line in that table up to the offset.
    key: Option<String>,
    /// Byte offset just after that key's `=`.
    value_start: Option<usize>,
}

fn locate(text: &str, offset: usize) -> Spot {
    // Index of the current element of every array of tables seen so far.
    let mut arrays: BTreeMap<String, usize> = BTreeMap::new();
    let mut spot = Spot {
        table: String::new(),
        key: None,
        value_start: None,
    };
    let mut line_start = 0;
    for line in text.split_inclusive('\n') {
        let line_end = line_start + line.len();
        let is_error_line = offset < line_end || line_end == text.len();
        let indent = line.len() - line.trim_start().len();
        let trimmed = &line[indent..];
        if let Some(name) = header(trimmed, "[[", "]]") {
            let count = arrays.entry(name.clone()).or_insert(0);
            *count += 1;
            // A new element of `boot` starts fresh arrays nested under it.
            let nested = format!("{name}.");
            arrays.retain(|k, _| !k.starts_with(&nested));
            spot.table = indexed(&name, &arrays);
            spot.key = None;
            spot.value_start = None;
        } else if let Some(name) = header(trimmed, "[", "]") {
            spot.table = indexed(&name, &arrays);
            spot.key = None;
            spot.value_start = None;
        } else if let Some((key, eq)) = assigned_key(trimmed) {
            spot.key = Some(key);
            spot.value_start = Some(line_start + indent + eq + 1);
        }
        if is_error_line {
            break;
        }
        line_start = line_end;
    }
    spot
}

fn join(table: &str, key: Option<&str>) -> String {
    match (table.is_empty(), key) {
        (_, None) => table.to_owned(),
        (true, Some(k)) => k.to_owned(),
        (false, Some(k)) => format!("{table}.{k}"),
    }
}

/// `boot.rpi` with `boot` an array of tables at element 2 → `boot[2].rpi`.
fn indexed(name: &str, arrays: &BTreeMap<String, usize>) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    for (i, part) in name.split('.').enumerate() {
        if i > 0 {
            out.push('.');
            prefix.push('.');
        }
        prefix.push_str(part);
        out.push_str(part);
        if let Some(count) = arrays.get(&prefix) {
            out.push_str(&format!("[{}]", count.saturating_sub(1)));
        }
    }
    out
}

/// The dotted name inside a `[..]` or `[[..]]` header line, normalised.
fn header(line: &str, open: &str, close: &str) -> Option<String> {
    let rest = line.strip_prefix(open)?;
    // `[[` also starts with `[`: never read an array header as a table header.
    if open == "[" && rest.starts_with('[') {
        return None;
    }
    let end = rest.find(close)?;
    let name = normalise_key(&rest[..end]);
    (!name.is_empty()).then_some(name)
}

/// The key of a `key = value` line (dotted keys kept) and the position of its `=`.
fn assigned_key(line: &str) -> Option<(String, usize)> {
    let first = line.chars().next()?;
    if !(first.is_ascii_alphanumeric()
        || first == '_'
        || first == '-'
        || first == '"'
        || first == '\'')
    {
        return None;
    }
    let eq = line.find('=')?;
    let key = normalise_key(&line[..eq]);
    (!key.is_empty()).then_some((key, eq))
}

/// `a . "b" ` → `a.b`.
fn normalise_key(raw: &str) -> String {
    raw.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\''))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name = \"x\"\n\n[kernel]\nformat = 1\n\n[[boot]]\nmethod = \"a\"\n\n[[boot]]\narch_codes = [\n  1,\n  \"two\",\n]\n[boot.rpi]\noption43 = 5\n";

    fn path_of(needle: &str) -> String {
        key_path_at(DOC, DOC.find(needle).unwrap())
    }

    #[test]
    fn top_level_key() {
        assert_eq!(path_of("\"x\""), "name");
    }

    #[test]
    fn table_key() {
        assert_eq!(path_of("1\n\n[[boot]]"), "kernel.format");
    }

    #[test]
    fn array_of_tables_index() {
        assert_eq!(path_of("\"a\""), "boot[0].method");
        assert_eq!(path_of("\"two\""), "boot[1].arch_codes");
    }

    #[test]
    fn subtable_of_array_element() {
        assert_eq!(path_of("5\n"), "boot[1].rpi.option43");
    }

    #[test]
    fn table_path_ignores_keys() {
        assert_eq!(table_path_at(DOC, 0), "");
        assert_eq!(path_of("\"two\""), "boot[1].arch_codes");
        // In a value the key is part of the path (the value may be an inline table).
        assert_eq!(
            table_path_at(DOC, DOC.find("\"two\"").unwrap()),
            "boot[1].arch_codes"
        );
        assert_eq!(table_path_at(DOC, DOC.find("method").unwrap()), "boot[0]");
    }

    #[test]
    fn inline_tables_in_an_array() {
        let doc = "[bootloader]\nenv = [\n  { device = \"/a\" },\n  { device = 5 },\n]\n";
        let second = doc.find("{ device = 5").unwrap();
        assert_eq!(table_path_at(doc, second), "bootloader.env[1]");
        assert_eq!(
            key_path_at(doc, doc.find('5').unwrap()),
            "bootloader.env[1]"
        );
        assert_eq!(
            table_path_at(doc, doc.find("{ device = \"/a").unwrap()),
            "bootloader.env[0]"
        );
        // The key itself, before `=`: the table for a missing field, the key otherwise.
        assert_eq!(table_path_at(doc, doc.find("env").unwrap()), "bootloader");
        assert_eq!(key_path_at(doc, doc.find("env").unwrap()), "bootloader.env");
    }

    #[test]
    fn header_line_gives_table() {
        assert_eq!(path_of("[kernel]"), "kernel");
    }

    #[test]
    fn line_column_counts_chars() {
        let text = "a = 1\nb = \"é\" x\n";
        let at = text.find('x').unwrap();
        assert_eq!(line_column(text, at), (2, 9));
        // Inside a multi-byte character: rounds down, never panics.
        let e = text.find('é').unwrap();
        assert_eq!(line_column(text, e + 1), (2, 6));
        assert_eq!(line_column(text, 10_000), (3, 1));
    }

    #[test]
    fn never_panics_on_odd_offsets() {
        for text in ["", "[", "[[", "[[]]", "= 1", "é", "[a.\"é\"]\nk=1"] {
            for off in 0..=text.len() + 2 {
                let _ = key_path_at(text, off);
                let _ = line_column(text, off);
            }
        }
    }
}
