//! DHCP as the firmware does it: requests rebuilt from captured packets, a relay agent's
//! rewrite, reply parsing, and a client state machine with per-firmware timing rules.
//!
//! Requests are not invented: each family's DISCOVER and REQUEST start from bytes captured
//! from that firmware (`tests/fixtures/dhcp/*.bin`, see its README), with only what differs per
//! machine patched in: `xid`, `secs`, `chaddr`, the client identifier (option 61, when the
//! firmware sends one), the SMBIOS UUID or Raspberry Pi serial (option 97), and the requested
//! address and server identifier (options 50, 54). Option order, parameter request lists,
//! vendor classes, flags and padding stay the firmware's.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::Backoff;

/// Offset of the options (after the 4-byte magic cookie).
const OPTIONS_AT: usize = 240;
const MAGIC: [u8; 4] = [99, 130, 83, 99];

/// Why bytes are not a usable DHCP message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpWireError {
    #[error("{0} bytes is shorter than a BOOTP message with options")]
    Short(usize),
    #[error("no DHCP magic cookie")]
    NoMagic,
    #[error("option {0} runs past the end")]
    Truncated(u8),
}

/// One captured request: the fixed header and the options in the order the firmware sent them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    header: [u8; OPTIONS_AT],
    options: Vec<(u8, Vec<u8>)>,
    /// Total length of the captured datagram (firmware pad to it).
    len: usize,
}

/// Parses the options field (pad skipped, stops at END); RFC 3396 long options are kept as
/// separate entries, which is all the simulator needs.
fn parse_options(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, DhcpWireError> {
    if bytes.len() < OPTIONS_AT {
        return Err(DhcpWireError::Short(bytes.len()));
    }
    if bytes[OPTIONS_AT - 4..OPTIONS_AT] != MAGIC {
        return Err(DhcpWireError::NoMagic);
    }
    let mut out = Vec::new();
    let mut i = OPTIONS_AT;
    while i < bytes.len() {
        let code = bytes[i];
        match code {
            0 => i += 1,
            255 => break,
            _ => {
                let len = usize::from(*bytes.get(i + 1).ok_or(DhcpWireError::Truncated(code))?);
                let value = bytes
                    .get(i + 2..i + 2 + len)
                    .ok_or(DhcpWireError::Truncated(code))?;
                out.push((code, value.to_vec()));
                i += 2 + len;
            }
        }
    }
    Ok(out)
}

impl Template {
    /// A template from a captured datagram.
    pub fn parse(bytes: &[u8]) -> Result<Self, DhcpWireError> {
        let options = parse_options(bytes)?;
        let mut header = [0u8; OPTIONS_AT];
        header.copy_from_slice(&bytes[..OPTIONS_AT]);
        Ok(Template {
            header,
            options,
            len: bytes.len(),
        })
    }

    /// The same request without some options (a plain PXE ROM is the iPXE ROM capture without
    /// iPXE's own options 77 and 175).
    #[must_use]
    pub fn without(mut self, codes: &[u8]) -> Self {
        self.options.retain(|(c, _)| !codes.contains(c));
        self
    }

    /// The same request as another message type with 50/54 placed right after option 53
    /// (how firmware that has no captured REQUEST orders them).
    #[must_use]
    pub fn as_request(mut self) -> Self {
        for (c, v) in &mut self.options {
            if *c == 53 {
                *v = vec![3];
            }
        }
        let at = self
            .options
            .iter()
            .position(|(c, _)| *c == 53)
            .map_or(0, |p| p + 1);
        self.options.insert(at, (50, vec![0; 4]));
        self.options.insert(at, (54, vec![0; 4]));
        self
    }

    /// The value of option `code` as captured.
    #[must_use]
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }
}

/// What identifies one simulated machine on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub mac: [u8; 6],
    pub uuid: [u8; 16],
    /// Raspberry Pi 4 serial (put into option 97 after `RPi4`).
    pub pi_serial: Option<u32>,
}

/// What one request carries besides the template and the identity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestFields {
    pub xid: u32,
    pub secs: u16,
    /// REQUEST: the offered address (option 50).
    pub requested: Option<Ipv4Addr>,
    /// REQUEST: the chosen server (option 54).
    pub server_id: Option<Ipv4Addr>,
}

