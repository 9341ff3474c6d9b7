//! A TFTP read client as firmware runs it: the options it asks for, the probe it aborts, the
//! windows it acknowledges, and its own retransmission schedule.

use std::time::Duration;

use crate::Backoff;

/// What a transfer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Read the OACK (its `tsize`) and abort with ERROR `code` (EDK2: 8 "User aborted the
    /// transfer"; PXE ROMs: 0 "TFTP Aborted").
    Probe { code: u16 },
    /// Read the first DATA block and abort with ERROR 0 (the Raspberry Pi bootloader checking
    /// that a file exists: "Early terminate").
    FirstBlock,
    /// Read the whole file; keep at most `keep` bytes of it (configurations to parse).
    Download { keep: usize },
}

/// One read request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadRequest {
    pub path: String,
    pub options: Vec<(String, String)>,
    pub goal: Goal,
}

/// A firmware's retransmission rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpRules {
    /// Waits before resending the last packet (RRQ or ACK) while nothing new arrives.
    pub waits: Backoff,
    /// The whole file must arrive within this (the Pi's `TFTP_FILE_TIMEOUT`).
    pub file_timeout: Option<Duration>,
}

/// What a finished transfer got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Transferred {
    /// File bytes received.
    pub bytes: u64,
    /// The first bytes (up to `keep`).
    pub content: Vec<u8>,
    /// `tsize` from the OACK.
    pub tsize: Option<u64>,
    /// Block size in use.
    pub blksize: u16,
    /// Window size in use.
    pub windowsize: u16,
}

/// Why a transfer failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TftpFailure {
    #[error("file not found (ERROR 1): {0}")]
    NotFound(String),
    #[error("ERROR {code} from the server: {message}")]
    Error { code: u16, message: String },
    #[error("timed out after {0} retransmissions")]
    TimedOut(u32),
    /// Nothing at all came back for the request (as opposed to a transfer that stalled).
    #[error("no answer to the request after {0} retransmissions")]
    Unanswered(u32),
    #[error("file not complete after {0:?}")]
    FileTimeout(Duration),
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Where a datagram goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// The server's well-known port (the RRQ).
    Listener,
    /// The server's transfer port (learned from its first answer).
    Transfer,
}

/// Builds an RRQ.
#[must_use]
pub fn rrq(path: &str, options: &[(String, String)]) -> Vec<u8> {
    let mut b = vec![0, 1];
    b.extend_from_slice(path.as_bytes());
    b.push(0);
    b.extend_from_slice(b"octet\0");
    for (k, v) in options {
        b.extend_from_slice(k.as_bytes());
        b.push(0);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
    }
    b
}

fn ack(block: u16) -> Vec<u8> {
    let mut b = vec![0, 4];
    b.extend_from_slice(&block.to_be_bytes());
    b
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut b = vec![0, 5];
    b.extend_from_slice(&code.to_be_bytes());
    b.extend_from_slice(msg.as_bytes());
    b.push(0);
    b
}

/// A parsed server packet.
#[derive(Debug, PartialEq, Eq)]
enum Packet<'a> {
    Data { block: u16, data: &'a [u8] },
    Oack(Vec<(String, String)>),
    Error { code: u16, message: String },
}

fn parse(b: &[u8]) -> Option<Packet<'_>> {
    let op = u16::from_be_bytes([*b.first()?, *b.get(1)?]);
    match op {
        3 => Some(Packet::Data {
            block: u16::from_be_bytes([*b.get(2)?, *b.get(3)?]),
            data: &b[4..],
        }),
        5 => {
            let code = u16::from_be_bytes([*b.get(2)?, *b.get(3)?]);
            let msg = b.get(4..).unwrap_or_default();
            let end = msg.iter().position(|&c| c == 0).unwrap_or(msg.len());
            Some(Packet::Error {
                code,
                message: String::from_utf8_lossy(&msg[..end]).into_owned(),
            })
        }
        6 => {
            let mut strings = b[2..].split(|&c| c == 0);
            let mut opts = Vec::new();
            while let (Some(k), Some(v)) = (strings.next(), strings.next()) {
                if k.is_empty() {
                    break;
                }
                opts.push((
                    String::from_utf8_lossy(k).to_ascii_lowercase(),
                    String::from_utf8_lossy(v).into_owned(),
                ));
            }
            Some(Packet::Oack(opts))
        }
        _ => None,
    }
}

