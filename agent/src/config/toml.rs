//! The TOML the agent's configuration uses, parsed here instead of with the `toml` crate: that
//! crate (with `toml_edit` and `winnow`) cost about 115 KB of the static binary, the largest
//! single item after TLS, for a file of a few dozen lines.
//!
//! Supported, as in TOML 1.0: comments; `[table]` and `[[array.of.tables]]` headers with bare
//! or quoted, dotted keys; `key = value` with dotted keys; basic strings (all escapes),
//! literal strings, and both multi-line forms; integers (decimal with `_`, `0x`, `0o`, `0b`);
//! booleans; arrays (over several lines, trailing comma); inline tables. Not supported (an
//! error naming the line): floats and dates, which the configuration has no use for. Keys are
//! defined once; a table is opened once.
//!
//! [`from_str`] feeds the parsed document to serde through a deserializer that knows where
//! each value came from, so every error names the line and the dotted key:
//! `line 14, key `bootloader.tries`: invalid value: integer `9`, expected …`.

use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer as _, MapAccess, SeqAccess, Visitor};

/// A configuration that is not TOML, or not of the expected shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TomlError {
    /// One line: where, and what.
    pub message: String,
    located: bool,
}

impl fmt::Display for TomlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TomlError {}

impl de::Error for TomlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            message: msg.to_string(),
            located: false,
        }
    }
}

impl TomlError {
    fn at(line: usize, msg: impl fmt::Display) -> Self {
        Self {
            message: format!("line {line}: {msg}"),
            located: true,
        }
    }

    /// Adds where, unless an inner value already said.
    fn locate(self, line: usize, path: &str) -> Self {
        if self.located {
            return self;
        }
        let at = if path.is_empty() {
            format!("line {line}")
        } else {
            format!("line {line}, key `{path}`")
        };
        Self {
            message: format!("{at}: {}", self.message),
            located: true,
        }
    }
}

/// A parsed value and the line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based.
    pub line: usize,
    /// The value.
    pub value: Value,
}

/// A TOML value (the kinds the agent reads).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
    /// An array.
    Array(Vec<Node>),
    /// A table, in file order.
    Table(Vec<(String, Node)>, TableKind),
}

/// How a table came to be: it decides what may be added to it later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// Made by a `[header]`: closed to another header of the same name.
    Header,
    /// Made implicitly as the parent of a header or a dotted key.
    Implicit,
    /// `{ … }`: complete as written.
    Inline,
    /// An element of `[[array]]`.
    ArrayElement,
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'a> {
    text: &'a [u8],
    pos: usize,
    line: usize,
}

type Result<T> = std::result::Result<T, TomlError>;

