//! The sans-IO read-transfer state machine (quinn-proto shape).
//!
//! A [`Transfer`] owns no socket, file or clock: the shell feeds it datagrams from the client
//! ([`Transfer::handle_datagram`]) and timer expiries ([`Transfer::handle_timeout`]), and drains
//! what to send with [`Transfer::poll_transmit`]. DATA payloads are *described* (offset + length in
//! the file) rather than copied, so the shell reads them straight into its send buffer and the core
//! stays free of I/O.
//!
//! Block numbers are tracked as `u64` indices internally and put on the wire modulo 65536, so files
//! of more than 65535 blocks roll over to block 0 (the convention of tftp-hpa, atftp, curl, iPXE).

use std::time::{Duration, Instant};

use crate::packet::{ErrorCode, MAX_BLKSIZE, Opcode, Options, Packet, Repr, Request};

/// Block size without a `blksize` option (RFC 1350).
pub const DEFAULT_BLKSIZE: u16 = 512;
/// Largest `blksize` for a 1500-byte MTU over IPv4: 1500 - 20 (IP) - 8 (UDP) - 4 (TFTP).
pub const DEFAULT_MAX_BLKSIZE: u16 = 1468;
/// Largest windowsize tugboot agrees to (RFC 7440 allows 65535; more buys nothing on a LAN and
/// costs burst loss on small switches).
pub const MAX_WINDOWSIZE: u16 = 64;

/// Negotiation caps and retransmission policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Cap for the `blksize` option (derive it from the MTU with [`Limits::for_mtu`]).
    pub max_blksize: u16,
    /// Cap for the `windowsize` option, at most [`MAX_WINDOWSIZE`].
    pub max_windowsize: u16,
    /// Retransmission timeout when the client sends no `timeout` option.
    pub default_timeout: Duration,
    /// Upper bound of the exponential backoff.
    pub max_timeout: Duration,
    /// Retransmissions of the same window before the transfer is abandoned.
    pub max_retries: u32,
    /// Largest `timeout` option (RFC 2349 allows 1..=255 s) accepted. A larger value is left out
    /// of the OACK (RFC 2347's way to decline it) and the default timeout applies, so a client
    /// cannot make a slot wait minutes between retransmissions.
    pub max_client_timeout: Duration,
    /// Longest time a transfer may go without progress (an ACK that advances, or ACK 0 of the
    /// OACK) before it is abandoned, whatever the retry policy and the client's options.
    pub max_stall: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_blksize: DEFAULT_MAX_BLKSIZE,
            max_windowsize: MAX_WINDOWSIZE,
            default_timeout: Duration::from_secs(1),
            max_timeout: Duration::from_secs(16),
            max_retries: 5,
            max_client_timeout: Duration::from_secs(5),
            max_stall: Duration::from_secs(40),
        }
    }
}

impl Limits {
    /// Limits whose block size fits one datagram on a link with this MTU (no IP fragmentation,
    /// which many PXE ROMs cannot reassemble).
    #[must_use]
    pub fn for_mtu(mtu: u16, ipv6: bool) -> Self {
        let ip_header: u16 = if ipv6 { 40 } else { 20 };
        let max = mtu
            .saturating_sub(ip_header + 8 + 4)
            .clamp(DEFAULT_BLKSIZE, MAX_BLKSIZE);
        Self {
            max_blksize: max,
            ..Self::default()
        }
    }
}

/// What the shell must send next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transmit {
    /// A complete datagram (OACK or ERROR) was written to `buf[..len]`.
    Packet {
        /// Length written.
        len: usize,
    },
    /// A DATA header was written to `buf[..4]`; the shell copies `len` bytes of the file starting
    /// at `offset` into `buf[4..4 + len]` and sends `buf[..4 + len]`.
    Data {
        /// Wire block number (already wrapped).
        block: u16,
        /// Offset of the payload in the file.
        offset: u64,
        /// Payload length (`< blksize` only for the final block, possibly 0).
        len: usize,
    },
}

impl Transmit {
    /// Datagram length once the payload is in place.
    #[must_use]
    pub fn datagram_len(&self) -> usize {
        match *self {
            Self::Packet { len } => len,
            Self::Data { len, .. } => 4 + len,
        }
    }

    /// Copy the payload from an in-memory file into `buf` and return the datagram. `None` when
    /// `contents` is shorter than the size the transfer was created with.
    pub fn fill_from_slice<'b>(&self, buf: &'b mut [u8], contents: &[u8]) -> Option<&'b [u8]> {
        if let Self::Data { offset, len, .. } = *self {
            let start = usize::try_from(offset).ok()?;
            let src = contents.get(start..start.checked_add(len)?)?;
            buf.get_mut(4..4 + len)?.copy_from_slice(src);
        }
        buf.get(..self.datagram_len())
    }
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Every block, including the final short one, was acknowledged.
    Completed,
    /// The client sent ERROR (e.g. OVMF aborting with code 8 after reading `tsize`).
    ClientError {
        /// Code the client sent.
        code: ErrorCode,
        /// Message the client sent (printable ASCII only).
        message: String,
    },
    /// No acknowledgement after the retry limit.
    TimedOut,
    /// The client sent something that is not an ACK or ERROR; we answered ERROR 4.
    ProtocolViolation,
    /// The shell aborted it (file read failure, shutdown).
    Aborted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// OACK not yet acknowledged by ACK 0.
    Negotiating,
    /// Sending DATA.
    Sending,
    /// Finished; `pending_error` may still hold a final ERROR to send.
    Finished,
}

