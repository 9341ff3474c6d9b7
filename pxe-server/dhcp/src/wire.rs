//! The DHCPv4 wire format: untrusted bytes in, a checked [`Request`] out; a reply
//! [`Message`] in, padded bytes out.
//!
//! Every byte from the network passes [`Request::parse`], which validates everything
//! dhcproto would otherwise trust (header sizes, `hlen`, the option TLV chain) *before*
//! handing the packet to dhcproto, and runs the decoder behind `catch_unwind` as a
//! second line of defence. After `parse` returns `Ok`, nothing downstream can panic on
//! the packet's contents.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};

use dhcproto::v4::{Message, MessageType, Opcode};
use dhcproto::{Decodable, Encodable};

/// Largest request accepted. A client may announce up to 65535 bytes in option 57,
/// but no boot firmware sends more than an Ethernet MTU; 4 KiB leaves room for jumbo
/// frames and relayed packets while bounding the work per datagram.
pub const MAX_REQUEST_LEN: usize = 4096;

/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;

/// RFC 951/1542: BOOTP relays and old PXE ROMs drop replies shorter than this.
pub const BOOTP_MIN_LEN: usize = 300;

/// The smallest reply every client must accept (RFC 2131 §2, option 57 floor).
pub const MIN_MAX_MESSAGE_SIZE: usize = 576;

const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Options whose dhcproto decoder asserts on the length in debug builds or
/// subtracts from it without a check (RFC 4039 rapid commit, RFC 4702 FQDN, RFC 4578
/// client NDI, RFC 6926 bulk leasequery). The server never reads them, so they are
/// overwritten with PAD before dhcproto sees the packet.
const NEUTRALISED: &[u8] = &[80, 81, 94, 151, 152, 153, 154, 155, 156, 157];

/// Why a datagram was not accepted as a DHCP request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than the fixed BOOTP header plus magic cookie.
    #[error("datagram of {len} bytes is shorter than the {HEADER_LEN}-byte BOOTP header")]
    TooShort {
        /// Received length.
        len: usize,
    },
    /// Longer than [`MAX_REQUEST_LEN`].
    #[error("datagram of {len} bytes exceeds the {MAX_REQUEST_LEN}-byte cap")]
    TooLong {
        /// Received length.
        len: usize,
    },
    /// `op` is not BOOTREQUEST (servers never act on replies).
    #[error("op {op} is not BOOTREQUEST")]
    NotRequest {
        /// The op byte.
        op: u8,
    },
    /// `hlen` larger than the 16-byte chaddr field.
    #[error("hardware address length {hlen} exceeds 16")]
    BadHardwareLength {
        /// The hlen byte.
        hlen: u8,
    },
    /// The magic cookie is not 99.130.83.99 (plain BOOTP is not served).
    #[error("missing DHCP magic cookie")]
    BadMagic,
    /// An option's length runs past the end of the datagram.
    #[error("option {code} at offset {offset} runs past the end of the datagram")]
    TruncatedOption {
        /// Option code.
        code: u8,
        /// Offset of the option's code byte.
        offset: usize,
    },
    /// No option 53, or an unknown message type.
    #[error("missing or unknown DHCP message type")]
    MissingMessageType,
    /// dhcproto rejected the packet.
    #[error("malformed DHCP message: {0}")]
    Decode(String),
    /// dhcproto panicked; the packet is dropped and the panic contained.
    #[error("DHCP decoder panicked on hostile input")]
    DecoderPanicked,
    /// A reply could not be encoded.
    #[error("cannot encode reply: {0}")]
    Encode(String),
    /// The encoded reply is larger than the client accepts.
    #[error("reply of {len} bytes exceeds the client's maximum of {max}")]
    ReplyTooLarge {
        /// Encoded length.
        len: usize,
        /// Client maximum (option 57, at least 576).
        max: usize,
    },
}

/// The raw option payloads of a request, concatenated per code as RFC 3396 requires.
///
/// dhcproto keeps only typed views (and reads only the first entry of option 93's
/// list); classification needs the bytes as sent, and option 82 must be echoed
/// verbatim (RFC 3046 §2.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawOptions(BTreeMap<u8, Vec<u8>>);

impl RawOptions {
    /// The payload of option `code`, if present.
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.0.get(&code).map(Vec::as_slice)
    }

    /// Whether option `code` is present (even with an empty payload).
    pub fn contains(&self, code: u8) -> bool {
        self.0.contains_key(&code)
    }

    /// All option codes present, in ascending order.
    pub fn codes(&self) -> impl Iterator<Item = u8> + '_ {
        self.0.keys().copied()
    }
}