/// Builds one request from `template` for `id`.
#[must_use]
pub fn build(template: &Template, id: &Identity, f: &RequestFields) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len.max(300));
    out.extend_from_slice(&template.header);
    out[4..8].copy_from_slice(&f.xid.to_be_bytes());
    out[8..10].copy_from_slice(&f.secs.to_be_bytes());
    // ciaddr, yiaddr, siaddr, giaddr: a client in INIT/SELECTING sends none.
    out[12..28].fill(0);
    out[3] = 0;
    out[28..44].fill(0);
    out[28..34].copy_from_slice(&id.mac);
    for (code, value) in &template.options {
        let value: Vec<u8> = match *code {
            50 => match f.requested {
                Some(a) => a.octets().to_vec(),
                None => continue,
            },
            54 => match f.server_id {
                Some(a) => a.octets().to_vec(),
                None => continue,
            },
            61 if value.len() == 7 && value[0] == 1 => {
                let mut v = vec![1];
                v.extend_from_slice(&id.mac);
                v
            }
            97 if value.len() == 17 && value[0] == 0 => {
                let mut v = value.clone();
                match id.pi_serial {
                    Some(serial) if &value[1..5] == b"RPi4" => {
                        v[5..9].copy_from_slice(&serial.to_be_bytes());
                    }
                    _ => v[1..17].copy_from_slice(&id.uuid),
                }
                v
            }
            _ => value.clone(),
        };
        push_option(&mut out, *code, &value);
    }
    out.push(255);
    let want = template.len.max(300);
    if out.len() < want {
        out.resize(want, 0);
    }
    out
}

fn push_option(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    for chunk in value.chunks(255) {
        out.push(code);
        out.push(u8::try_from(chunk.len()).unwrap_or(255));
        out.extend_from_slice(chunk);
    }
    if value.is_empty() {
        out.extend_from_slice(&[code, 0]);
    }
}

/// A relay agent's rewrite of a client request (RFC 3046 / RFC 2131 §4.1): `giaddr` set (if
/// not set yet), hops incremented, option 82 with circuit id (sub-option 1) and remote id (2)
/// appended before END. The datagram is rebuilt from its options, so padding after END is kept
/// only up to the original length.
pub fn relay_forward(
    request: &[u8],
    giaddr: Ipv4Addr,
    circuit_id: &[u8],
    remote_id: &[u8],
) -> Result<Vec<u8>, DhcpWireError> {
    let options = parse_options(request)?;
    let mut out = request[..OPTIONS_AT].to_vec();
    out[3] = out[3].saturating_add(1);
    if out[24..28] == [0, 0, 0, 0] {
        out[24..28].copy_from_slice(&giaddr.octets());
    }
    for (code, value) in options.iter().filter(|(c, _)| *c != 82) {
        push_option(&mut out, *code, value);
    }
    let mut agent = Vec::new();
    for (sub, v) in [(1u8, circuit_id), (2u8, remote_id)] {
        agent.push(sub);
        agent.push(u8::try_from(v.len().min(255)).unwrap_or(255));
        agent.extend_from_slice(&v[..v.len().min(255)]);
    }
    push_option(&mut out, 82, &agent);
    out.push(255);
    if out.len() < request.len() {
        out.resize(request.len(), 0);
    }
    Ok(out)
}

/// DHCP message types the client cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Offer,
    Ack,
    Nak,
    Other(u8),
}

/// A server's reply, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: MsgType,
    pub xid: u32,
    pub chaddr: [u8; 6],
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub file: String,
    pub server_id: Option<Ipv4Addr>,
    pub vendor_class: Option<Vec<u8>>,
    pub tftp_server_name: Option<String>,
    pub boot_file: Option<String>,
    pub vendor_options: Option<Vec<u8>>,
    /// iPXE's "no-pxedhcp" (option 175, encapsulated option 176, value non-zero).
    pub no_pxedhcp: bool,
}

