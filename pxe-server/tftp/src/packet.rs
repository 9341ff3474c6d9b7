//! Typed views over untrusted TFTP datagrams (RFC 1350, 2347, 2348, 2349, 7440).
//!
//! Untrusted bytes always go through [`Packet::new_checked`] and then [`Repr::parse`]; after
//! `new_checked` succeeds no accessor can panic. [`Repr::emit`] writes into a caller buffer of at
//! least [`Repr::buffer_len`] bytes, so the server never allocates per datagram.

use thiserror::Error;

/// Largest request (RRQ/WRQ) we accept. RFC 2347 limits a request with options to 512 octets;
/// we allow twice that because some firmware sends long paths plus options, and refuse anything
/// larger before looking at a single string.
pub const MAX_REQUEST_LEN: usize = 1024;
/// Most options we parse in one request (known or not); more is treated as hostile.
pub const MAX_OPTIONS: usize = 16;
/// Longest option name or value we accept.
pub const MAX_OPTION_LEN: usize = 64;
/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;
/// Largest datagram any TFTP message can be: DATA with the largest block size.
pub const MAX_PACKET_LEN: usize = 4 + MAX_BLKSIZE as usize;

/// Field offsets, smoltcp style.
mod field {
    use core::ops::{Range, RangeFrom};
    pub const OPCODE: Range<usize> = 0..2;
    /// Block number of DATA / ACK, error code of ERROR.
    pub const BLOCK: Range<usize> = 2..4;
    /// Payload of DATA, message of ERROR.
    pub const PAYLOAD: RangeFrom<usize> = 4..;
    /// NUL-terminated strings of RRQ / WRQ / OACK.
    pub const STRINGS: RangeFrom<usize> = 2..;
}

/// Why a datagram is not a valid TFTP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Fewer bytes than the message needs.
    #[error("datagram truncated")]
    Truncated,
    /// Longer than the cap for this message type.
    #[error("datagram too long: {0} bytes")]
    TooLong(usize),
    /// Opcode outside 1..=6.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field is not terminated by NUL.
    #[error("string field not NUL-terminated")]
    Unterminated,
    /// A string field is not printable ASCII (RFC 1350 uses netascii for names).
    #[error("string field is not printable ASCII")]
    NotAscii,
    /// The file name is empty.
    #[error("empty file name")]
    EmptyFilename,
    /// Transfer mode other than netascii / octet / mail.
    #[error("unknown transfer mode")]
    UnknownMode,
    /// More than [`MAX_OPTIONS`] options.
    #[error("too many options")]
    TooManyOptions,
    /// An option name or value longer than [`MAX_OPTION_LEN`].
    #[error("option too long")]
    OptionTooLong,
    /// An option name without a value.
    #[error("option without value")]
    OptionWithoutValue,
}

/// TFTP opcodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opcode {
    /// Read request.
    Rrq,
    /// Write request.
    Wrq,
    /// Data block.
    Data,
    /// Acknowledgement.
    Ack,
    /// Error.
    Error,
    /// Option acknowledgement (RFC 2347).
    Oack,
}

impl Opcode {
    fn from_u16(v: u16) -> Result<Self, PacketError> {
        Ok(match v {
            1 => Self::Rrq,
            2 => Self::Wrq,
            3 => Self::Data,
            4 => Self::Ack,
            5 => Self::Error,
            6 => Self::Oack,
            other => return Err(PacketError::UnknownOpcode(other)),
        })
    }

    /// Wire value.
    #[must_use]
    pub fn to_u16(self) -> u16 {
        match self {
            Self::Rrq => 1,
            Self::Wrq => 2,
            Self::Data => 3,
            Self::Ack => 4,
            Self::Error => 5,
            Self::Oack => 6,
        }
    }
}

/// Standard error codes (RFC 1350 + RFC 2347 code 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0: not defined, see message.
    NotDefined,
    /// 1: file not found.
    FileNotFound,
    /// 2: access violation.
    AccessViolation,
    /// 3: disk full or allocation exceeded.
    DiskFull,
    /// 4: illegal TFTP operation.
    IllegalOperation,
    /// 5: unknown transfer ID.
    UnknownTransferId,
    /// 6: file already exists.
    FileExists,
    /// 7: no such user.
    NoSuchUser,
    /// 8: option negotiation refused (RFC 2347).
    OptionNegotiation,
    /// Any other value a peer sent.
    Other(u16),
}