/// One read transfer.
#[derive(Debug)]
pub struct TftpClient {
    req: ReadRequest,
    rules: TftpRules,
    started: Duration,
    /// The packet to resend on timeout, and where.
    last: (Vec<u8>, To),
    /// Consecutive retransmissions without progress.
    stalled: u32,
    /// A datagram of the server's was handled.
    answered: bool,
    retransmissions: u32,
    deadline: Option<Duration>,
    /// Blocks received in order (absolute count; the wire number is this mod 65536).
    received: u64,
    /// Blocks received since the last ACK.
    in_window: u16,
    blksize: u16,
    windowsize: u16,
    got: Transferred,
    outbox: Vec<(Vec<u8>, To)>,
    result: Option<Result<Transferred, TftpFailure>>,
}

impl TftpClient {
    /// Starts the transfer at `now` (the RRQ is queued).
    #[must_use]
    pub fn start(req: ReadRequest, rules: TftpRules, now: Duration) -> Self {
        let packet = rrq(&req.path, &req.options);
        let mut c = TftpClient {
            req,
            rules,
            started: now,
            last: (packet.clone(), To::Listener),
            stalled: 0,
            answered: false,
            retransmissions: 0,
            deadline: None,
            received: 0,
            in_window: 0,
            blksize: 512,
            windowsize: 1,
            got: Transferred::default(),
            outbox: vec![(packet, To::Listener)],
            result: None,
        };
        c.arm(now);
        c
    }