fn cstr(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn addr(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl Reply {
    /// Parses a BOOTREPLY; anything else is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, DhcpWireError> {
        let options = parse_options(bytes)?;
        let get = |code: u8| options.iter().find(|(c, _)| *c == code).map(|(_, v)| v);
        let msg_type = match get(53).and_then(|v| v.first()) {
            Some(2) => MsgType::Offer,
            Some(5) => MsgType::Ack,
            Some(6) => MsgType::Nak,
            Some(&t) => MsgType::Other(t),
            None => MsgType::Other(0),
        };
        let mut chaddr = [0u8; 6];
        chaddr.copy_from_slice(&bytes[28..34]);
        let no_pxedhcp = get(175).is_some_and(|enc| {
            let mut i = 0;
            let mut found = false;
            while i + 1 < enc.len() {
                let (c, l) = (enc[i], usize::from(enc[i + 1]));
                if c == 176 && l >= 1 && enc.get(i + 2).is_some_and(|&v| v != 0) {
                    found = true;
                }
                i += 2 + l;
            }
            found
        });
        Ok(Reply {
            msg_type,
            xid: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            chaddr,
            yiaddr: addr(&bytes[16..20]),
            siaddr: addr(&bytes[20..24]),
            giaddr: addr(&bytes[24..28]),
            file: cstr(&bytes[108..236]),
            server_id: get(54).filter(|v| v.len() == 4).map(|v| addr(v)),
            vendor_class: get(60).cloned(),
            tftp_server_name: get(66).map(|v| cstr(v)),
            boot_file: get(67).map(|v| cstr(v)),
            vendor_options: get(43).cloned(),
            no_pxedhcp,
        })
    }

    /// The boot file: option 67, else the `file` field.
    #[must_use]
    pub fn boot_file_name(&self) -> Option<String> {
        self.boot_file
            .clone()
            .filter(|f| !f.is_empty())
            .or_else(|| (!self.file.is_empty()).then(|| self.file.clone()))
    }

    /// Where TFTP goes: `siaddr`, else option 66 when it is an address.
    #[must_use]
    pub fn next_server(&self) -> Option<Ipv4Addr> {
        if !self.siaddr.is_unspecified() {
            return Some(self.siaddr);
        }
        self.tftp_server_name
            .as_deref()
            .and_then(|s| s.parse().ok())
    }

    fn has_pxeclient(&self) -> bool {
        self.vendor_class
            .as_deref()
            .is_some_and(|v| v.starts_with(b"PXEClient"))
    }
}

/// How a firmware picks among offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Select {
    /// The first acceptable offer, at once (U-Boot, PXE ROMs, the Pi bootloader).
    FirstOffer,
    /// EDK2's Dhcp4Dxe under PxeBc/HttpBoot: offers are collected and one is chosen when the
    /// retransmission timer of the DISCOVER expires (its 1 s tick: 3–4 s after sending).
    AtRetransmitTimer,
    /// iPXE (`dhcp_discovery_rx`): at once if the offer says "no-pxedhcp" (175.176) or is itself
    /// a ProxyDHCP-capable offer (vendor class `PXEClient`), else keep waiting for ProxyDHCP
    /// offers until `proxy_wait` has passed since the DISCOVER phase began.
    Ipxe { proxy_wait: Duration },
}

/// What happens when the REQUEST gets no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestTimeout {
    /// The DHCP attempt fails.
    Fail,
    /// Back to DISCOVER on the same schedule (U-Boot's `bootp_timeout_handler`).
    Rediscover,
}

/// One firmware's DHCP client behaviour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpRules {
    pub discover: Backoff,
    pub request: Backoff,
    pub select: Select,
    pub request_timeout: RequestTimeout,
    /// Offers without this in option 43 are ignored (the Pi bootloader's `PXE_OPTION43`).
    pub require_option43: Option<&'static [u8]>,
    /// The firmware sends no REQUEST and takes the offer as its lease (Pi 3 ROM).
    pub sends_request: bool,
}

/// What a finished DHCP exchange gave the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub server_id: Option<Ipv4Addr>,
    pub next_server: Option<Ipv4Addr>,
    pub boot_file: Option<String>,
}

/// Why DHCP did not complete.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DhcpFailure {
    #[error("no offer after {0} DISCOVERs")]
    NoOffer(u32),
    #[error("no ACK after {0} REQUESTs")]
    NoAck(u32),
    #[error("NAK from {0:?}")]
    Nak(Option<Ipv4Addr>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Selecting,
    Requesting { offer: Box<Reply> },
    Done,
}