fn is_bare(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

impl<'a> Parser<'a> {
    fn err<T>(&self, msg: impl fmt::Display) -> Result<T> {
        Err(TomlError::at(self.line, msg))
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.text.get(self.pos + ahead).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        if b == b'\n' {
            self.line += 1;
        }
        Some(b)
    }

    fn starts_with(&self, s: &[u8]) -> bool {
        self.text.get(self.pos..).is_some_and(|t| t.starts_with(s))
    }

    /// Spaces and tabs.
    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// A comment to the end of the line (not the newline).
    fn comment(&mut self) -> Result<()> {
        if self.peek() == Some(b'#') {
            while let Some(b) = self.peek() {
                if b == b'\n' {
                    break;
                }
                if b < 0x20 && b != b'\t' && !(b == b'\r' && self.peek_at(1) == Some(b'\n')) {
                    return self.err("control character in a comment");
                }
                self.pos += 1;
            }
        }
        Ok(())
    }

    /// The end of a line: spaces, a comment, then a newline or the end.
    fn end_of_line(&mut self) -> Result<()> {
        self.space();
        self.comment()?;
        match self.peek() {
            None => Ok(()),
            Some(b'\n') => {
                self.bump();
                Ok(())
            }
            Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                self.pos += 1;
                self.bump();
                Ok(())
            }
            Some(_) => self.err("expected the end of the line"),
        }
    }

    /// Whitespace, newlines and comments (inside arrays).
    fn blank(&mut self) -> Result<()> {
        loop {
            self.space();
            self.comment()?;
            match self.peek() {
                Some(b'\n') => {
                    self.bump();
                }
                Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                    self.pos += 1;
                    self.bump();
                }
                _ => return Ok(()),
            }
        }
    }

    fn key_part(&mut self) -> Result<String> {
        match self.peek() {
            Some(b'"') => self.basic_string(),
            Some(b'\'') => self.literal_string(),
            Some(b) if is_bare(b) => {
                let start = self.pos;
                while self.peek().is_some_and(is_bare) {
                    self.pos += 1;
                }
                Ok(
                    String::from_utf8_lossy(self.text.get(start..self.pos).unwrap_or_default())
                        .into_owned(),
                )
            }
            _ => self.err("expected a key"),
        }
    }

    /// `a.b."c"`.
    fn key(&mut self) -> Result<Vec<String>> {
        let mut parts = vec![self.key_part()?];
        loop {
            self.space();
            if self.peek() != Some(b'.') {
                return Ok(parts);
            }
            self.pos += 1;
            self.space();
            parts.push(self.key_part()?);
        }
    }

    fn hex_escape(&mut self, digits: usize) -> Result<char> {
        let text = self
            .text
            .get(self.pos..self.pos + digits)
            .filter(|t| t.iter().all(u8::is_ascii_hexdigit));
        let Some(text) = text else {
            return self.err("bad unicode escape");
        };
        let code = u32::from_str_radix(std::str::from_utf8(text).unwrap_or("x"), 16);
        self.pos += digits;
        match code.ok().and_then(char::from_u32) {
            Some(c) => Ok(c),
            None => self.err("unicode escape is not a scalar value"),
        }
    }

    /// Appends one character of string content, checking it is allowed in a string.
    fn string_char(&mut self, out: &mut Vec<u8>, multiline: bool) -> Result<()> {
        let Some(b) = self.bump() else {
            return self.err("unterminated string");
        };
        let ok = match b {
            b'\t' => true,
            b'\n' => multiline,
            b'\r' => multiline && self.peek() == Some(b'\n'),
            0..=0x1f | 0x7f => false,
            _ => true,
        };
        if !ok {
            return self.err(if b == b'\n' {
                "newline in a single-line string"
            } else {
                "control character in a string"
            });
        }
        out.push(b);
        Ok(())
    }

    fn finish_string(&self, bytes: Vec<u8>) -> Result<String> {
        String::from_utf8(bytes).or_else(|_| self.err("string is not UTF-8"))
    }

    fn basic_string(&mut self) -> Result<String> {
        let multiline = self.starts_with(b"\"\"\"");
        self.pos += if multiline { 3 } else { 1 };
        if multiline {
            self.skip_first_newline();
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'"') if !multiline => {
                    self.pos += 1;
                    return self.finish_string(out);
                }
                Some(b'"') if self.starts_with(b"\"\"\"") => {
                    // Up to two quotes may end the content before the closing three.
                    let mut quotes = 3;
                    while self.peek_at(quotes) == Some(b'"') && quotes < 5 {
                        quotes += 1;
                    }
                    out.extend(std::iter::repeat_n(b'"', quotes - 3));
                    self.pos += quotes;
                    return self.finish_string(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(e) = self.bump() else {
                        return self.err("unterminated string");
                    };
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
                        b'e' => out.push(0x1b),
                        b'u' | b'U' => {
                            let c = self.hex_escape(if e == b'u' { 4 } else { 8 })?;
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        }
                        b' ' | b'\t' | b'\r' | b'\n' if multiline => {
                            // A line-ending backslash: drop whitespace up to the next text.
                            self.pos -= 1;
                            if e == b'\n' {
                                self.line -= 1;
                            }
                            self.space();
                            if !matches!(self.peek(), Some(b'\n' | b'\r')) {
                                return self.err("bad escape in a string");
                            }
                            self.blank_lines();
                        }
                        _ => return self.err("bad escape in a string"),
                    }
                }
                Some(_) => self.string_char(&mut out, multiline)?,
            }
        }
    }

    fn skip_first_newline(&mut self) {
        if self.peek() == Some(b'\n') {
            self.bump();
        } else if self.starts_with(b"\r\n") {
            self.pos += 1;
            self.bump();
        }
    }

    /// Whitespace and newlines (after a line-ending backslash).
    fn blank_lines(&mut self) {
        while let Some(b) = self.peek() {
            if matches!(b, b' ' | b'\t' | b'\n') || (b == b'\r' && self.peek_at(1) == Some(b'\n')) {
                self.bump();
            } else {
                break;
            }
        }
    }

    fn literal_string(&mut self) -> Result<String> {
        let multiline = self.starts_with(b"'''");
        self.pos += if multiline { 3 } else { 1 };
        if multiline {
            self.skip_first_newline();
        }
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated string"),
                Some(b'\'') if !multiline => {
                    self.pos += 1;
                    return self.finish_string(out);
                }
                Some(b'\'') if self.starts_with(b"'''") => {
                    let mut quotes = 3;
                    while self.peek_at(quotes) == Some(b'\'') && quotes < 5 {
                        quotes += 1;
                    }
                    out.extend(std::iter::repeat_n(b'\'', quotes - 3));
                    self.pos += quotes;
                    return self.finish_string(out);
                }
                Some(_) => self.string_char(&mut out, multiline)?,
            }
        }
    }

    fn integer(&mut self) -> Result<i64> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
        {
            self.pos += 1;
        }
        let word = String::from_utf8_lossy(self.text.get(start..self.pos).unwrap_or_default())
            .into_owned();
        let bad = || TomlError::at(self.line, format!("{word:?} is not an integer"));
        let date = word.get(1..).is_some_and(|w| w.contains('-')) && !word.contains('_');
        if word.contains(['.', 'e', 'E']) && !word.starts_with("0x") || word.contains(':') || date {
            return Err(TomlError::at(
                self.line,
                format!("{word:?}: floats and dates are not used in this configuration"),
            ));
        }
        // Underscores only between digits.
        if word.starts_with('_')
            || word.ends_with('_')
            || word.contains("__")
            || word.contains("_x")
            || word.contains("x_")
        {
            return Err(bad());
        }
        let clean: String = word.chars().filter(|&c| c != '_').collect();
        let (neg, body) = match clean.as_bytes().first() {
            Some(b'-') => (true, clean.get(1..).unwrap_or_default()),
            Some(b'+') => (false, clean.get(1..).unwrap_or_default()),
            _ => (false, clean.as_str()),
        };
        let (radix, digits) = if let Some(d) = body.strip_prefix("0x") {
            (16, d)
        } else if let Some(d) = body.strip_prefix("0o") {
            (8, d)
        } else if let Some(d) = body.strip_prefix("0b") {
            (2, d)
        } else {
            if body.len() > 1 && body.starts_with('0') {
                return Err(bad()); // leading zeros
            }
            (10, body)
        };
        if digits.is_empty()
            || (radix != 10 && word.starts_with(['+', '-']))
            || !digits.chars().all(|c| c.is_digit(radix))
        {
            return Err(bad());
        }
        let magnitude = u64::from_str_radix(digits, radix).map_err(|_| bad())?;
        let value = if neg {
            0i64.checked_sub_unsigned(magnitude)
        } else {
            i64::try_from(magnitude).ok()
        };
        value.ok_or_else(bad)
    }

    fn value(&mut self, depth: usize) -> Result<Node> {
        if depth > 32 {
            return self.err("values nested too deeply");
        }
        let line = self.line;
        let value = match self.peek() {
            Some(b'"') => Value::Str(self.basic_string()?),
            Some(b'\'') => Value::Str(self.literal_string()?),
            Some(b't') if self.starts_with(b"true") && !self.peek_at(4).is_some_and(is_bare) => {
                self.pos += 4;
                Value::Bool(true)
            }
            Some(b'f') if self.starts_with(b"false") && !self.peek_at(5).is_some_and(is_bare) => {
                self.pos += 5;
                Value::Bool(false)
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                loop {
                    self.blank()?;
                    if self.peek() == Some(b']') {
                        self.pos += 1;
                        break;
                    }
                    items.push(self.value(depth + 1)?);
                    self.blank()?;
                    match self.peek() {
                        Some(b',') => self.pos += 1,
                        Some(b']') => {
                            self.pos += 1;
                            break;
                        }
                        _ => return self.err("expected `,` or `]` in an array"),
                    }
                }
                Value::Array(items)
            }
            Some(b'{') => {
                self.pos += 1;
                let mut entries = Vec::new();
                self.space();
                if self.peek() == Some(b'}') {
                    self.pos += 1;
                } else {
                    loop {
                        self.space();
                        let key = self.key()?;
                        self.space();
                        if self.bump() != Some(b'=') {
                            return self.err("expected `=` after a key");
                        }
                        self.space();
                        let v = self.value(depth + 1)?;
                        insert(&mut entries, &key, v, line)?;
                        self.space();
                        match self.bump() {
                            Some(b',') => {}
                            Some(b'}') => break,
                            _ => return self.err("expected `,` or `}` in an inline table"),
                        }
                    }
                }
                Value::Table(entries, TableKind::Inline)
            }
            Some(b) if b.is_ascii_digit() || b == b'+' || b == b'-' => Value::Int(self.integer()?),
            Some(b'i' | b'n') => return self.err("floats are not used in this configuration"),
            _ => return self.err("expected a value"),
        };
        Ok(Node { line, value })
    }
}