/// A checked DHCP request: the dhcproto message plus the raw option bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The decoded message.
    pub msg: Message,
    /// Raw option payloads (RFC 3396 concatenated).
    pub raw: RawOptions,
    /// DHCP message type (option 53).
    pub msg_type: MessageType,
    /// Length of the datagram as received.
    pub len: usize,
}

impl Request {
    /// Validates and decodes one UDP payload. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        let len = bytes.len();
        if len < HEADER_LEN {
            return Err(WireError::TooShort { len });
        }
        if len > MAX_REQUEST_LEN {
            return Err(WireError::TooLong { len });
        }
        let op = bytes[0];
        if op != 1 {
            return Err(WireError::NotRequest { op });
        }
        let hlen = bytes[2];
        if hlen > 16 {
            return Err(WireError::BadHardwareLength { hlen });
        }
        if bytes[236..240] != MAGIC {
            return Err(WireError::BadMagic);
        }

        // Walk the TLV chain ourselves: collect raw payloads, find the END, and note
        // the spans of options dhcproto must not see.
        let mut raw: BTreeMap<u8, Vec<u8>> = BTreeMap::new();
        let mut neutralise = Vec::new();
        let mut i = HEADER_LEN;
        let mut end = len;
        while i < len {
            let code = bytes[i];
            match code {
                0 => i += 1,
                255 => {
                    end = i + 1;
                    break;
                }
                _ => {
                    let Some(&opt_len) = bytes.get(i + 1) else {
                        return Err(WireError::TruncatedOption { code, offset: i });
                    };
                    let start = i + 2;
                    let stop = start + usize::from(opt_len);
                    let Some(payload) = bytes.get(start..stop) else {
                        return Err(WireError::TruncatedOption { code, offset: i });
                    };
                    if NEUTRALISED.contains(&code) {
                        neutralise.push(i..stop);
                    } else {
                        raw.entry(code).or_default().extend_from_slice(payload);
                    }
                    i = stop;
                }
            }
        }

        let msg_type = match raw.get(&53).map(Vec::as_slice) {
            Some([t]) => match MessageType::from(*t) {
                MessageType::Unknown(_) => return Err(WireError::MissingMessageType),
                known => known,
            },
            _ => return Err(WireError::MissingMessageType),
        };

        let mut clean = bytes[..end].to_vec();
        for span in neutralise {
            for b in &mut clean[span] {
                *b = 0;
            }
        }
        let decoded = catch_unwind(AssertUnwindSafe(|| Message::from_bytes(&clean)));
        let msg = match decoded {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => return Err(WireError::Decode(e.to_string())),
            Err(_) => return Err(WireError::DecoderPanicked),
        };
        if msg.opcode() != Opcode::BootRequest {
            return Err(WireError::NotRequest { op });
        }
        Ok(Self {
            msg,
            raw: RawOptions(raw),
            msg_type,
            len,
        })
    }

    /// The client hardware address (`chaddr[..hlen]`).
    pub fn chaddr(&self) -> &[u8] {
        self.msg.chaddr()
    }

    /// The largest reply this client accepts: option 57 if present and sane,
    /// never below 576 (RFC 2132 §9.10).
    pub fn max_reply_len(&self) -> usize {
        match self.raw.get(57) {
            Some([hi, lo]) => usize::from(u16::from_be_bytes([*hi, *lo])).max(MIN_MAX_MESSAGE_SIZE),
            _ => MIN_MAX_MESSAGE_SIZE,
        }
    }
}

/// Encodes a reply and pads it with zeros (PAD options after END) to the 300-byte
/// BOOTP minimum. `relay_agent` is option 82 as received: it is appended verbatim as
/// the last option (RFC 3046 §2.2), because dhcproto would re-encode its sub-options
/// in its own order. Fails if the result is larger than `max_len`.
pub fn encode_reply(
    msg: &Message,
    relay_agent: Option<&[u8]>,
    max_len: usize,
) -> Result<Vec<u8>, WireError> {
    let encoded = catch_unwind(AssertUnwindSafe(|| msg.to_vec()));
    let mut bytes = match encoded {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(WireError::Encode(e.to_string())),
        Err(_) => return Err(WireError::Encode("encoder panicked".into())),
    };
    message_type_first(&mut bytes);
    if let Some(o82) = relay_agent {
        let Some(end) = end_offset(&bytes) else {
            return Err(WireError::Encode("encoded reply has no END option".into()));
        };
        let mut tail = Vec::with_capacity(o82.len() + 4);
        for chunk in o82.chunks(255) {
            tail.push(82);
            tail.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            tail.extend_from_slice(chunk);
        }
        bytes.splice(end..end, tail);
    }
    if bytes.len() < BOOTP_MIN_LEN {
        bytes.resize(BOOTP_MIN_LEN, 0);
    }
    if bytes.len() > max_len {
        return Err(WireError::ReplyTooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    Ok(bytes)
}

/// Offset of the END option in an encoded packet.
fn end_offset(bytes: &[u8]) -> Option<usize> {
    let mut i = HEADER_LEN;
    while i < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return Some(i),
            _ => i += 2 + usize::from(*bytes.get(i + 1)?),
        }
    }
    None
}