/// A DHCP client exchange (DISCOVER → OFFER → REQUEST → ACK) under `rules`.
#[derive(Debug)]
pub struct DhcpClient {
    rules: DhcpRules,
    discover: Template,
    request: Template,
    id: Identity,
    xid: u32,
    started: Duration,
    /// Start of the current DISCOVER phase (iPXE's proxy wait counts from it).
    phase_start: Duration,
    /// EDK2's timer phase: its 1-second tick fires this long after a transmission.
    tick_phase: Duration,
    state: State,
    sent: u32,
    /// DISCOVERs sent (index into the DISCOVER schedule; U-Boot's backoff goes on across a
    /// restart from REQUEST).
    discovers: u32,
    /// REQUESTs sent for the current offer.
    requests: u32,
    deadline: Option<Duration>,
    best: Option<Box<Reply>>,
    outbox: Vec<Vec<u8>>,
    result: Option<Result<Lease, DhcpFailure>>,
}

impl DhcpClient {
    /// Starts the exchange at `now` (the first DISCOVER is queued). `tick_phase` (0..1 s) is
    /// where EDK2's once-a-second timer falls relative to the DISCOVER.
    #[must_use]
    pub fn start(
        rules: DhcpRules,
        discover: Template,
        request: Template,
        id: Identity,
        xid: u32,
        now: Duration,
        tick_phase: Duration,
    ) -> Self {
        let mut c = DhcpClient {
            rules,
            discover,
            request,
            id,
            xid,
            started: now,
            phase_start: now,
            tick_phase: tick_phase.min(Duration::from_millis(999)),
            state: State::Selecting,
            sent: 0,
            discovers: 0,
            requests: 0,
            deadline: None,
            best: None,
            outbox: Vec::new(),
            result: None,
        };
        c.send_discover(now);
        c
    }

    fn secs(&self, now: Duration) -> u16 {
        u16::try_from(now.saturating_sub(self.started).as_secs()).unwrap_or(u16::MAX)
    }

    /// The wait after the next transmission in the current state, `None` when the schedule is
    /// exhausted (then nothing more is sent: firmware gives up when its last wait expires).
    fn next_wait(&self, now: Duration) -> Option<Duration> {
        let elapsed = now.saturating_sub(self.started);
        match self.state {
            State::Selecting => {
                let w = self.rules.discover.wait(self.discovers, elapsed)?;
                Some(if self.rules.select == Select::AtRetransmitTimer {
                    // EDK2 decrements the countdown on a 1 s tick whose phase is fixed.
                    w.saturating_sub(Duration::from_secs(1)) + self.tick_phase
                } else {
                    w
                })
            }
            _ => self.rules.request.wait(self.requests, elapsed),
        }
    }

    fn send_discover(&mut self, now: Duration) {
        let Some(wait) = self.next_wait(now) else {
            self.finish(Err(DhcpFailure::NoOffer(self.discovers)));
            return;
        };
        let f = RequestFields {
            xid: self.xid,
            secs: self.secs(now),
            ..RequestFields::default()
        };
        self.outbox.push(build(&self.discover, &self.id, &f));
        self.sent += 1;
        self.discovers += 1;
        self.deadline = Some(now + wait);
    }

    fn send_request(&mut self, now: Duration) {
        let State::Requesting { offer } = &self.state else {
            return;
        };
        let f = RequestFields {
            xid: self.xid,
            secs: self.secs(now),
            requested: Some(offer.yiaddr),
            server_id: offer.server_id,
        };
        let Some(wait) = self.next_wait(now) else {
            match self.rules.request_timeout {
                RequestTimeout::Fail => self.finish(Err(DhcpFailure::NoAck(self.requests))),
                RequestTimeout::Rediscover => self.rediscover(now),
            }
            return;
        };
        self.outbox.push(build(&self.request, &self.id, &f));
        self.sent += 1;
        self.requests += 1;
        self.deadline = Some(now + wait);
    }

    fn finish(&mut self, r: Result<Lease, DhcpFailure>) {
        self.state = State::Done;
        self.deadline = None;
        self.result = Some(r);
    }