    fn arm(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.started);
        self.deadline = match self.rules.waits.wait(self.stalled, elapsed) {
            Some(w) => Some(now + w),
            None => {
                self.finish(Err(if self.answered {
                    TftpFailure::TimedOut(self.stalled)
                } else {
                    TftpFailure::Unanswered(self.stalled)
                }));
                None
            }
        };
        if let (Some(limit), Some(d)) = (self.rules.file_timeout, self.deadline) {
            self.deadline = Some(d.min(self.started + limit));
        }
    }

    fn send(&mut self, packet: Vec<u8>, to: To, now: Duration) {
        self.last = (packet.clone(), to);
        self.outbox.push((packet, to));
        self.stalled = 0;
        self.arm(now);
    }

    fn finish(&mut self, r: Result<Transferred, TftpFailure>) {
        self.deadline = None;
        if self.result.is_none() {
            self.result = Some(r);
        }
    }

    fn done(&mut self) {
        let mut got = std::mem::take(&mut self.got);
        got.blksize = self.blksize;
        got.windowsize = self.windowsize;
        self.finish(Ok(got));
    }

    /// A datagram from the server's transfer port (the caller drops datagrams from elsewhere).
    pub fn handle_datagram(&mut self, now: Duration, bytes: &[u8]) {
        if self.result.is_some() {
            return;
        }
        self.answered = true;
        let Some(p) = parse(bytes) else {
            self.outbox
                .push((error(4, "illegal TFTP operation"), To::Transfer));
            self.finish(Err(TftpFailure::Protocol("unknown opcode".into())));
            return;
        };
        match p {
            Packet::Error { code, message } => {
                self.finish(Err(if code == 1 {
                    TftpFailure::NotFound(message)
                } else {
                    TftpFailure::Error { code, message }
                }));
            }
            Packet::Oack(opts) => {
                if self.received > 0 {
                    return;
                }
                for (k, v) in &opts {
                    match k.as_str() {
                        "tsize" => self.got.tsize = v.parse().ok(),
                        "blksize" => self.blksize = v.parse().unwrap_or(512),
                        "windowsize" => self.windowsize = v.parse().unwrap_or(1).max(1),
                        _ => {}
                    }
                }
                match self.req.goal {
                    Goal::Probe { code } => {
                        let msg = if code == 8 {
                            "User aborted the transfer"
                        } else {
                            "TFTP Aborted"
                        };
                        self.outbox.push((error(code, msg), To::Transfer));
                        self.done();
                    }
                    _ => self.send(ack(0), To::Transfer, now),
                }
            }
            Packet::Data { block, data } => self.data(now, block, data),
        }
    }

    fn data(&mut self, now: Duration, block: u16, data: &[u8]) {
        let expected = self.received.wrapping_add(1);
        // Block numbers wrap from 65535 to 0 (tftp-hpa, dnsmasq, tugboot, iPXE).
        let want = u16::try_from(expected % 65_536).unwrap_or(0);
        if block != want {
            // A block ahead of the one expected means one was lost: say where to restart
            // (RFC 7440 §4). Old blocks mean our ACK was lost: ACK again once per window.
            let ahead = block.wrapping_sub(want) < 0x8000;
            if ahead || self.in_window == 0 {
                let last = u16::try_from(self.received % 65_536).unwrap_or(0);
                self.send(ack(last), To::Transfer, now);
                self.in_window = 0;
            }
            return;
        }
        if let Goal::FirstBlock = self.req.goal {
            self.outbox
                .push((error(0, "Early terminate"), To::Transfer));
            self.got.bytes = data.len() as u64;
            self.done();
            return;
        }
        self.received = expected;
        self.got.bytes += data.len() as u64;
        if let Goal::Download { keep } = self.req.goal {
            let room = keep.saturating_sub(self.got.content.len());
            self.got
                .content
                .extend_from_slice(&data[..data.len().min(room)]);
        }
        self.in_window += 1;
        let last = data.len() < usize::from(self.blksize);
        if last || self.in_window >= self.windowsize {
            self.in_window = 0;
            self.send(ack(block), To::Transfer, now);
        } else {
            // Progress inside a window: the wait starts over.
            self.stalled = 0;
            self.arm(now);
        }
        if last {
            self.done();
        }
    }

    /// The retransmission timer fired.
    pub fn handle_timeout(&mut self, now: Duration) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline || self.result.is_some() {
            return;
        }
        if let Some(limit) = self.rules.file_timeout
            && now >= self.started + limit
        {
            self.finish(Err(TftpFailure::FileTimeout(limit)));
            return;
        }
        self.stalled += 1;
        self.retransmissions += 1;
        let (packet, to) = self.last.clone();
        self.outbox.push((packet, to));
        self.in_window = 0;
        self.arm(now);
    }

    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.result.is_some() {
            None
        } else {
            self.deadline
        }
    }

    pub fn poll_transmit(&mut self) -> Option<(Vec<u8>, To)> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(self.outbox.remove(0))
        }
    }

    #[must_use]
    pub fn result(&self) -> Option<&Result<Transferred, TftpFailure>> {
        self.result.as_ref()
    }

    /// Packets resent because nothing came back in time.
    #[must_use]
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVMF_PROBE: &[u8] =
        include_bytes!("../../../tests/fixtures/tftp/rrq-ovmf-tsize-probe.bin");
    const OVMF_ABORT: &[u8] = include_bytes!("../../../tests/fixtures/tftp/error-ovmf-abort.bin");
    const UBOOT_RRQ: &[u8] = include_bytes!("../../../tests/fixtures/tftp/rrq-uboot-timeout.bin");
    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn opts(o: &[(&str, &str)]) -> Vec<(String, String)> {
        o.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
    }

    fn data(block: u16, len: usize) -> Vec<u8> {
        let mut b = vec![0, 3];
        b.extend_from_slice(&block.to_be_bytes());
        b.resize(4 + len, 0xab);
        b
    }

    fn oack(o: &[(&str, &str)]) -> Vec<u8> {
        let mut b = vec![0, 6];
        for (k, v) in o {
            b.extend_from_slice(k.as_bytes());
            b.push(0);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b
    }

    fn rules() -> TftpRules {
        TftpRules {
            waits: Backoff::Table(&[4000, 4000, 4000]),
            file_timeout: None,
        }
    }

    /// The RRQs are the firmware's own bytes.
    #[test]
    fn requests_match_captures() {
        assert_eq!(
            rrq(
                "bootx64.efi",
                &opts(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")])
            ),
            OVMF_PROBE
        );
        assert_eq!(
            rrq(
                "pxelinux.cfg/01-52-54-00-12-34-56",
                &opts(&[("timeout", "5"), ("blksize", "1468")])
            ),
            UBOOT_RRQ
        );
    }

    #[test]
    fn probe_aborts_after_the_oack_like_edk2() {
        let req = ReadRequest {
            path: "bootx64.efi".into(),
            options: opts(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
            goal: Goal::Probe { code: 8 },
        };
        let mut c = TftpClient::start(req, rules(), ms(0));
        assert_eq!(
            c.poll_transmit().unwrap(),
            (OVMF_PROBE.to_vec(), To::Listener)
        );
        c.handle_datagram(ms(1), &oack(&[("tsize", "1234"), ("blksize", "1468")]));
        assert_eq!(
            c.poll_transmit().unwrap(),
            (OVMF_ABORT.to_vec(), To::Transfer)
        );
        let got = c.result().unwrap().as_ref().unwrap();
        assert_eq!(got.tsize, Some(1234));
    }

    #[test]
    fn windows_are_acknowledged_at_their_end_and_gaps_restart() {
        let req = ReadRequest {
            path: "f".into(),
            options: opts(&[("blksize", "8"), ("windowsize", "4")]),
            goal: Goal::Download { keep: 100 },
        };
        let mut c = TftpClient::start(req, rules(), ms(0));
        c.poll_transmit();
        c.handle_datagram(ms(1), &oack(&[("blksize", "8"), ("windowsize", "4")]));
        assert_eq!(c.poll_transmit().unwrap(), (ack(0), To::Transfer));
        for b in 1..=3 {
            c.handle_datagram(ms(2), &data(b, 8));
            assert!(c.poll_transmit().is_none());
        }
        c.handle_datagram(ms(2), &data(4, 8));
        assert_eq!(c.poll_transmit().unwrap(), (ack(4), To::Transfer));
        // 5 lost: 6 arrives → ACK 4 at once.
        c.handle_datagram(ms(3), &data(6, 8));
        assert_eq!(c.poll_transmit().unwrap(), (ack(4), To::Transfer));
        c.handle_datagram(ms(4), &data(5, 8));
        c.handle_datagram(ms(4), &data(6, 3));
        assert_eq!(c.poll_transmit().unwrap(), (ack(6), To::Transfer));
        let got = c.result().unwrap().as_ref().unwrap();
        assert_eq!(got.bytes, 5 * 8 + 3);
        assert_eq!(got.content.len(), 43);
        assert_eq!((got.blksize, got.windowsize), (8, 4));
    }

    /// A plain download of `path` under [`rules`], its RRQ already taken from the outbox.
    fn download_started(path: &str) -> TftpClient {
        let req = ReadRequest {
            path: path.into(),
            options: vec![],
            goal: Goal::Download { keep: 0 },
        };
        let mut c = TftpClient::start(req, rules(), ms(0));
        c.poll_transmit();
        c
    }

    #[test]
    fn block_numbers_wrap_to_zero() {
        let mut c = download_started("big");
        for n in 1..=65_536u32 {
            let block = u16::try_from(n % 65_536).unwrap();
            c.handle_datagram(ms(1), &data(block, 512));
            assert_eq!(c.poll_transmit().unwrap().0, ack(block));
        }
        c.handle_datagram(ms(2), &data(1, 0));
        let got = c.result().unwrap().as_ref().unwrap();
        assert_eq!(got.bytes, 65_536 * 512);
    }

    #[test]
    fn retransmits_on_its_schedule_then_gives_up() {
        let mut c = download_started("x");
        for t in [4000, 8000, 12_000] {
            assert_eq!(c.poll_timeout(), Some(ms(t)));
            c.handle_timeout(ms(t));
            if c.result().is_none() {
                assert_eq!(c.poll_transmit().unwrap().1, To::Listener, "RRQ again");
            }
        }
        assert!(matches!(c.result(), Some(Err(TftpFailure::Unanswered(3)))));
        assert_eq!(c.retransmissions(), 3);
    }

    #[test]
    fn a_transfer_that_stalls_after_an_answer_times_out() {
        let mut c = download_started("x");
        c.handle_datagram(ms(1), &data(1, 512));
        while c.result().is_none() {
            let t = c.poll_timeout().expect("a timer runs");
            c.handle_timeout(t);
        }
        assert!(matches!(c.result(), Some(Err(TftpFailure::TimedOut(3)))));
    }

    #[test]
    fn first_block_probe_and_errors() {
        let req = ReadRequest {
            path: "1000000a/start4.elf".into(),
            options: vec![],
            goal: Goal::FirstBlock,
        };
        let mut c = TftpClient::start(req.clone(), rules(), ms(0));
        c.poll_transmit();
        c.handle_datagram(ms(1), &data(1, 512));
        assert_eq!(c.poll_transmit().unwrap().0, error(0, "Early terminate"));
        assert!(c.result().unwrap().is_ok());
        let mut c = TftpClient::start(req, rules(), ms(0));
        c.handle_datagram(ms(1), b"\x00\x05\x00\x01File not found\x00");
        assert!(matches!(c.result(), Some(Err(TftpFailure::NotFound(_)))));
        let mut c = TftpClient::start(
            ReadRequest {
                path: "y".into(),
                options: vec![],
                goal: Goal::Download { keep: 0 },
            },
            TftpRules {
                waits: Backoff::Fixed {
                    every: 1000,
                    total: 60_000,
                },
                file_timeout: Some(Duration::from_secs(30)),
            },
            ms(0),
        );
        let mut now = ms(0);
        while c.result().is_none() {
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now);
        }
        assert_eq!(now, ms(30_000));
        assert!(matches!(c.result(), Some(Err(TftpFailure::FileTimeout(_)))));
        let mut c = TftpClient::start(
            ReadRequest {
                path: "z".into(),
                options: vec![],
                goal: Goal::Download { keep: 0 },
            },
            rules(),
            ms(0),
        );
        c.handle_datagram(ms(1), &[0, 9, 1]);
        assert!(matches!(c.result(), Some(Err(TftpFailure::Protocol(_)))));
    }
}