impl ErrorCode {
    /// Decode a wire value.
    #[must_use]
    pub fn from_u16(v: u16) -> Self {
        match v {
            0 => Self::NotDefined,
            1 => Self::FileNotFound,
            2 => Self::AccessViolation,
            3 => Self::DiskFull,
            4 => Self::IllegalOperation,
            5 => Self::UnknownTransferId,
            6 => Self::FileExists,
            7 => Self::NoSuchUser,
            8 => Self::OptionNegotiation,
            other => Self::Other(other),
        }
    }

    /// Wire value.
    #[must_use]
    pub fn to_u16(self) -> u16 {
        match self {
            Self::NotDefined => 0,
            Self::FileNotFound => 1,
            Self::AccessViolation => 2,
            Self::DiskFull => 3,
            Self::IllegalOperation => 4,
            Self::UnknownTransferId => 5,
            Self::FileExists => 6,
            Self::NoSuchUser => 7,
            Self::OptionNegotiation => 8,
            Self::Other(v) => v,
        }
    }
}

/// Transfer mode of a request. `mail` is obsolete and parsed only so it can be refused clearly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mode {
    /// `netascii`.
    Netascii,
    /// `octet` (binary).
    Octet,
    /// `mail` (obsolete).
    Mail,
}

impl Mode {
    fn parse(s: &str) -> Result<Self, PacketError> {
        if s.eq_ignore_ascii_case("octet") {
            Ok(Self::Octet)
        } else if s.eq_ignore_ascii_case("netascii") {
            Ok(Self::Netascii)
        } else if s.eq_ignore_ascii_case("mail") {
            Ok(Self::Mail)
        } else {
            Err(PacketError::UnknownMode)
        }
    }

    /// Canonical lower-case name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Netascii => "netascii",
            Self::Octet => "octet",
            Self::Mail => "mail",
        }
    }
}

/// The options tugboot understands. Unknown options are ignored (RFC 2347 allows a server to
/// ignore what it does not support); a known option with a value out of its RFC range is ignored
/// too, which tells the client "not accepted" by its absence from the OACK.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// RFC 2348 `blksize`, 8..=65464.
    pub blksize: Option<u16>,
    /// RFC 2349 `tsize` (0 in a read request, the real size in the OACK).
    pub tsize: Option<u64>,
    /// RFC 2349 `timeout` in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// RFC 7440 `windowsize`, 1..=65535.
    pub windowsize: Option<u16>,
}

impl Options {
    /// True when no option is present.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Parse `name\0value\0...` pairs. The first occurrence of a duplicated option wins.
    fn parse(mut rest: &[u8]) -> Result<Self, PacketError> {
        let mut opts = Self::default();
        let mut count = 0usize;
        while !rest.is_empty() {
            count += 1;
            if count > MAX_OPTIONS {
                return Err(PacketError::TooManyOptions);
            }
            let (name, after) = take_str(rest, MAX_OPTION_LEN)?;
            if after.is_empty() {
                return Err(PacketError::OptionWithoutValue);
            }
            let (value, after) = take_str(after, MAX_OPTION_LEN)?;
            rest = after;
            if name.eq_ignore_ascii_case("blksize") {
                if opts.blksize.is_none() {
                    opts.blksize = value
                        .parse::<u16>()
                        .ok()
                        .filter(|b| (MIN_BLKSIZE..=MAX_BLKSIZE).contains(b));
                }
            } else if name.eq_ignore_ascii_case("tsize") {
                if opts.tsize.is_none() {
                    opts.tsize = value.parse::<u64>().ok();
                }
            } else if name.eq_ignore_ascii_case("timeout") {
                if opts.timeout.is_none() {
                    opts.timeout = value.parse::<u8>().ok().filter(|t| *t >= 1);
                }
            } else if name.eq_ignore_ascii_case("windowsize") && opts.windowsize.is_none() {
                opts.windowsize = value.parse::<u16>().ok().filter(|w| *w >= 1);
            }
        }
        Ok(opts)
    }