    fn acceptable(&self, r: &Reply) -> bool {
        if r.xid != self.xid || r.chaddr != self.id.mac {
            return false;
        }
        match self.rules.require_option43 {
            Some(needle) => r
                .vendor_options
                .as_deref()
                .is_some_and(|v| v.windows(needle.len()).any(|w| w == needle)),
            None => true,
        }
    }

    fn take_offer(&mut self, now: Duration, offer: Box<Reply>) {
        if !self.rules.sends_request {
            self.finish(Ok(lease_of(&offer)));
            return;
        }
        self.state = State::Requesting { offer };
        self.requests = 0;
        self.send_request(now);
    }

    /// A datagram from the server (through the relay).
    pub fn handle_datagram(&mut self, now: Duration, bytes: &[u8]) {
        let Ok(reply) = Reply::parse(bytes) else {
            return;
        };
        if !self.acceptable(&reply) {
            return;
        }
        match (&self.state, reply.msg_type) {
            (State::Selecting, MsgType::Offer) if !reply.yiaddr.is_unspecified() => {
                let reply = Box::new(reply);
                match self.rules.select {
                    Select::FirstOffer => self.take_offer(now, reply),
                    Select::AtRetransmitTimer => {
                        if self.best.is_none() {
                            self.best = Some(reply);
                        }
                    }
                    Select::Ipxe { proxy_wait } => {
                        let go = reply.no_pxedhcp
                            || reply.has_pxeclient()
                            || now.saturating_sub(self.phase_start) > proxy_wait;
                        if go {
                            self.take_offer(now, reply);
                        } else if self.best.is_none() {
                            self.best = Some(reply);
                        }
                    }
                }
            }
            (State::Requesting { offer }, MsgType::Ack)
                if reply.server_id == offer.server_id || reply.server_id.is_none() =>
            {
                let lease = Lease {
                    address: reply.yiaddr,
                    server_id: reply.server_id.or(offer.server_id),
                    next_server: reply.next_server().or(offer.next_server()),
                    boot_file: reply.boot_file_name().or(offer.boot_file_name()),
                };
                self.finish(Ok(lease));
            }
            (State::Requesting { offer }, MsgType::Nak) if reply.server_id == offer.server_id => {
                let id = reply.server_id;
                self.finish(Err(DhcpFailure::Nak(id)));
            }
            _ => {}
        }
    }

    /// The retransmission (or offer-selection) timer fired.
    pub fn handle_timeout(&mut self, now: Duration) {
        let Some(deadline) = self.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        match &self.state {
            State::Selecting => {
                if let Some(best) = self.best.take() {
                    let waited = match self.rules.select {
                        Select::Ipxe { proxy_wait } => {
                            now.saturating_sub(self.phase_start) > proxy_wait
                        }
                        _ => true,
                    };
                    if waited {
                        self.take_offer(now, best);
                        return;
                    }
                    self.best = Some(best);
                }
                self.send_discover(now);
            }
            State::Requesting { .. } => self.send_request(now),
            State::Done => {}
        }
    }

    fn rediscover(&mut self, now: Duration) {
        self.state = State::Selecting;
        self.best = None;
        self.phase_start = now;
        self.send_discover(now);
    }

    /// When `handle_timeout` must be called next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Duration> {
        match self.state {
            State::Done => None,
            _ => self.deadline,
        }
    }

    /// Datagrams to send (to the relay, which forwards them).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbox.is_empty() {
            None
        } else {
            Some(self.outbox.remove(0))
        }
    }

    /// The outcome once finished.
    #[must_use]
    pub fn result(&self) -> Option<&Result<Lease, DhcpFailure>> {
        self.result.as_ref()
    }

    /// Datagrams sent beyond one DISCOVER and one REQUEST (retransmissions and restarts).
    #[must_use]
    pub fn retransmissions(&self) -> u32 {
        let base = if self.rules.sends_request { 2 } else { 1 };
        self.sent.saturating_sub(base)
    }

    /// The transaction id.
    #[must_use]
    pub fn xid(&self) -> u32 {
        self.xid
    }
}