/// Inserts `value` at the dotted `key` below `table`, making implicit tables on the way.
fn insert(table: &mut Vec<(String, Node)>, key: &[String], value: Node, line: usize) -> Result<()> {
    let Some((last, parents)) = key.split_last() else {
        return Err(TomlError::at(line, "empty key"));
    };
    let table = descend(table, parents, line, true)?;
    if table.iter().any(|(k, _)| k == last) {
        return Err(TomlError::at(
            line,
            format!("key `{}` is defined twice", key.join(".")),
        ));
    }
    table.push((last.clone(), value));
    Ok(())
}

/// The table at `path` below `table`, made (implicitly) where missing. With `dotted`, the path
/// comes from a dotted key, which may not reopen a table made by a header.
fn descend<'t>(
    mut table: &'t mut Vec<(String, Node)>,
    path: &[String],
    line: usize,
    dotted: bool,
) -> Result<&'t mut Vec<(String, Node)>> {
    for (i, part) in path.iter().enumerate() {
        let here = || path.get(..=i).unwrap_or_default().join(".");
        let index = match table.iter().position(|(k, _)| k == part) {
            Some(i) => i,
            None => {
                table.push((
                    part.clone(),
                    Node {
                        line,
                        value: Value::Table(Vec::new(), TableKind::Implicit),
                    },
                ));
                table.len() - 1
            }
        };
        let node = &mut table
            .get_mut(index)
            .ok_or_else(|| TomlError::at(line, "internal"))?
            .1;
        table = match &mut node.value {
            Value::Table(t, kind) => {
                if *kind == TableKind::Inline || (dotted && *kind == TableKind::Header) {
                    return Err(TomlError::at(
                        line,
                        format!("table `{}` cannot be extended here", here()),
                    ));
                }
                t
            }
            // The last element of an array of tables.
            Value::Array(items) => match items.last_mut().map(|n| &mut n.value) {
                Some(Value::Table(t, TableKind::ArrayElement)) if !dotted => t,
                _ => {
                    return Err(TomlError::at(line, format!("`{}` is not a table", here())));
                }
            },
            _ => {
                return Err(TomlError::at(line, format!("`{}` is not a table", here())));
            }
        };
    }
    Ok(table)
}