/// dhcproto writes options in numeric order; move option 53 to the front, where
/// every server in the field puts it and where minimal firmware parsers look first.
fn message_type_first(bytes: &mut [u8]) {
    let mut i = HEADER_LEN;
    while i + 2 < bytes.len() {
        match bytes[i] {
            0 => i += 1,
            255 => return,
            53 => {
                if bytes.get(i + 1) == Some(&1) && i + 3 <= bytes.len() {
                    bytes[HEADER_LEN..i + 3].rotate_right(3);
                }
                return;
            }
            _ => i += 2 + usize::from(bytes[i + 1]),
        }
    }
}

/// Finds option `code` in an encoded packet (test and diagnostics helper): the
/// RFC 3396 concatenation of every instance, or `None`.
pub fn find_option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = HEADER_LEN;
    while i < packet.len() {
        match packet[i] {
            0 => i += 1,
            255 => break,
            c => {
                let l = usize::from(*packet.get(i + 1)?);
                let payload = packet.get(i + 2..i + 2 + l)?;
                if c == code {
                    out.get_or_insert_with(Vec::new).extend_from_slice(payload);
                }
                i += 2 + l;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(msg_type: u8) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 1, 2, 3]);
        b[236..240].copy_from_slice(&MAGIC);
        b.extend_from_slice(&[53, 1, msg_type, 255]);
        b
    }

    #[test]
    fn parses_minimal_discover() {
        let r = Request::parse(&minimal(1)).expect("valid");
        assert_eq!(r.msg_type, MessageType::Discover);
        assert_eq!(r.chaddr(), &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(r.max_reply_len(), 576);
    }

    #[test]
    fn rejects_bad_headers() {
        assert_eq!(
            Request::parse(&[1; 10]),
            Err(WireError::TooShort { len: 10 })
        );
        let mut b = minimal(1);
        b[0] = 2;
        assert_eq!(Request::parse(&b), Err(WireError::NotRequest { op: 2 }));
        let mut b = minimal(1);
        b[2] = 17;
        assert_eq!(
            Request::parse(&b),
            Err(WireError::BadHardwareLength { hlen: 17 })
        );
        let mut b = minimal(1);
        b[236] = 0;
        assert_eq!(Request::parse(&b), Err(WireError::BadMagic));
        let b = vec![0u8; MAX_REQUEST_LEN + 1];
        assert!(matches!(Request::parse(&b), Err(WireError::TooLong { .. })));
    }

    #[test]
    fn rejects_truncated_option_and_missing_type() {
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 1, 1, 60, 9, b'P']);
        assert!(matches!(
            Request::parse(&b),
            Err(WireError::TruncatedOption { code: 60, .. })
        ));
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.push(255);
        assert_eq!(Request::parse(&b), Err(WireError::MissingMessageType));
    }

    #[test]
    fn neutralises_options_that_trip_dhcproto_asserts() {
        // FQDN with length 0 and rapid commit with a payload: dhcproto would assert or
        // underflow on these in debug builds.
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 1, 1, 81, 0, 80, 2, 1, 2, 151, 0, 255]);
        let r = Request::parse(&b).expect("neutralised options do not break parsing");
        assert!(!r.raw.contains(81));
        assert!(!r.raw.contains(80));
    }

    #[test]
    fn concatenates_split_options_rfc3396() {
        let mut b = minimal(1);
        b.truncate(HEADER_LEN);
        b.extend_from_slice(&[53, 1, 1, 77, 2, b'i', b'P', 77, 2, b'X', b'E', 255]);
        let r = Request::parse(&b).expect("valid");
        assert_eq!(r.raw.get(77), Some(&b"iPXE"[..]));
    }

    #[test]
    fn reply_is_padded_to_bootp_minimum() {
        let r = Request::parse(&minimal(1)).expect("valid");
        let bytes = encode_reply(&r.msg, None, 576).expect("encodes");
        assert_eq!(bytes.len(), BOOTP_MIN_LEN);
        assert_eq!(find_option(&bytes, 53), Some(vec![1]));
        assert_eq!(
            &bytes[HEADER_LEN..HEADER_LEN + 3],
            &[53, 1, 1],
            "message type first"
        );
        assert!(matches!(
            encode_reply(&r.msg, None, 100),
            Err(WireError::ReplyTooLarge { len: 300, max: 100 })
        ));
    }
}