    /// Bytes [`Options::emit`] writes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        let mut len = 0;
        if let Some(v) = self.blksize {
            len += "blksize".len() + 2 + decimal_len(u64::from(v));
        }
        if let Some(v) = self.tsize {
            len += "tsize".len() + 2 + decimal_len(v);
        }
        if let Some(v) = self.timeout {
            len += "timeout".len() + 2 + decimal_len(u64::from(v));
        }
        if let Some(v) = self.windowsize {
            len += "windowsize".len() + 2 + decimal_len(u64::from(v));
        }
        len
    }

    /// Emit in a fixed order: blksize, tsize, timeout, windowsize. `buf` must hold
    /// [`Options::buffer_len`] bytes.
    fn emit(&self, buf: &mut [u8]) -> usize {
        let mut at = 0;
        let mut put = |name: &str, value: u64, buf: &mut [u8]| {
            at += put_str(&mut buf[at..], name);
            let digits = value.to_string();
            at += put_str(&mut buf[at..], &digits);
        };
        if let Some(v) = self.blksize {
            put("blksize", u64::from(v), buf);
        }
        if let Some(v) = self.tsize {
            put("tsize", v, buf);
        }
        if let Some(v) = self.timeout {
            put("timeout", u64::from(v), buf);
        }
        if let Some(v) = self.windowsize {
            put("windowsize", u64::from(v), buf);
        }
        at
    }
}

fn decimal_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 10 {
        v /= 10;
        n += 1;
    }
    n
}

/// Write `s` plus a NUL terminator; returns bytes written.
fn put_str(buf: &mut [u8], s: &str) -> usize {
    buf[..s.len()].copy_from_slice(s.as_bytes());
    buf[s.len()] = 0;
    s.len() + 1
}

/// Split one NUL-terminated printable-ASCII string off the front of `bytes`.
fn take_str(bytes: &[u8], max: usize) -> Result<(&str, &[u8]), PacketError> {
    let nul = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or(PacketError::Unterminated)?;
    if nul > max {
        return Err(PacketError::OptionTooLong);
    }
    let raw = &bytes[..nul];
    if !raw.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Err(PacketError::NotAscii);
    }
    // Printable ASCII is valid UTF-8; the fallback keeps this free of `unwrap`.
    let s = core::str::from_utf8(raw).map_err(|_| PacketError::NotAscii)?;
    Ok((s, &bytes[nul + 1..]))
}