/// Parses a document into its root table.
///
/// # Errors
/// [`TomlError`] naming the line.
pub fn parse(text: &str) -> Result<Node> {
    let mut p = Parser {
        text: text.as_bytes(),
        pos: 0,
        line: 1,
    };
    let mut root: Vec<(String, Node)> = Vec::new();
    // The path of the current `[table]` / `[[array]]`; empty for the root.
    let mut current: Vec<String> = Vec::new();
    loop {
        p.blank()?;
        let Some(b) = p.peek() else { break };
        let line = p.line;
        if b == b'[' {
            let array = p.starts_with(b"[[");
            p.pos += if array { 2 } else { 1 };
            p.space();
            let key = p.key()?;
            p.space();
            let close: &[u8] = if array { b"]]" } else { b"]" };
            if !p.starts_with(close) {
                return p.err("expected `]` to close the table header");
            }
            p.pos += close.len();
            p.end_of_line()?;
            let Some((last, parents)) = key.split_last() else {
                return p.err("empty table name");
            };
            let parent = descend(&mut root, parents, line, false)?;
            let existing = parent.iter_mut().find(|(k, _)| k == last).map(|(_, n)| n);
            match (array, existing) {
                (true, None) => parent.push((
                    last.clone(),
                    Node {
                        line,
                        value: Value::Array(vec![Node {
                            line,
                            value: Value::Table(Vec::new(), TableKind::ArrayElement),
                        }]),
                    },
                )),
                (true, Some(n)) => match &mut n.value {
                    Value::Array(items)
                        if items.iter().all(|i| {
                            matches!(i.value, Value::Table(_, TableKind::ArrayElement))
                        }) =>
                    {
                        items.push(Node {
                            line,
                            value: Value::Table(Vec::new(), TableKind::ArrayElement),
                        });
                    }
                    _ => {
                        return p.err(format!("`{}` is not an array of tables", key.join(".")));
                    }
                },
                (false, None) => parent.push((
                    last.clone(),
                    Node {
                        line,
                        value: Value::Table(Vec::new(), TableKind::Header),
                    },
                )),
                (false, Some(n)) => match &mut n.value {
                    Value::Table(_, kind) if *kind == TableKind::Implicit => {
                        *kind = TableKind::Header;
                    }
                    _ => return p.err(format!("table `{}` is defined twice", key.join("."))),
                },
            }
            current = key;
            continue;
        }
        let key = p.key()?;
        p.space();
        if p.bump() != Some(b'=') {
            return p.err("expected `=` after a key");
        }
        p.space();
        let value = p.value(0)?;
        p.end_of_line()?;
        let table = descend(&mut root, &current, line, false)?;
        insert(table, &key, value, line)?;
    }
    Ok(Node {
        line: 1,
        value: Value::Table(root, TableKind::Header),
    })
}