fn lease_of(r: &Reply) -> Lease {
    Lease {
        address: r.yiaddr,
        server_id: r.server_id,
        next_server: r.next_server(),
        boot_file: r.boot_file_name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OVMF_DISCOVER: &[u8] = include_bytes!("../../../tests/fixtures/dhcp/ovmf-discover.bin");
    const OVMF_REQUEST: &[u8] = include_bytes!("../../../tests/fixtures/dhcp/ovmf-request.bin");
    const IPXE_DISCOVER: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ipxe-bios-discover.bin");
    const IPXE_REQUEST: &[u8] =
        include_bytes!("../../../tests/fixtures/dhcp/ipxe-bios-request.bin");
    const RPI4: &[u8] = include_bytes!("../../../tests/fixtures/dhcp/rpi4-discover.bin");

    fn id(last: u8) -> Identity {
        Identity {
            mac: [0x52, 0x54, 0x00, 0x12, 0x34, 0x01],
            uuid: [last; 16],
            pi_serial: None,
        }
    }

    /// Rebuilding a capture for the machine it came from gives the captured bytes again.
    #[test]
    fn rebuilt_captures_are_byte_identical() {
        let t = Template::parse(IPXE_DISCOVER).unwrap();
        let xid = u32::from_be_bytes(IPXE_DISCOVER[4..8].try_into().unwrap());
        let f = RequestFields {
            xid,
            secs: 4,
            ..RequestFields::default()
        };
        assert_eq!(build(&t, &id(0), &f), IPXE_DISCOVER);
        let t = Template::parse(IPXE_REQUEST).unwrap();
        let f = RequestFields {
            xid: u32::from_be_bytes(IPXE_REQUEST[4..8].try_into().unwrap()),
            secs: 14,
            requested: Some(Ipv4Addr::new(10, 77, 0, 173)),
            server_id: Some(Ipv4Addr::new(10, 77, 0, 1)),
        };
        assert_eq!(build(&t, &id(0), &f), IPXE_REQUEST);
        let t = Template::parse(OVMF_REQUEST).unwrap();
        let mut m = id(0);
        m.mac[5] = 2;
        let f = RequestFields {
            xid: u32::from_be_bytes(OVMF_REQUEST[4..8].try_into().unwrap()),
            secs: 0,
            requested: Some(Ipv4Addr::new(10, 77, 0, 174)),
            server_id: Some(Ipv4Addr::new(10, 77, 0, 1)),
        };
        assert_eq!(build(&t, &m, &f), OVMF_REQUEST);
    }

    #[test]
    fn identity_is_patched_in() {
        let t = Template::parse(IPXE_DISCOVER).unwrap();
        let m = Identity {
            mac: [2, 0, 0, 0, 0, 9],
            uuid: [7; 16],
            pi_serial: None,
        };
        let b = build(&t, &m, &RequestFields::default());
        let again = Template::parse(&b).unwrap();
        assert_eq!(&b[28..34], &m.mac);
        assert_eq!(again.option(61), Some(&[1, 2, 0, 0, 0, 0, 9][..]));
        assert_eq!(&again.option(97).unwrap()[1..], &[7; 16]);
        let pi = Template::parse(RPI4).unwrap();
        let m = Identity {
            mac: [0xdc, 0xa6, 0x32, 0, 0, 1],
            uuid: [1; 16],
            pi_serial: Some(0x1000_00ab),
        };
        let b = build(&pi, &m, &RequestFields::default());
        let o97 = Template::parse(&b).unwrap().option(97).unwrap().to_vec();
        assert_eq!(&o97[..9], b"\0RPi4\x10\x00\x00\xab");
        let req = Template::parse(RPI4).unwrap().as_request();
        let b = build(
            &req,
            &m,
            &RequestFields {
                requested: Some(Ipv4Addr::new(10, 0, 0, 5)),
                server_id: Some(Ipv4Addr::new(10, 0, 0, 1)),
                ..RequestFields::default()
            },
        );
        let opts = parse_options(&b).unwrap();
        assert_eq!(opts[0], (53, vec![3]));
        assert_eq!(opts[1], (54, vec![10, 0, 0, 1]));
        assert_eq!(opts[2], (50, vec![10, 0, 0, 5]));
    }

    #[test]
    fn relay_sets_giaddr_hops_and_option_82() {
        let out =
            relay_forward(OVMF_DISCOVER, Ipv4Addr::new(10, 100, 0, 1), b"port7", b"r0").unwrap();
        assert_eq!(out[3], 1);
        assert_eq!(&out[24..28], &[10, 100, 0, 1]);
        let opts = parse_options(&out).unwrap();
        assert_eq!(
            opts.last().unwrap(),
            &(82, b"\x01\x05port7\x02\x02r0".to_vec())
        );
        assert_eq!(
            opts[..opts.len() - 1],
            parse_options(OVMF_DISCOVER).unwrap()[..]
        );
        assert!(relay_forward(&[0; 10], Ipv4Addr::LOCALHOST, b"", b"").is_err());
    }

    /// A server reply for the tests: `opts` after 53.
    fn reply(msg: u8, xid: u32, mac: [u8; 6], yiaddr: [u8; 4], opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; OPTIONS_AT];
        b[0] = 2;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&xid.to_be_bytes());
        b[16..20].copy_from_slice(&yiaddr);
        b[20..24].copy_from_slice(&[10, 99, 0, 1]);
        b[28..34].copy_from_slice(&mac);
        b[236..240].copy_from_slice(&MAGIC);
        push_option(&mut b, 53, &[msg]);
        push_option(&mut b, 54, &[10, 99, 0, 1]);
        for (c, v) in opts {
            push_option(&mut b, *c, v);
        }
        b.push(255);
        b.resize(300, 0);
        b
    }

    fn client(rules: DhcpRules, tick: u64) -> DhcpClient {
        DhcpClient::start(
            rules,
            Template::parse(IPXE_DISCOVER).unwrap(),
            Template::parse(IPXE_REQUEST).unwrap(),
            id(0),
            42,
            Duration::ZERO,
            Duration::from_millis(tick),
        )
    }

    fn ipxe() -> DhcpRules {
        DhcpRules {
            discover: Backoff::Table(&[1000, 2000, 4000, 8000]),
            request: Backoff::Table(&[250, 500, 1000, 2000, 4000, 8000]),
            select: Select::Ipxe {
                proxy_wait: Duration::from_secs(2),
            },
            request_timeout: RequestTimeout::Fail,
            require_option43: None,
            sends_request: true,
        }
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x01];
    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// iPXE: an offer without no-pxedhcp and without `PXEClient` makes it wait for ProxyDHCP
    /// offers: retransmit at 1 s, REQUEST only at the timer after 2 s have passed (3 s).
    #[test]
    fn ipxe_waits_for_proxy_offers_unless_told_not_to() {
        let mut c = client(ipxe(), 0);
        assert!(c.poll_transmit().is_some());
        let offer = reply(2, 42, MAC, [10, 0, 0, 5], &[]);
        c.handle_datagram(ms(5), &offer);
        assert!(c.poll_transmit().is_none(), "keeps waiting");
        assert_eq!(c.poll_timeout(), Some(ms(1000)));
        c.handle_timeout(ms(1000));
        let again = c.poll_transmit().unwrap();
        assert_eq!(Template::parse(&again).unwrap().option(53), Some(&[1][..]));
        c.handle_datagram(ms(1005), &offer);
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.poll_timeout(), Some(ms(3000)));
        c.handle_timeout(ms(3000));
        let req = c.poll_transmit().unwrap();
        let t = Template::parse(&req).unwrap();
        assert_eq!(t.option(53), Some(&[3][..]));
        assert_eq!(t.option(50), Some(&[10, 0, 0, 5][..]));
        assert_eq!(t.option(54), Some(&[10, 99, 0, 1][..]));
        c.handle_datagram(ms(3002), &reply(5, 42, MAC, [10, 0, 0, 5], &[(67, b"x\0")]));
        let lease = c.result().unwrap().as_ref().unwrap();
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(lease.boot_file.as_deref(), Some("x"));
        assert_eq!(c.retransmissions(), 1);

        // With 175.176 = 1 (tugboot), or vendor class PXEClient: at once.
        for opts in [
            &[(175u8, &[176u8, 1, 1][..])][..],
            &[(60u8, &b"PXEClient"[..])][..],
        ] {
            let mut c = client(ipxe(), 0);
            c.poll_transmit();
            c.handle_datagram(ms(3), &reply(2, 42, MAC, [10, 0, 0, 6], opts));
            assert!(c.poll_transmit().is_some(), "REQUEST at once");
            assert_eq!(c.retransmissions(), 0);
        }
    }

    /// EDK2: offers are chosen when the DISCOVER's countdown hits zero on the 1 s tick.
    #[test]
    fn edk2_selects_at_its_timer_tick() {
        let rules = DhcpRules {
            discover: Backoff::Table(&[4000, 8000, 16000, 32000]),
            request: Backoff::Table(&[4000, 8000, 16000, 32000]),
            select: Select::AtRetransmitTimer,
            request_timeout: RequestTimeout::Fail,
            require_option43: None,
            sends_request: true,
        };
        let mut c = client(rules, 250);
        c.poll_transmit();
        assert_eq!(c.poll_timeout(), Some(ms(3250)));
        c.handle_datagram(ms(2), &reply(2, 42, MAC, [10, 0, 0, 7], &[]));
        assert!(c.poll_transmit().is_none());
        c.handle_timeout(ms(3250));
        assert!(c.poll_transmit().is_some(), "REQUEST at the tick");
        assert_eq!(c.retransmissions(), 0);
    }

    /// U-Boot: 250 ms doubling to 2 s; a REQUEST without answer starts over with DISCOVER;
    /// after 28 s it gives up.
    #[test]
    fn uboot_rediscovers_and_gives_up() {
        let rules = DhcpRules {
            discover: Backoff::Doubling {
                first: 250,
                cap: 2000,
                total: 28_000,
            },
            request: Backoff::Table(&[5000]),
            select: Select::FirstOffer,
            request_timeout: RequestTimeout::Rediscover,
            require_option43: None,
            sends_request: true,
        };
        let mut c = client(rules, 0);
        c.poll_transmit();
        c.handle_datagram(ms(1), &reply(2, 42, MAC, [10, 0, 0, 8], &[]));
        assert!(c.poll_transmit().is_some());
        assert_eq!(c.poll_timeout(), Some(ms(5001)));
        c.handle_timeout(ms(5001));
        let d = c.poll_transmit().unwrap();
        assert_eq!(Template::parse(&d).unwrap().option(53), Some(&[1][..]));
        let mut now = ms(5001);
        while c.result().is_none() {
            now = c.poll_timeout().unwrap();
            c.handle_timeout(now);
            while c.poll_transmit().is_some() {}
        }
        assert!(now <= ms(28_000), "{now:?}");
        assert!(matches!(c.result(), Some(Err(DhcpFailure::NoOffer(_)))));
    }

    /// The Pi ignores offers without "Raspberry Pi Boot" in option 43.
    #[test]
    fn pi_needs_its_option_43() {
        let rules = DhcpRules {
            discover: Backoff::Fixed {
                every: 4000,
                total: 45_000,
            },
            request: Backoff::Fixed {
                every: 4000,
                total: 45_000,
            },
            select: Select::FirstOffer,
            request_timeout: RequestTimeout::Fail,
            require_option43: Some(b"Raspberry Pi Boot"),
            sends_request: true,
        };
        let mut c = client(rules, 0);
        c.poll_transmit();
        c.handle_datagram(ms(1), &reply(2, 42, MAC, [10, 0, 0, 9], &[]));
        assert!(c.poll_transmit().is_none(), "ignored");
        let o43 = b"\x06\x01\x03\x0a\x04\x00Raspberry Pi Boot\xff";
        c.handle_datagram(ms(2), &reply(2, 42, MAC, [10, 0, 0, 9], &[(43, o43)]));
        assert!(c.poll_transmit().is_some());
    }

    #[test]
    fn foreign_and_broken_replies_are_ignored() {
        let mut c = client(ipxe(), 0);
        c.poll_transmit();
        c.handle_datagram(ms(1), &reply(2, 43, MAC, [10, 0, 0, 5], &[]));
        c.handle_datagram(ms(1), &reply(2, 42, [1; 6], [10, 0, 0, 5], &[]));
        c.handle_datagram(ms(1), &[0u8; 20]);
        c.handle_datagram(ms(1), &reply(2, 42, MAC, [0; 4], &[]));
        assert!(c.best.is_none());
        let mut cut = reply(2, 42, MAC, [10, 0, 0, 5], &[(67, b"abc")]);
        cut.truncate(OPTIONS_AT + 4);
        assert!(Reply::parse(&cut).is_err());
    }
}