/// A read-only view of a datagram whose opcode and fixed header have been checked.
#[derive(Debug, Clone, Copy)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wrap untrusted bytes: checks the opcode, the fixed header length and the size cap, so the
    /// accessors below cannot panic.
    pub fn new_checked(buffer: T) -> Result<Self, PacketError> {
        let b = buffer.as_ref();
        if b.len() < 2 {
            return Err(PacketError::Truncated);
        }
        if b.len() > MAX_PACKET_LEN {
            return Err(PacketError::TooLong(b.len()));
        }
        let op = Opcode::from_u16(u16::from_be_bytes([b[0], b[1]]))?;
        match op {
            Opcode::Rrq | Opcode::Wrq => {
                if b.len() > MAX_REQUEST_LEN {
                    return Err(PacketError::TooLong(b.len()));
                }
            }
            Opcode::Data | Opcode::Ack | Opcode::Error => {
                if b.len() < 4 {
                    return Err(PacketError::Truncated);
                }
            }
            Opcode::Oack => {}
        }
        Ok(Self { buffer })
    }

    /// The opcode (validated by `new_checked`).
    #[must_use]
    pub fn opcode(&self) -> Opcode {
        let b = self.buffer.as_ref();
        // Validated in new_checked; Rrq is an unreachable fallback that keeps this panic-free.
        Opcode::from_u16(u16::from_be_bytes([
            b[field::OPCODE][0],
            b[field::OPCODE][1],
        ]))
        .unwrap_or(Opcode::Rrq)
    }

    /// Block number (DATA, ACK) or error code (ERROR); 0 for other opcodes.
    #[must_use]
    pub fn block(&self) -> u16 {
        if !matches!(self.opcode(), Opcode::Data | Opcode::Ack | Opcode::Error) {
            return 0;
        }
        match self.buffer.as_ref().get(field::BLOCK) {
            Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
            _ => 0,
        }
    }

    /// Payload after the 4-byte header (DATA bytes, ERROR message); empty for other opcodes.
    #[must_use]
    pub fn payload(&self) -> &[u8] {
        match self.opcode() {
            Opcode::Data | Opcode::Ack | Opcode::Error => {
                self.buffer.as_ref().get(field::PAYLOAD).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// The NUL-terminated strings of RRQ/WRQ/OACK; empty for other opcodes.
    #[must_use]
    pub fn strings(&self) -> &[u8] {
        match self.opcode() {
            Opcode::Rrq | Opcode::Wrq | Opcode::Oack => {
                self.buffer.as_ref().get(field::STRINGS).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// The whole datagram.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// Read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// RRQ.
    Read,
    /// WRQ.
    Write,
}

/// A parsed RRQ or WRQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// RRQ or WRQ.
    pub kind: RequestKind,
    /// The file name exactly as sent (not yet mapped to the root; see `path`).
    pub filename: &'a str,
    /// Transfer mode.
    pub mode: Mode,
    /// Recognised options.
    pub options: Options,
}

/// High-level representation of any TFTP message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Repr<'a> {
    /// RRQ / WRQ.
    Request(Request<'a>),
    /// DATA.
    Data {
        /// Block number.
        block: u16,
        /// Payload (at most the negotiated block size).
        data: &'a [u8],
    },
    /// ACK.
    Ack {
        /// Block number.
        block: u16,
    },
    /// ERROR.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Message (lossy: bytes that are not printable ASCII are not kept).
        message: &'a str,
    },
    /// OACK.
    Oack {
        /// Accepted options.
        options: Options,
    },
}

impl<'a> Repr<'a> {
    /// Parse a checked packet.
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Self, PacketError> {
        let bytes: &'a [u8] = packet.buffer;
        let strings: &'a [u8] = bytes.get(field::STRINGS).unwrap_or(&[]);
        let payload: &'a [u8] = bytes.get(field::PAYLOAD).unwrap_or(&[]);
        match packet.opcode() {
            op @ (Opcode::Rrq | Opcode::Wrq) => {
                let (filename, rest) = take_str(strings, MAX_REQUEST_LEN)?;
                if filename.is_empty() {
                    return Err(PacketError::EmptyFilename);
                }
                let (mode, rest) = take_str(rest, MAX_OPTION_LEN)?;
                let mode = Mode::parse(mode)?;
                let options = Options::parse(rest)?;
                let kind = if op == Opcode::Rrq {
                    RequestKind::Read
                } else {
                    RequestKind::Write
                };
                Ok(Self::Request(Request {
                    kind,
                    filename,
                    mode,
                    options,
                }))
            }
            Opcode::Data => Ok(Self::Data {
                block: packet.block(),
                data: payload,
            }),
            Opcode::Ack => Ok(Self::Ack {
                block: packet.block(),
            }),
            Opcode::Error => {
                // The message should be NUL-terminated; tolerate a missing terminator and
                // non-ASCII bytes (it is only logged), but never read past the datagram.
                let end = payload
                    .iter()
                    .position(|b| *b == 0)
                    .unwrap_or(payload.len());
                let raw = &payload[..end];
                let printable = raw
                    .iter()
                    .position(|b| !(0x20..0x7f).contains(b))
                    .unwrap_or(raw.len());
                let message = core::str::from_utf8(&raw[..printable]).unwrap_or("");
                Ok(Self::Error {
                    code: ErrorCode::from_u16(packet.block()),
                    message,
                })
            }
            Opcode::Oack => Ok(Self::Oack {
                options: Options::parse(strings)?,
            }),
        }
    }

    /// Check and parse untrusted bytes in one step.
    pub fn parse_bytes(bytes: &'a [u8]) -> Result<Self, PacketError> {
        Self::parse(&Packet::new_checked(bytes)?)
    }

    /// Bytes [`Repr::emit`] writes.
    #[must_use]
    pub fn buffer_len(&self) -> usize {
        match self {
            Self::Request(r) => {
                2 + r.filename.len() + 1 + r.mode.as_str().len() + 1 + r.options.buffer_len()
            }
            Self::Data { data, .. } => 4 + data.len(),
            Self::Ack { .. } => 4,
            Self::Error { message, .. } => 4 + message.len() + 1,
            Self::Oack { options } => 2 + options.buffer_len(),
        }
    }

    /// Emit into `buf[..self.buffer_len()]`; returns the length written.
    ///
    /// # Panics
    /// If `buf` is shorter than [`Repr::buffer_len`] (a caller bug, never input-dependent).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = self.buffer_len();
        let buf = &mut buf[..len];
        match self {
            Self::Request(r) => {
                let op = match r.kind {
                    RequestKind::Read => Opcode::Rrq,
                    RequestKind::Write => Opcode::Wrq,
                };
                buf[field::OPCODE].copy_from_slice(&op.to_u16().to_be_bytes());
                let mut at = 2;
                at += put_str(&mut buf[at..], r.filename);
                at += put_str(&mut buf[at..], r.mode.as_str());
                r.options.emit(&mut buf[at..]);
            }
            Self::Data { block, data } => {
                buf[field::OPCODE].copy_from_slice(&Opcode::Data.to_u16().to_be_bytes());
                buf[field::BLOCK].copy_from_slice(&block.to_be_bytes());
                buf[field::PAYLOAD].copy_from_slice(data);
            }
            Self::Ack { block } => {
                buf[field::OPCODE].copy_from_slice(&Opcode::Ack.to_u16().to_be_bytes());
                buf[field::BLOCK].copy_from_slice(&block.to_be_bytes());
            }
            Self::Error { code, message } => {
                buf[field::OPCODE].copy_from_slice(&Opcode::Error.to_u16().to_be_bytes());
                buf[field::BLOCK].copy_from_slice(&code.to_u16().to_be_bytes());
                put_str(&mut buf[4..], message);
            }
            Self::Oack { options } => {
                buf[field::OPCODE].copy_from_slice(&Opcode::Oack.to_u16().to_be_bytes());
                options.emit(&mut buf[2..]);
            }
        }
        len
    }
}

/// Write a DATA header (opcode + block) into `buf[..4]`; the payload follows at `buf[4..]`.
///
/// # Panics
/// If `buf` is shorter than 4 bytes (a caller bug).
pub fn emit_data_header(buf: &mut [u8], block: u16) {
    buf[field::OPCODE].copy_from_slice(&Opcode::Data.to_u16().to_be_bytes());
    buf[field::BLOCK].copy_from_slice(&block.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OVMF's first request (captured shape): tsize probe with blksize and windowsize.
    static RRQ_OVMF: &[u8] =
        b"\x00\x01bootx64.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00";
    static RRQ_PLAIN: &[u8] = b"\x00\x01pxelinux.0\x00octet\x00";
    static WRQ: &[u8] = b"\x00\x02up.bin\x00NetASCII\x00";
    static DATA: &[u8] = b"\x00\x03\x01\x02abc";
    static ACK: &[u8] = b"\x00\x04\xff\xfe";
    static ERROR: &[u8] = b"\x00\x05\x00\x08option refused\x00";
    static OACK: &[u8] =
        b"\x00\x06blksize\x001468\x00tsize\x0012345678\x00timeout\x005\x00windowsize\x0016\x00";

    fn emit_check(repr: &Repr<'_>, expected: &[u8]) {
        let mut buf = vec![0xa5u8; expected.len() + 8];
        assert_eq!(repr.buffer_len(), expected.len());
        let n = repr.emit(&mut buf);
        assert_eq!(&buf[..n], expected);
        assert!(buf[n..].iter().all(|b| *b == 0xa5), "wrote past buffer_len");
    }

    #[test]
    fn rrq_deconstruct() {
        let p = Packet::new_checked(RRQ_OVMF).unwrap();
        assert_eq!(p.opcode(), Opcode::Rrq);
        assert_eq!(p.strings(), &RRQ_OVMF[2..]);
        assert_eq!(p.payload(), b"");
        assert_eq!(p.block(), 0);
    }

    #[test]
    fn rrq_parse_and_emit() {
        let repr = Repr::parse_bytes(RRQ_OVMF).unwrap();
        let expected = Repr::Request(Request {
            kind: RequestKind::Read,
            filename: "bootx64.efi",
            mode: Mode::Octet,
            options: Options {
                blksize: Some(1468),
                tsize: Some(0),
                timeout: None,
                windowsize: Some(4),
            },
        });
        assert_eq!(repr, expected);
        // tugboot emits options in a fixed order (blksize, tsize, timeout, windowsize).
        emit_check(
            &expected,
            b"\x00\x01bootx64.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00windowsize\x004\x00",
        );

        let plain = Repr::parse_bytes(RRQ_PLAIN).unwrap();
        let expected = Repr::Request(Request {
            kind: RequestKind::Read,
            filename: "pxelinux.0",
            mode: Mode::Octet,
            options: Options::default(),
        });
        assert_eq!(plain, expected);
        emit_check(&expected, RRQ_PLAIN);
    }

    #[test]
    fn wrq_parse_mode_case_insensitive() {
        let repr = Repr::parse_bytes(WRQ).unwrap();
        assert_eq!(
            repr,
            Repr::Request(Request {
                kind: RequestKind::Write,
                filename: "up.bin",
                mode: Mode::Netascii,
                options: Options::default(),
            })
        );
        // Emission uses the canonical lower-case mode.
        if let Repr::Request(r) = repr {
            emit_check(&Repr::Request(r), b"\x00\x02up.bin\x00netascii\x00");
        }
    }

    #[test]
    fn options_case_insensitive_unknown_ignored_first_wins() {
        let bytes = b"\x00\x01f\x00OCTET\x00BlkSize\x001024\x00multicast\x00\x00TSIZE\x000\x00blksize\x00512\x00TimeOut\x005\x00";
        let Repr::Request(r) = Repr::parse_bytes(bytes).unwrap() else {
            panic!("not a request");
        };
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(
            r.options,
            Options {
                blksize: Some(1024),
                tsize: Some(0),
                timeout: Some(5),
                windowsize: None,
            }
        );
    }

    #[test]
    fn out_of_range_option_values_ignored() {
        let bytes = b"\x00\x01f\x00octet\x00blksize\x007\x00timeout\x000\x00windowsize\x000\x00tsize\x00-1\x00";
        let Repr::Request(r) = Repr::parse_bytes(bytes).unwrap() else {
            panic!("not a request");
        };
        assert!(r.options.is_empty());
        let bytes =
            b"\x00\x01f\x00octet\x00blksize\x0065465\x00timeout\x00256\x00windowsize\x0065536\x00";
        let Repr::Request(r) = Repr::parse_bytes(bytes).unwrap() else {
            panic!("not a request");
        };
        assert!(r.options.is_empty());
    }

    #[test]
    fn data_deconstruct_parse_emit() {
        let p = Packet::new_checked(DATA).unwrap();
        assert_eq!(p.opcode(), Opcode::Data);
        assert_eq!(p.block(), 0x0102);
        assert_eq!(p.payload(), b"abc");
        let expected = Repr::Data {
            block: 0x0102,
            data: b"abc",
        };
        assert_eq!(Repr::parse(&p).unwrap(), expected);
        emit_check(&expected, DATA);
        // Empty final block.
        emit_check(
            &Repr::Data {
                block: 0,
                data: b"",
            },
            b"\x00\x03\x00\x00",
        );
        let mut buf = [0xa5u8; 6];
        emit_data_header(&mut buf, 0xbeef);
        assert_eq!(buf, [0, 3, 0xbe, 0xef, 0xa5, 0xa5]);
    }

    #[test]
    fn ack_deconstruct_parse_emit() {
        let p = Packet::new_checked(ACK).unwrap();
        assert_eq!(p.opcode(), Opcode::Ack);
        assert_eq!(p.block(), 0xfffe);
        assert_eq!(p.payload(), b"");
        let expected = Repr::Ack { block: 0xfffe };
        assert_eq!(Repr::parse(&p).unwrap(), expected);
        emit_check(&expected, ACK);
    }

    #[test]
    fn error_deconstruct_parse_emit() {
        let p = Packet::new_checked(ERROR).unwrap();
        assert_eq!(p.opcode(), Opcode::Error);
        assert_eq!(p.block(), 8);
        assert_eq!(p.payload(), b"option refused\x00");
        let expected = Repr::Error {
            code: ErrorCode::OptionNegotiation,
            message: "option refused",
        };
        assert_eq!(Repr::parse(&p).unwrap(), expected);
        emit_check(&expected, ERROR);
        // Missing terminator and binary junk are tolerated in a message.
        assert_eq!(
            Repr::parse_bytes(b"\x00\x05\x00\x63abc\xff\x01").unwrap(),
            Repr::Error {
                code: ErrorCode::Other(99),
                message: "abc",
            }
        );
        assert_eq!(
            Repr::parse_bytes(b"\x00\x05\x00\x01").unwrap(),
            Repr::Error {
                code: ErrorCode::FileNotFound,
                message: "",
            }
        );
    }

    #[test]
    fn oack_deconstruct_parse_emit() {
        let p = Packet::new_checked(OACK).unwrap();
        assert_eq!(p.opcode(), Opcode::Oack);
        assert_eq!(p.strings(), &OACK[2..]);
        let expected = Repr::Oack {
            options: Options {
                blksize: Some(1468),
                tsize: Some(12_345_678),
                timeout: Some(5),
                windowsize: Some(16),
            },
        };
        assert_eq!(Repr::parse(&p).unwrap(), expected);
        emit_check(&expected, OACK);
        emit_check(
            &Repr::Oack {
                options: Options {
                    tsize: Some(0),
                    ..Options::default()
                },
            },
            b"\x00\x06tsize\x000\x00",
        );
    }

    #[test]
    fn error_codes_round_trip() {
        for v in 0..=9u16 {
            assert_eq!(ErrorCode::from_u16(v).to_u16(), v);
        }
    }

    #[test]
    fn malformed_is_typed_error() {
        let cases: &[(&[u8], PacketError)] = &[
            (b"", PacketError::Truncated),
            (b"\x00", PacketError::Truncated),
            (b"\x00\x03\x00", PacketError::Truncated),
            (b"\x00\x04", PacketError::Truncated),
            (b"\x00\x07abc", PacketError::UnknownOpcode(7)),
            (b"\x00\x00", PacketError::UnknownOpcode(0)),
            (b"\x00\x01file", PacketError::Unterminated),
            (b"\x00\x01file\x00octet", PacketError::Unterminated),
            (b"\x00\x01\x00octet\x00", PacketError::EmptyFilename),
            (b"\x00\x01f\x00binary\x00", PacketError::UnknownMode),
            (b"\x00\x01f\xc3\xa9\x00octet\x00", PacketError::NotAscii),
            (
                b"\x00\x01f\x00octet\x00blksize\x00",
                PacketError::OptionWithoutValue,
            ),
            (
                b"\x00\x01f\x00octet\x00blksize\x00512",
                PacketError::Unterminated,
            ),
            (b"\x00\x06tsize", PacketError::Unterminated),
        ];
        for (bytes, err) in cases {
            assert_eq!(Repr::parse_bytes(bytes), Err(err.clone()), "{bytes:?}");
        }
    }

    #[test]
    fn caps_enforced() {
        let mut long = b"\x00\x01".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_REQUEST_LEN));
        long.extend(b"\x00octet\x00");
        assert!(matches!(
            Repr::parse_bytes(&long),
            Err(PacketError::TooLong(_))
        ));
        let mut many = b"\x00\x01f\x00octet\x00".to_vec();
        for i in 0..=MAX_OPTIONS {
            many.extend(format!("x{i}\x001\x00").bytes());
        }
        assert_eq!(Repr::parse_bytes(&many), Err(PacketError::TooManyOptions));
        let mut big = b"\x00\x01f\x00octet\x00".to_vec();
        big.extend(std::iter::repeat_n(b'n', MAX_OPTION_LEN + 1));
        big.extend(b"\x001\x00");
        assert_eq!(Repr::parse_bytes(&big), Err(PacketError::OptionTooLong));
        let huge = vec![0u8; MAX_PACKET_LEN + 1];
        assert!(matches!(
            Packet::new_checked(&huge[..]),
            Err(PacketError::TooLong(_))
        ));
    }
}