/// One read transfer, from the request to the final ACK.
#[derive(Debug)]
pub struct Transfer {
    size: u64,
    blksize: u16,
    windowsize: u16,
    timeout: Duration,
    oack: Option<Options>,
    phase: Phase,
    /// Highest block index (1-based, unwrapped) the client acknowledged.
    acked: u64,
    /// Next block index to send.
    next: u64,
    /// Number of the final block (the short one).
    last: u64,
    /// Highest index ever sent (for telling a valid ACK from a bogus one).
    highest_sent: u64,
    /// Whether the OACK still has to go out (initially or after a timeout).
    oack_pending: bool,
    deadline: Option<Instant>,
    /// When the transfer last made progress (creation counts): the stall bound runs from here.
    last_progress: Instant,
    retries: u32,
    limits: Limits,
    pending_error: Option<(ErrorCode, &'static str)>,
    outcome: Option<Outcome>,
    /// Payload bytes handed out for sending (retransmissions included).
    bytes_sent: u64,
    retransmits: u64,
}

impl Transfer {
    /// Start serving a read request for a file of `size` bytes. Options are negotiated here:
    /// `blksize` capped by `limits.max_blksize`, `tsize` answered with `size`, `timeout` accepted
    /// as sent up to `limits.max_client_timeout` (declined above it), `windowsize` capped by
    /// `limits.max_windowsize` (and [`MAX_WINDOWSIZE`]).
    #[must_use]
    pub fn new(req: &Request<'_>, size: u64, limits: Limits, now: Instant) -> Self {
        let mut accepted = Options::default();
        let max_blk = limits.max_blksize.clamp(DEFAULT_BLKSIZE, MAX_BLKSIZE);
        let blksize = match req.options.blksize {
            Some(b) => {
                let b = b.min(max_blk);
                accepted.blksize = Some(b);
                b
            }
            None => DEFAULT_BLKSIZE,
        };
        if req.options.tsize.is_some() {
            accepted.tsize = Some(size);
        }
        let timeout = match req.options.timeout {
            Some(t) if Duration::from_secs(u64::from(t)) <= limits.max_client_timeout => {
                accepted.timeout = Some(t);
                Duration::from_secs(u64::from(t))
            }
            _ => limits.default_timeout,
        };
        let windowsize = match req.options.windowsize {
            Some(w) => {
                let w = w.min(limits.max_windowsize.clamp(1, MAX_WINDOWSIZE));
                accepted.windowsize = Some(w);
                w
            }
            None => 1,
        };
        let oack = (!accepted.is_empty()).then_some(accepted);
        let (phase, next) = if oack.is_some() {
            (Phase::Negotiating, 0)
        } else {
            (Phase::Sending, 1)
        };
        Self {
            size,
            blksize,
            windowsize,
            timeout,
            oack_pending: oack.is_some(),
            oack,
            phase,
            acked: 0,
            next,
            last: size / u64::from(blksize) + 1,
            highest_sent: 0,
            deadline: None,
            last_progress: now,
            retries: 0,
            limits,
            pending_error: None,
            outcome: None,
            bytes_sent: 0,
            retransmits: 0,
        }
    }

    /// Negotiated block size.
    #[must_use]
    pub fn blksize(&self) -> u16 {
        self.blksize
    }

    /// Negotiated window size.
    #[must_use]
    pub fn windowsize(&self) -> u16 {
        self.windowsize
    }

    /// Options accepted in the OACK (`None` when the request carried none we accept).
    #[must_use]
    pub fn accepted_options(&self) -> Option<Options> {
        self.oack
    }

    /// Size of the file being served.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Payload bytes handed to the shell so far (retransmissions included).
    #[must_use]
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    /// Number of blocks (or OACKs) sent again after a timeout or a window rewind.
    #[must_use]
    pub fn retransmits(&self) -> u64 {
        self.retransmits
    }

    /// True once a retransmission timer has fired since the last progress: the client is slow,
    /// gone or hostile, so the shell stops holding buffers for it until it makes progress.
    #[must_use]
    pub fn is_stalled(&self) -> bool {
        self.retries > 0
    }

    /// How the transfer ended, once it has; the shell drops it when this is `Some` and
    /// [`Transfer::poll_transmit`] returns `None`.
    #[must_use]
    pub fn outcome(&self) -> Option<&Outcome> {
        self.outcome.as_ref()
    }

    /// True once finished and nothing is left to send.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.outcome.is_some() && self.pending_error.is_none()
    }

    /// Stop the transfer from the server side (read error, shutdown); an ERROR with `code` and
    /// `message` is sent to the client.
    pub fn abort(&mut self, code: ErrorCode, message: &'static str) {
        if self.outcome.is_none() {
            self.finish(Outcome::Aborted);
            self.pending_error = Some((code, message));
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        self.phase = Phase::Finished;
        self.deadline = None;
        self.outcome = Some(outcome);
    }

    /// The next instant at which [`Transfer::handle_timeout`] must be called: the retransmission
    /// timer, or the end of the stall bound if that comes first.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline.map(|d| d.min(self.stall_deadline()))
    }

    fn stall_deadline(&self) -> Instant {
        self.last_progress + self.limits.max_stall
    }