/// Parses `text` and deserializes it as `T`.
///
/// # Errors
/// [`TomlError`]: the line and, for errors of shape, the dotted key.
pub fn from_str<T: de::DeserializeOwned>(text: &str) -> Result<T> {
    let root = parse(text)?;
    T::deserialize(NodeDe {
        node: &root,
        path: String::new(),
    })
}

/// The line of the dotted key `a.b.c` in a parsed document; for a key that is not written
/// (a default), the line of the deepest table on its path that is, if any.
#[must_use]
pub fn line_of(root: &Node, dotted: &str) -> Option<usize> {
    let mut node = root;
    let mut found = None;
    for part in dotted.split('.') {
        let Value::Table(entries, _) = &node.value else {
            break;
        };
        let Some((_, child)) = entries.iter().find(|(k, _)| k == part) else {
            break;
        };
        node = child;
        found = Some(child.line);
    }
    found
}

// ---------------------------------------------------------------------------------------------
// serde

/// Deserializes one node, knowing its dotted path for errors.
struct NodeDe<'a> {
    node: &'a Node,
    path: String,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de> de::Deserializer<'de> for NodeDe<'_> {
    type Error = TomlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let (line, path) = (self.node.line, self.path.clone());
        let result = match &self.node.value {
            Value::Str(s) => visitor.visit_str(s),
            Value::Int(i) => visitor.visit_i64(*i),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Array(items) => visitor.visit_seq(Seq {
                items: items.iter(),
                index: 0,
                path: &self.path,
            }),
            Value::Table(entries, _) => visitor.visit_map(Map {
                entries: entries.iter(),
                value: None,
                path: &self.path,
            }),
        };
        result.map_err(|e| e.locate(line, &path))
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        // Unit variants spelt as strings (externally tagged enums are not used otherwise).
        let (line, path) = (self.node.line, self.path.clone());
        match &self.node.value {
            Value::Str(s) => visitor
                .visit_enum(s.as_str().into_deserializer())
                .map_err(|e: TomlError| e.locate(line, &path)),
            _ => Err(TomlError::at(
                line,
                format!("key `{path}`: expected a string"),
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

struct Seq<'a, 'p> {
    items: std::slice::Iter<'a, Node>,
    index: usize,
    path: &'p str,
}

impl<'de> SeqAccess<'de> for Seq<'_, '_> {
    type Error = TomlError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        let Some(node) = self.items.next() else {
            return Ok(None);
        };
        let path = format!("{}[{}]", self.path, self.index);
        self.index += 1;
        seed.deserialize(NodeDe { node, path }).map(Some)
    }
}

struct Map<'a, 'p> {
    entries: std::slice::Iter<'a, (String, Node)>,
    value: Option<(&'a str, &'a Node)>,
    path: &'p str,
}

impl<'de> MapAccess<'de> for Map<'_, '_> {
    type Error = TomlError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        let Some((key, node)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some((key, node));
        seed.deserialize(key.as_str().into_deserializer())
            .map(Some)
            .map_err(|e: TomlError| e.locate(node.line, &child(self.path, key)))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let Some((key, node)) = self.value.take() else {
            return Err(de::Error::custom("value without a key"));
        };
        let path = child(self.path, key);
        // Errors raised after the value's own deserializer returned (an internally tagged
        // enum decides its variant from buffered content) are placed here.
        seed.deserialize(NodeDe {
            node,
            path: path.clone(),
        })
        .map_err(|e| e.locate(node.line, &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn table(text: &str) -> Vec<(String, Node)> {
        match parse(text).unwrap().value {
            Value::Table(t, _) => t,
            other => panic!("{other:?}"),
        }
    }

    fn get<'a>(t: &'a [(String, Node)], k: &str) -> &'a Value {
        &t.iter().find(|(key, _)| key == k).unwrap().1.value
    }

    #[test]
    fn values() {
        let t = table(
            "a = \"x\\ty\\u00e9\\U0001F600\" # c\n\
             b = 'C:\\\\raw'\n\
             c = -1_000\nd = 0xff\ne = 0o17\nf = 0b101\ng = +7\n\
             h = true\ni = false\n\
             j = [ 1, 2,\n  3, # three\n]\n\
             k = { x = 1, y.z = \"w\" }\n\
             l = \"\"\"\nline one\n  line \\\n   two\"\"\"\n\
             m = '''x''y'''\n\
             \"quoted key\" = 1\n\
             n.o = 2\n",
        );
        assert_eq!(get(&t, "a"), &Value::Str("x\ty\u{e9}\u{1F600}".into()));
        assert_eq!(get(&t, "b"), &Value::Str("C:\\\\raw".into()));
        assert_eq!(get(&t, "c"), &Value::Int(-1000));
        assert_eq!(get(&t, "d"), &Value::Int(255));
        assert_eq!(get(&t, "e"), &Value::Int(15));
        assert_eq!(get(&t, "f"), &Value::Int(5));
        assert_eq!(get(&t, "g"), &Value::Int(7));
        assert_eq!(get(&t, "h"), &Value::Bool(true));
        let Value::Array(j) = get(&t, "j") else {
            panic!()
        };
        assert_eq!(j.len(), 3);
        assert_eq!(get(&t, "l"), &Value::Str("line one\n  line two".into()));
        assert_eq!(get(&t, "m"), &Value::Str("x''y".into()));
        assert_eq!(get(&t, "quoted key"), &Value::Int(1));
        let Value::Table(n, _) = get(&t, "n") else {
            panic!()
        };
        assert_eq!(get(n, "o"), &Value::Int(2));
        assert_eq!(
            get(&table("x = -9223372036854775808"), "x"),
            &Value::Int(i64::MIN)
        );
    }

    #[test]
    fn tables_and_arrays_of_tables() {
        let t = table(
            "top = 1\n[a]\nx = 1\n[a.b]\ny = 2\n[[c.d]]\nn = 1\n[[c.d]]\nn = 2\n[c]\nz = 3\n",
        );
        let Value::Table(a, _) = get(&t, "a") else {
            panic!()
        };
        assert_eq!(get(a, "x"), &Value::Int(1));
        let Value::Table(c, _) = get(&t, "c") else {
            panic!()
        };
        let Value::Array(d) = get(c, "d") else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        assert_eq!(get(c, "z"), &Value::Int(3));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("a = 1\na = 2", "line 2: key `a` is defined twice"),
            ("[a]\n[a]", "line 2: table `a` is defined twice"),
            ("a = 1.5", "line 1: \"1.5\": floats and dates"),
            ("a = 1979-05-27", "floats and dates"),
            ("a = inf", "floats are not used"),
            ("a = \"x", "unterminated string"),
            ("a = \"x\ny\"", "newline in a single-line string"),
            ("a = \"\\q\"", "bad escape"),
            ("a = \"\\uD800\"", "not a scalar value"),
            ("a = 1 2", "expected the end of the line"),
            ("a", "expected `=`"),
            ("= 1", "expected a key"),
            ("a = [1 2]", "expected `,` or `]`"),
            ("a = 01", "\"01\" is not an integer"),
            ("a = 1__0", "is not an integer"),
            ("a = 9223372036854775808", "is not an integer"),
            ("a = -0x1", "is not an integer"),
            ("a = { b = 1 }\n[a]", "table `a` is defined twice"),
            ("a = { b = 1 }\na.c = 2", "cannot be extended"),
            ("a = 1\n[a.b]", "`a` is not a table"),
            ("[[a]]\n[a]", "table `a` is defined twice"),
            ("a = [1]\n[[a]]", "`a` is not an array of tables"),
            ("[a\nb = 1", "expected `]`"),
            ("a = \"\u{1}\"", "control character"),
            ("# \u{1}", "control character in a comment"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
        assert!(parse(&"[".repeat(40)).is_err());
        assert!(parse(&format!("a = {}1{}", "[".repeat(40), "]".repeat(40))).is_err());
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        n: u32,
        #[serde(default)]
        s: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
    enum Tagged {
        One { n: u32 },
        Two { s: String },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        name: String,
        list: Vec<String>,
        inner: Inner,
        items: Vec<Inner>,
        tagged: Tagged,
    }

    #[test]
    fn serde_with_keys_in_errors() {
        let good = "name = \"x\"\nlist = [\"a\", \"b\"]\n[inner]\nn = 3\n\
                    [[items]]\nn = 1\n[[items]]\nn = 2\ns = \"t\"\n[tagged]\nkind = \"two\"\ns = \"u\"\n";
        let d: Doc = from_str(good).unwrap();
        assert_eq!(d.items[1].s.as_deref(), Some("t"));
        assert_eq!(d.tagged, Tagged::Two { s: "u".into() });
        for (edit, want) in [
            (
                ("n = 3", "n = -3"),
                "line 4, key `inner.n`: invalid value: integer `-3`, expected u32",
            ),
            (
                ("n = 3", "n = 3\nm = 1"),
                "line 5, key `inner.m`: unknown field `m`, expected `n` or `s`",
            ),
            (
                ("s = \"t\"", "s = 5"),
                "line 9, key `items[1].s`: invalid type: integer `5`, expected a string",
            ),
            (
                ("list = [\"a\", \"b\"]", "list = [\"a\", 2]"),
                "key `list[1]`: invalid type: integer `2`",
            ),
            (("name = \"x\"\n", ""), "missing field `name`"),
            (
                ("kind = \"two\"", "kind = \"three\""),
                "line 11, key `tagged.kind`: unknown variant `three`",
            ),
            (
                ("s = \"u\"", "s = 1"),
                "line 10, key `tagged`: invalid type: integer `1`",
            ),
        ] {
            let text = good.replacen(edit.0, edit.1, 1);
            assert_ne!(text, good);
            let e = from_str::<Doc>(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{edit:?}: {e}");
        }
    }
}