    fn current_timeout(&self) -> Duration {
        let cap = self.limits.max_timeout.max(self.timeout);
        let factor = 1u32.checked_shl(self.retries).unwrap_or(u32::MAX);
        self.timeout.checked_mul(factor).unwrap_or(cap).min(cap)
    }

    fn wire_block(index: u64) -> u16 {
        // Wrap to 0 after 65535: the low 16 bits of the index.
        (index & 0xffff) as u16
    }

    /// Feed one datagram received from the client's transfer ID.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        if self.phase == Phase::Finished {
            return;
        }
        let repr = Packet::new_checked(bytes)
            .ok()
            .and_then(|p| Repr::parse(&p).ok());
        match repr {
            Some(Repr::Ack { block }) => self.handle_ack(block, now),
            Some(Repr::Error { code, message }) => {
                // RFC 1350: an ERROR terminates the transfer and is never acknowledged or answered.
                self.finish(Outcome::ClientError {
                    code,
                    message: message.to_owned(),
                });
            }
            _ => {
                // A retransmitted RRQ from the same TID is harmless: the timer resends what is
                // needed. Anything else (DATA, OACK, WRQ, garbage) is a protocol violation.
                let is_rrq = Packet::new_checked(bytes)
                    .map(|p| p.opcode() == Opcode::Rrq)
                    .unwrap_or(false);
                if !is_rrq {
                    self.finish(Outcome::ProtocolViolation);
                    self.pending_error =
                        Some((ErrorCode::IllegalOperation, "illegal TFTP operation"));
                }
            }
        }
    }

    fn handle_ack(&mut self, block: u16, now: Instant) {
        match self.phase {
            Phase::Negotiating => {
                if block == 0 {
                    self.phase = Phase::Sending;
                    self.next = 1;
                    self.oack_pending = false;
                    self.progress(now);
                }
                // Any other block before the OACK is acknowledged is stale or bogus: ignore.
            }
            Phase::Sending => {
                // Map the 16-bit number onto the unwrapped range [acked, highest_sent]; the
                // window (<= 64) is far smaller than 65536, so the mapping is unique.
                let delta = block.wrapping_sub(Self::wire_block(self.acked));
                let index = self.acked + u64::from(delta);
                if delta == 0 || index > self.highest_sent {
                    // Duplicate ACK (or an ACK for something never sent): ignoring it is what
                    // prevents the Sorcerer's Apprentice syndrome; the timer covers real loss.
                    return;
                }
                self.acked = index;
                if self.acked >= self.last {
                    self.finish(Outcome::Completed);
                    return;
                }
                // The client acknowledges at the end of each window, or early at a gap: an ACK
                // short of what was sent means block `acked + 1` was lost, so resend from there
                // (RFC 7440 section 4). For windowsize 1 this is simply the next block.
                self.next = self.acked + 1;
                self.progress(now);
            }
            Phase::Finished => {}
        }
    }

    fn progress(&mut self, now: Instant) {
        self.retries = 0;
        self.deadline = None;
        self.last_progress = now;
    }

    /// Call when the instant from [`Transfer::poll_timeout`] has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline.min(self.stall_deadline()) || self.phase == Phase::Finished {
            return;
        }
        self.deadline = None;
        if self.retries >= self.limits.max_retries || now >= self.stall_deadline() {
            self.finish(Outcome::TimedOut);
            self.pending_error = Some((ErrorCode::NotDefined, "timed out"));
            return;
        }
        self.retries += 1;
        match self.phase {
            Phase::Negotiating => self.oack_pending = true,
            Phase::Sending => self.next = self.acked + 1,
            Phase::Finished => {}
        }
    }

    /// The next datagram to send, written into `buf` (at least `4 + blksize` bytes, or
    /// [`crate::packet::MAX_PACKET_LEN`] to be safe). Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((code, message)) = self.pending_error.take() {
            let repr = Repr::Error { code, message };
            if buf.len() < repr.buffer_len() {
                return None;
            }
            return Some(Transmit::Packet {
                len: repr.emit(buf),
            });
        }
        match self.phase {
            Phase::Finished => None,
            Phase::Negotiating => {
                if !self.oack_pending {
                    return None;
                }
                let options = self.oack?;
                let repr = Repr::Oack { options };
                if buf.len() < repr.buffer_len() {
                    return None;
                }
                self.oack_pending = false;
                if self.retries > 0 {
                    self.retransmits += 1;
                }
                self.arm(now);
                Some(Transmit::Packet {
                    len: repr.emit(buf),
                })
            }
            Phase::Sending => {
                let window_end = (self.acked + u64::from(self.windowsize)).min(self.last);
                if self.next > window_end || buf.len() < 4 + usize::from(self.blksize) {
                    return None;
                }
                let index = self.next;
                self.next += 1;
                if index <= self.highest_sent {
                    self.retransmits += 1;
                }
                self.highest_sent = self.highest_sent.max(index);
                let blksize = u64::from(self.blksize);
                let offset = (index - 1) * blksize;
                let len = self.size.saturating_sub(offset).min(blksize);
                // `len <= blksize <= 65464`, so it always fits.
                let len = usize::try_from(len).unwrap_or(0);
                self.bytes_sent += len as u64;
                let block = Self::wire_block(index);
                crate::packet::emit_data_header(buf, block);
                self.arm(now);
                Some(Transmit::Data { block, offset, len })
            }
        }
    }

    fn arm(&mut self, now: Instant) {
        if self.deadline.is_none() {
            self.deadline = Some(now + self.current_timeout());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::packet::{Mode, RequestKind};

    fn request(options: Options) -> Request<'static> {
        Request {
            kind: RequestKind::Read,
            filename: "f",
            mode: Mode::Octet,
            options,
        }
    }

    fn contents(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 7 + i / 251).to_le_bytes()[0])
            .collect()
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Dir {
        ToClient,
        ToServer,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Fate {
        Deliver,
        Drop,
        Duplicate,
    }

    /// A deliberately simple RFC 7440 client: ACK at the end of each window, ACK the last
    /// in-order block on a gap or a duplicate, re-ACK after its own timeout.
    struct Client {
        blksize: usize,
        window: u16,
        received: Vec<u8>,
        blocks: u64,
        since_ack: u16,
        last_sent: Option<Vec<u8>>,
        deadline: Option<Instant>,
        done: bool,
        error: Option<ErrorCode>,
        outbox: VecDeque<Vec<u8>>,
        data_seen: Vec<u16>,
    }

    const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

    impl Client {
        fn new() -> Self {
            Self {
                blksize: 512,
                window: 1,
                received: Vec::new(),
                blocks: 0,
                since_ack: 0,
                last_sent: None,
                deadline: None,
                done: false,
                error: None,
                outbox: VecDeque::new(),
                data_seen: Vec::new(),
            }
        }

        fn send_ack(&mut self, now: Instant, block: u16) {
            let mut buf = [0u8; 4];
            Repr::Ack { block }.emit(&mut buf);
            self.last_sent = Some(buf.to_vec());
            self.outbox.push_back(buf.to_vec());
            self.deadline = (!self.done).then(|| now + CLIENT_TIMEOUT);
        }

        fn handle(&mut self, now: Instant, bytes: &[u8]) {
            match Repr::parse_bytes(bytes).unwrap() {
                Repr::Oack { options } => {
                    if self.blocks == 0 {
                        self.blksize = usize::from(options.blksize.unwrap_or(512));
                        self.window = options.windowsize.unwrap_or(1);
                        self.send_ack(now, 0);
                    }
                }
                Repr::Data { block, data } => {
                    self.data_seen.push(block);
                    let expected = Transfer::wire_block(self.blocks + 1);
                    if block == expected && !self.done {
                        self.received.extend_from_slice(data);
                        self.blocks += 1;
                        self.since_ack += 1;
                        if data.len() < self.blksize {
                            self.done = true;
                            self.since_ack = 0;
                            self.send_ack(now, block);
                        } else if self.since_ack == self.window {
                            self.since_ack = 0;
                            self.send_ack(now, block);
                        } else {
                            self.deadline = Some(now + CLIENT_TIMEOUT);
                        }
                    } else {
                        // Gap or duplicate: acknowledge what we have.
                        self.since_ack = 0;
                        self.send_ack(now, Transfer::wire_block(self.blocks));
                    }
                }
                Repr::Error { code, .. } => {
                    self.error = Some(code);
                    self.done = true;
                    self.deadline = None;
                }
                other => panic!("client got {other:?}"),
            }
        }

        fn handle_timeout(&mut self, now: Instant) {
            if self.deadline.is_some_and(|d| now >= d) {
                if let Some(last) = self.last_sent.clone() {
                    self.outbox.push_back(last);
                }
                self.deadline = Some(now + CLIENT_TIMEOUT);
            }
        }
    }

    /// Moves datagrams between a `Transfer` and a `Client` with 1 ms latency and a fate per
    /// datagram decided by `net`.
    struct Pair<F: FnMut(Dir, &[u8]) -> Fate> {
        server: Transfer,
        client: Client,
        contents: Vec<u8>,
        now: Instant,
        net: F,
        in_flight: VecDeque<(Instant, Dir, Vec<u8>)>,
        data_sent: u64,
        server_errors: Vec<ErrorCode>,
    }

    impl<F: FnMut(Dir, &[u8]) -> Fate> Pair<F> {
        fn new(options: Options, contents: Vec<u8>, limits: Limits, net: F) -> Self {
            let now = Instant::now();
            let server = Transfer::new(&request(options), contents.len() as u64, limits, now);
            Self {
                server,
                client: Client::new(),
                contents,
                now,
                net,
                in_flight: VecDeque::new(),
                data_sent: 0,
                server_errors: Vec::new(),
            }
        }

        fn push(&mut self, dir: Dir, bytes: Vec<u8>) {
            let at = self.now + Duration::from_millis(1);
            match (self.net)(dir, &bytes) {
                Fate::Deliver => self.in_flight.push_back((at, dir, bytes)),
                Fate::Drop => {}
                Fate::Duplicate => {
                    self.in_flight.push_back((at, dir, bytes.clone()));
                    self.in_flight.push_back((at, dir, bytes));
                }
            }
        }

        fn flush(&mut self) {
            let mut buf = vec![0u8; crate::packet::MAX_PACKET_LEN];
            while let Some(t) = self.server.poll_transmit(self.now, &mut buf) {
                let dgram = t
                    .fill_from_slice(&mut buf, &self.contents)
                    .unwrap()
                    .to_vec();
                match t {
                    Transmit::Data { .. } => self.data_sent += 1,
                    Transmit::Packet { .. } => {
                        if let Ok(Repr::Error { code, .. }) = Repr::parse_bytes(&dgram) {
                            self.server_errors.push(code);
                        }
                    }
                }
                self.push(Dir::ToClient, dgram);
            }
            while let Some(d) = self.client.outbox.pop_front() {
                self.push(Dir::ToServer, d);
            }
        }

        /// Run until both sides are idle; returns the simulated duration.
        fn run(&mut self) -> Duration {
            let start = self.now;
            for _ in 0..10_000_000 {
                self.flush();
                let next = [
                    self.in_flight.front().map(|(t, _, _)| *t),
                    self.server.poll_timeout(),
                    self.client.deadline,
                ]
                .into_iter()
                .flatten()
                .min();
                let Some(next) = next else {
                    return self.now - start;
                };
                self.now = self.now.max(next);
                if let Some((t, _, _)) = self.in_flight.front()
                    && *t <= self.now
                {
                    let (_, dir, bytes) = self.in_flight.pop_front().unwrap();
                    match dir {
                        Dir::ToClient => self.client.handle(self.now, &bytes),
                        Dir::ToServer => self.server.handle_datagram(self.now, &bytes),
                    }
                    continue;
                }
                self.server.handle_timeout(self.now);
                if self.server.is_done() && self.client.done {
                    self.client.deadline = None;
                }
                self.client.handle_timeout(self.now);
            }
            panic!("simulation did not settle");
        }
    }

    fn deliver_all(_: Dir, _: &[u8]) -> Fate {
        Fate::Deliver
    }

    fn opcode(bytes: &[u8]) -> u16 {
        u16::from_be_bytes([bytes[0], bytes[1]])
    }

    fn block_of(bytes: &[u8]) -> u16 {
        u16::from_be_bytes([bytes[2], bytes[3]])
    }

    #[test]
    fn plain_transfer_short_last_block() {
        let mut pair = Pair::new(
            Options::default(),
            contents(1000),
            Limits::default(),
            deliver_all,
        );
        assert_eq!(pair.server.accepted_options(), None);
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        assert_eq!(pair.client.data_seen, vec![1, 2]);
        assert_eq!(pair.data_sent, 2);
        assert_eq!(pair.server.retransmits(), 0);
    }

    #[test]
    fn multiple_of_blksize_ends_with_empty_block() {
        let mut pair = Pair::new(
            Options::default(),
            contents(1024),
            Limits::default(),
            deliver_all,
        );
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.data_seen, vec![1, 2, 3]);
        assert_eq!(pair.client.received.len(), 1024);
        let mut empty = Pair::new(
            Options::default(),
            Vec::new(),
            Limits::default(),
            deliver_all,
        );
        empty.run();
        assert_eq!(empty.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(empty.client.data_seen, vec![1]);
    }

    #[test]
    fn negotiation_caps_and_answers() {
        let now = Instant::now();
        let opts = Options {
            blksize: Some(9000),
            tsize: Some(0),
            timeout: Some(5),
            windowsize: Some(100),
        };
        let t = Transfer::new(&request(opts), 123_456, Limits::default(), now);
        assert_eq!(
            t.accepted_options(),
            Some(Options {
                blksize: Some(1468),
                tsize: Some(123_456),
                timeout: Some(5),
                windowsize: Some(64),
            })
        );
        let t = Transfer::new(&request(opts), 1, Limits::for_mtu(9000, false), now);
        assert_eq!(t.blksize(), 8968);
        let t = Transfer::new(&request(opts), 1, Limits::for_mtu(1500, true), now);
        assert_eq!(t.blksize(), 1448);
        // A tiny (but legal) blksize is honoured, never raised.
        let small = Options {
            blksize: Some(8),
            ..Options::default()
        };
        let t = Transfer::new(&request(small), 1, Limits::default(), now);
        assert_eq!(t.blksize(), 8);
        // Only tsize: OACK carries the real size, the rest keeps RFC 1350 defaults.
        let tsize = Options {
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = Transfer::new(&request(tsize), 77, Limits::default(), now);
        assert_eq!((t.blksize(), t.windowsize()), (512, 1));
        let mut buf = [0xa5u8; 600];
        assert_eq!(
            t.poll_transmit(now, &mut buf),
            Some(Transmit::Packet { len: 11 })
        );
        assert_eq!(&buf[..11], b"\x00\x06tsize\x0077\x00");
        // Nothing else until ACK 0; a stray ACK 1 does not start the data.
        assert_eq!(t.poll_transmit(now, &mut buf), None);
        t.handle_datagram(now, b"\x00\x04\x00\x01");
        assert_eq!(t.poll_transmit(now, &mut buf), None);
        t.handle_datagram(now, b"\x00\x04\x00\x00");
        assert_eq!(
            t.poll_transmit(now, &mut buf),
            Some(Transmit::Data {
                block: 1,
                offset: 0,
                len: 77
            })
        );
    }

    #[test]
    fn windowed_transfer_with_options() {
        let opts = Options {
            blksize: Some(1024),
            tsize: Some(0),
            timeout: None,
            windowsize: Some(16),
        };
        let mut pair = Pair::new(opts, contents(100_000), Limits::default(), deliver_all);
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        assert_eq!(pair.data_sent, 98);
        assert_eq!(pair.server.retransmits(), 0);
    }

    #[test]
    fn duplicated_acks_cause_no_duplicate_data() {
        // Every datagram in both directions arrives twice. The client answers each duplicate
        // DATA with a duplicate ACK; a Sorcerer's Apprentice server would double its sends.
        let mut pair = Pair::new(
            Options::default(),
            contents(512 * 50 + 3),
            Limits::default(),
            |_, _| Fate::Duplicate,
        );
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        assert_eq!(pair.data_sent, 51);
        assert_eq!(pair.server.retransmits(), 0);
    }

    #[test]
    fn lost_data_is_retransmitted_after_timeout() {
        let mut dropped = false;
        let mut pair = Pair::new(
            Options::default(),
            contents(2000),
            Limits::default(),
            |dir, b| {
                if dir == Dir::ToClient && block_of(b) == 2 && !dropped {
                    dropped = true;
                    Fate::Drop
                } else {
                    Fate::Deliver
                }
            },
        );
        let took = pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        assert_eq!(pair.data_sent, 5);
        assert_eq!(pair.server.retransmits(), 1);
        // One default timeout (1 s) plus a few ms of simulated latency.
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(2),
            "{took:?}"
        );
    }

    #[test]
    fn lost_oack_is_retransmitted() {
        let mut drops = 2;
        let opts = Options {
            tsize: Some(0),
            ..Options::default()
        };
        let mut pair = Pair::new(opts, contents(600), Limits::default(), |dir, b| {
            if dir == Dir::ToClient && opcode(b) == 6 && drops > 0 {
                drops -= 1;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        let took = pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        assert_eq!(pair.server.retransmits(), 2);
        // Backoff: 1 s then 2 s.
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(4),
            "{took:?}"
        );
    }

    #[test]
    fn exponential_backoff_then_give_up() {
        let now = Instant::now();
        let limits = Limits {
            max_timeout: Duration::from_secs(8),
            ..Limits::default()
        };
        let mut t = Transfer::new(&request(Options::default()), 5000, limits, now);
        let mut buf = [0u8; 600];
        let mut at = now;
        let mut gaps = Vec::new();
        loop {
            let mut sent = 0;
            while let Some(tx) = t.poll_transmit(at, &mut buf) {
                sent += 1;
                if let Transmit::Data { block, .. } = tx {
                    assert_eq!(block, 1);
                }
            }
            assert!(sent <= 1);
            let Some(deadline) = t.poll_timeout() else {
                break;
            };
            gaps.push((deadline - at).as_secs());
            // A timeout call before the deadline changes nothing.
            t.handle_timeout(deadline - Duration::from_millis(1));
            assert_eq!(t.poll_timeout(), Some(deadline));
            at = deadline;
            t.handle_timeout(at);
        }
        assert_eq!(gaps, vec![1, 2, 4, 8, 8, 8]);
        assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
        assert!(t.is_done());
        assert_eq!(t.retransmits(), 5);
    }

    #[test]
    fn negotiated_timeout_is_the_base() {
        let now = Instant::now();
        let opts = Options {
            timeout: Some(5),
            blksize: Some(1468),
            ..Options::default()
        };
        let mut t = Transfer::new(&request(opts), 5000, Limits::default(), now);
        let mut buf = [0u8; 1600];
        assert!(t.poll_transmit(now, &mut buf).is_some());
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(5)));
    }

    #[test]
    fn client_timeout_above_the_cap_is_declined() {
        let now = Instant::now();
        let mut buf = [0u8; 1600];
        // timeout=255 (the slot-holding attack): left out of the OACK, default timer applies.
        let opts = Options {
            timeout: Some(255),
            tsize: Some(0),
            ..Options::default()
        };
        let mut t = Transfer::new(&request(opts), 5000, Limits::default(), now);
        assert_eq!(
            t.accepted_options(),
            Some(Options {
                tsize: Some(5000),
                ..Options::default()
            })
        );
        assert!(t.poll_transmit(now, &mut buf).is_some());
        assert_eq!(t.poll_timeout(), Some(now + Duration::from_secs(1)));
        // Only timeout=255: no option accepted, so no OACK at all (DATA 1 straight away).
        let opts = Options {
            timeout: Some(255),
            ..Options::default()
        };
        let mut t = Transfer::new(&request(opts), 5000, Limits::default(), now);
        assert_eq!(t.accepted_options(), None);
        assert!(matches!(
            t.poll_transmit(now, &mut buf),
            Some(Transmit::Data { block: 1, .. })
        ));
        // At the cap it is accepted and echoed.
        let opts = Options {
            timeout: Some(5),
            ..Options::default()
        };
        let t = Transfer::new(&request(opts), 5000, Limits::default(), now);
        assert_eq!(t.accepted_options().and_then(|o| o.timeout), Some(5));
    }

    /// Fire every timer until the transfer ends; returns when it ended. `on_fire` may feed the
    /// transfer datagrams (as a client would) at each firing.
    fn run_timers(
        t: &mut Transfer,
        start: Instant,
        mut on_fire: impl FnMut(&mut Transfer, Instant),
    ) -> Instant {
        let mut buf = [0u8; 1600];
        let mut at = start;
        for _ in 0..10_000 {
            while t.poll_transmit(at, &mut buf).is_some() {}
            let Some(deadline) = t.poll_timeout() else {
                return at;
            };
            assert!(deadline >= at, "timer in the past");
            at = deadline;
            t.handle_timeout(at);
            on_fire(t, at);
        }
        panic!("transfer never ended");
    }

    #[test]
    fn transfer_without_progress_ends_at_the_stall_bound() {
        // Even with a retry policy that would go on for hours, a client that never ACKs (or
        // only repeats old ACKs) loses its slot after `max_stall`.
        let limits = Limits {
            max_retries: 1_000,
            max_timeout: Duration::from_secs(16),
            ..Limits::default()
        };
        let start = Instant::now();
        for opts in [
            Options::default(),
            Options {
                timeout: Some(5),
                windowsize: Some(4),
                ..Options::default()
            },
            Options {
                tsize: Some(0),
                ..Options::default()
            },
        ] {
            let mut t = Transfer::new(&request(opts), 1 << 20, limits, start);
            let ended = run_timers(&mut t, start, |t, at| {
                // Duplicate ACK 0 / ACK of nothing new: not progress.
                if t.accepted_options().is_none() {
                    t.handle_datagram(at, b"\x00\x04\x00\x00");
                }
            });
            assert_eq!(ended - start, limits.max_stall, "{opts:?}");
            assert_eq!(t.outcome(), Some(&Outcome::TimedOut));
            assert!(t.is_done(), "the ERROR was drained");
        }
        // The default policy gives up earlier by itself: 1+2+4+8+16 s of retransmissions, then
        // the stall bound (40 s) cuts the last 16 s wait short.
        let mut t = Transfer::new(
            &request(Options::default()),
            1 << 20,
            Limits::default(),
            start,
        );
        let ended = run_timers(&mut t, start, |_, _| {});
        assert_eq!(ended - start, Duration::from_secs(40));
        assert_eq!(t.retransmits(), 5);
    }

    #[test]
    fn slow_progress_keeps_the_transfer_alive() {
        // A client that ACKs one new block every 30 s is slow but making progress: each ACK
        // restarts the stall bound, so it outlives 40 s.
        let limits = Limits {
            max_retries: 1_000,
            ..Limits::default()
        };
        let start = Instant::now();
        let mut t = Transfer::new(&request(Options::default()), 512 * 3 + 1, limits, start);
        let mut next_ack = 1u16;
        let mut last_ack_at = start;
        let ended = run_timers(&mut t, start, |t, at| {
            if at - last_ack_at >= Duration::from_secs(30) {
                let mut ack = *b"\x00\x04\x00\x00";
                ack[2..].copy_from_slice(&next_ack.to_be_bytes());
                t.handle_datagram(at, &ack);
                next_ack += 1;
                last_ack_at = at;
            }
        });
        assert_eq!(t.outcome(), Some(&Outcome::Completed));
        assert!(
            ended - start > Duration::from_secs(100),
            "{:?}",
            ended - start
        );
    }

    #[test]
    fn window_recovery_resends_from_gap() {
        let opts = Options {
            windowsize: Some(8),
            ..Options::default()
        };
        let mut dropped = false;
        let mut pair = Pair::new(opts, contents(512 * 20 + 1), Limits::default(), |dir, b| {
            if dir == Dir::ToClient && opcode(b) == 3 && block_of(b) == 3 && !dropped {
                dropped = true;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        let took = pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        // Blocks 3..=8 went out twice; recovery needed no timeout.
        assert_eq!(pair.server.retransmits(), 6);
        assert_eq!(pair.data_sent, 21 + 6);
        assert!(took < Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn block_numbers_wrap_to_zero() {
        let opts = Options {
            blksize: Some(8),
            windowsize: Some(7),
            ..Options::default()
        };
        let blocks = 65_536 + 10;
        let mut pair = Pair::new(
            opts,
            contents(8 * blocks + 5),
            Limits::default(),
            deliver_all,
        );
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
        let seen = &pair.client.data_seen;
        assert_eq!(seen.len(), blocks + 1);
        assert_eq!(&seen[65_533..65_538], &[65_534, 65_535, 0, 1, 2]);
    }

    #[test]
    fn wraparound_with_loss_around_the_wrap() {
        let opts = Options {
            blksize: Some(8),
            windowsize: Some(4),
            ..Options::default()
        };
        let mut drops = 0;
        let mut pair = Pair::new(opts, contents(8 * 65_600), Limits::default(), |dir, b| {
            let blk = block_of(b);
            if (blk == 0 || blk == 65_535 || blk == 1) && drops < 4 {
                drops += 1;
                let _ = dir;
                Fate::Drop
            } else {
                Fate::Deliver
            }
        });
        pair.run();
        assert_eq!(pair.server.outcome(), Some(&Outcome::Completed));
        assert_eq!(pair.client.received, pair.contents);
    }

    #[test]
    fn client_error_after_oack_stops_immediately() {
        // OVMF/AAVMF: RRQ tsize=0 blksize=1468 windowsize=4, read the OACK, ERROR 8.
        let now = Instant::now();
        let Repr::Request(req) = Repr::parse_bytes(
            b"\x00\x01bootaa64.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00windowsize\x004\x00",
        )
        .unwrap() else {
            panic!("not a request")
        };
        let mut t = Transfer::new(&req, 1_000_000, Limits::default(), now);
        let mut buf = [0u8; 1600];
        let Some(Transmit::Packet { len }) = t.poll_transmit(now, &mut buf) else {
            panic!("no OACK")
        };
        assert_eq!(
            Repr::parse_bytes(&buf[..len]).unwrap(),
            Repr::Oack {
                options: Options {
                    blksize: Some(1468),
                    tsize: Some(1_000_000),
                    timeout: None,
                    windowsize: Some(4),
                }
            }
        );
        t.handle_datagram(now, b"\x00\x05\x00\x08User aborted\x00");
        assert_eq!(
            t.outcome(),
            Some(&Outcome::ClientError {
                code: ErrorCode::OptionNegotiation,
                message: "User aborted".into()
            })
        );
        assert!(t.is_done());
        assert_eq!(t.poll_transmit(now, &mut buf), None);
        assert_eq!(t.poll_timeout(), None);
        // Late datagrams change nothing.
        t.handle_datagram(now, b"\x00\x04\x00\x00");
        assert_eq!(t.poll_transmit(now, &mut buf), None);
    }

    #[test]
    fn client_error_mid_transfer() {
        let mut pair = Pair::new(
            Options::default(),
            contents(512 * 10),
            Limits::default(),
            deliver_all,
        );
        pair.flush();
        pair.server
            .handle_datagram(pair.now, b"\x00\x05\x00\x03disk full\x00");
        pair.flush();
        assert!(pair.server.is_done());
        assert!(matches!(
            pair.server.outcome(),
            Some(Outcome::ClientError {
                code: ErrorCode::DiskFull,
                ..
            })
        ));
        assert!(pair.server_errors.is_empty(), "an ERROR is never answered");
    }

    #[test]
    fn illegal_packets_get_error_4() {
        let now = Instant::now();
        let mut buf = [0u8; 600];
        for bad in [
            &b"\x00\x03\x00\x01data"[..],
            b"\x00\x06",
            b"\x00\x02f\x00octet\x00",
            b"\xff",
        ] {
            let mut t = Transfer::new(&request(Options::default()), 10, Limits::default(), now);
            assert!(t.poll_transmit(now, &mut buf).is_some());
            t.handle_datagram(now, bad);
            let Some(Transmit::Packet { len }) = t.poll_transmit(now, &mut buf) else {
                panic!("no error for {bad:?}")
            };
            assert!(matches!(
                Repr::parse_bytes(&buf[..len]),
                Ok(Repr::Error {
                    code: ErrorCode::IllegalOperation,
                    ..
                })
            ));
            assert_eq!(t.outcome(), Some(&Outcome::ProtocolViolation));
            assert!(t.is_done());
        }
        // A retransmitted RRQ from the same TID is tolerated.
        let mut t = Transfer::new(&request(Options::default()), 10, Limits::default(), now);
        assert!(t.poll_transmit(now, &mut buf).is_some());
        t.handle_datagram(now, b"\x00\x01f\x00octet\x00");
        assert_eq!(t.outcome(), None);
    }

    #[test]
    fn acks_for_unsent_blocks_are_ignored() {
        let now = Instant::now();
        let mut t = Transfer::new(&request(Options::default()), 5000, Limits::default(), now);
        let mut buf = [0u8; 600];
        assert!(t.poll_transmit(now, &mut buf).is_some());
        t.handle_datagram(now, b"\x00\x04\x00\x05");
        t.handle_datagram(now, b"\x00\x04\xff\xff");
        assert_eq!(t.poll_transmit(now, &mut buf), None);
        t.handle_datagram(now, b"\x00\x04\x00\x01");
        assert!(matches!(
            t.poll_transmit(now, &mut buf),
            Some(Transmit::Data { block: 2, .. })
        ));
    }

    #[test]
    fn abort_sends_error_once() {
        let now = Instant::now();
        let mut t = Transfer::new(&request(Options::default()), 5000, Limits::default(), now);
        let mut buf = [0u8; 600];
        assert!(t.poll_transmit(now, &mut buf).is_some());
        t.abort(ErrorCode::NotDefined, "server shutting down");
        assert!(!t.is_done());
        let Some(Transmit::Packet { len }) = t.poll_transmit(now, &mut buf) else {
            panic!("no error")
        };
        assert_eq!(&buf[..len], b"\x00\x05\x00\x00server shutting down\x00");
        assert!(t.is_done());
        assert_eq!(t.outcome(), Some(&Outcome::Aborted));
        assert_eq!(t.poll_transmit(now, &mut buf), None);
    }

    /// xorshift64*: deterministic loss patterns without a dependency.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut s = seed | 1;
        move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_loss_and_duplication_still_delivers_identical_bytes() {
        for seed in 1..=12u64 {
            for window in [1u16, 4, 16] {
                let mut next = rng(seed * 31 + u64::from(window));
                let opts = Options {
                    blksize: Some(512),
                    windowsize: Some(window),
                    tsize: Some(0),
                    ..Options::default()
                };
                let limits = Limits {
                    max_retries: 20,
                    ..Limits::default()
                };
                let mut pair = Pair::new(opts, contents(512 * 200 + 17), limits, move |_, _| {
                    match next() % 100 {
                        0..=9 => Fate::Drop,
                        10..=14 => Fate::Duplicate,
                        _ => Fate::Deliver,
                    }
                });
                pair.run();
                assert_eq!(
                    pair.server.outcome(),
                    Some(&Outcome::Completed),
                    "seed {seed} w {window}"
                );
                assert_eq!(
                    pair.client.received, pair.contents,
                    "seed {seed} w {window}"
                );
            }
        }
    }
}
