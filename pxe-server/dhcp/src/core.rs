//! The sans-IO decision core: `Server::handle(now, bytes, ingress) -> Outcome`.
//!
//! Requests run through an ordered chain (parse → rate limit → classify → policy →
//! per-message handler). Nothing here reads a clock, a socket, a file or a random
//! source; `now` and the bytes come in, replies, records to persist and events go
//! out. The shell must make `Outcome::persist` durable before sending
//! `Outcome::replies` (see [`crate::lease`]).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use dhcproto::v4::{
    DhcpOption, DhcpOptions, Message, MessageType, Opcode, OptionCode, UnknownOption,
};

use crate::boot::{BootParams, boot_params};
use crate::classify::{ArchCode, Classification, Firmware, Mac, Uuid, classify};
use crate::config::{Config, Mode, Subnet, UnknownPolicy};
use crate::lease::{ClientKey, LeaseRecord, LeaseState, LeaseTable};
use crate::ratelimit::RateLimiter;
use crate::wire::{Request, WireError, encode_reply};

/// UDP port of the DHCP server.
pub const DHCP_SERVER_PORT: u16 = 67;
/// UDP port of the DHCP client.
pub const DHCP_CLIENT_PORT: u16 = 68;
/// UDP port of the PXE boot server (ProxyDHCP requests, PXE spec §2.2.5).
pub const PXE_PORT: u16 = 4011;

/// Which server socket a datagram arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerPort {
    /// Port 67.
    Dhcp,
    /// Port 4011.
    Pxe,
}

/// Where a datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ingress {
    /// Address of the interface it arrived on (selects the local subnet).
    pub interface: Ipv4Addr,
    /// Socket it arrived on.
    pub port: ServerPort,
    /// Source address and port.
    pub src: SocketAddrV4,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Destination.
    pub dest: SocketAddrV4,
    /// Set when `dest` is the not-yet-configured client's new address: the shell must
    /// deliver to this MAC without ARP (static ARP entry or raw socket) or, if it
    /// cannot, send to 255.255.255.255 instead.
    pub link_layer: Option<Mac>,
    /// DHCP message type (for logs).
    pub msg_type: MessageType,
    /// Encoded payload (at least 300 bytes).
    pub bytes: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ignored {
    /// Not a well-formed DHCP request.
    Malformed(WireError),
    /// Over the per-client rate.
    RateLimited,
    /// Not a netboot client (proxy mode) or not a known machine (reservation-only).
    NotForUs,
    /// No subnet serves the relay/interface address.
    NoSubnet(Ipv4Addr),
    /// The pools of the subnet are exhausted.
    PoolExhausted,
    /// A relayed datagram (giaddr set) from a source that is not in `trusted_relays`
    /// (only when that list is configured).
    UntrustedRelay(Ipv4Addr),
    /// The client chose another server.
    OtherServer,
    /// Nothing on record for the client's address (RFC 2131 says stay silent).
    NoRecord,
    /// A message type this mode does not answer.
    Unhandled(MessageType),
    /// The reply could not be encoded.
    Encode(WireError),
}

/// The address an observed client holds or gets, and how DHCP knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ObservedAddress {
    /// Offered in this server's reply (the client may still take another server's).
    Offered(Ipv4Addr),
    /// Bound by this server's ACK to this request.
    Leased(Ipv4Addr),
    /// The client's own `ciaddr` (INFORM, PXE port 4011, renewals this server did not
    /// acknowledge): what it says it holds.
    Claimed(Ipv4Addr),
}

impl ObservedAddress {
    /// The address, however it is known.
    pub fn address(self) -> Ipv4Addr {
        match self {
            Self::Offered(a) | Self::Leased(a) | Self::Claimed(a) => a,
        }
    }
}

/// The relay path of an observed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedRelay {
    /// giaddr (0.0.0.0 when option 82 came from a snooping switch on the local link).
    pub giaddr: Ipv4Addr,
    /// Option 82 sub-option 1 (circuit id: typically the switch port).
    pub circuit_id: Option<Vec<u8>>,
    /// Option 82 sub-option 2 (remote id: typically the switch).
    pub remote_id: Option<Vec<u8>>,
    /// Whether the datagram came from a configured relay (`trusted_relays`). Untrusted
    /// relay facts are still reported, for what they are: claims.
    pub trusted: bool,
}

/// What DHCP saw of one netboot request: the raw material of facts "observed by DHCP".
///
/// Emitted for every DISCOVER, REQUEST and INFORM from a netboot client (any firmware
/// but [`Firmware::Plain`]) on port 67 or 4011, known or unknown, answered or not — but
/// not for datagrams the rate limiter drops. Every field is a claim by whoever sent
/// the datagram; nothing here is authenticated. Built by moving the classification's
/// fields, so it costs one allocation (the box) plus option 12 when present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// `chaddr`, when Ethernet.
    pub mac: Option<Mac>,
    /// Option 61 as sent.
    pub client_id: Option<Vec<u8>>,
    /// DISCOVER, REQUEST or INFORM.
    pub msg_type: MessageType,
    /// Port 67 or 4011.
    pub port: ServerPort,
    /// Firmware kind and platform (`Firmware::label`: `pxe/uefi-x64`, `ipxe/bios`,
    /// `http-boot/uefi-arm64`, `uboot/uboot-arm64`, `rpi/pi4`, ...).
    pub firmware: Firmware,
    /// Option 93 codes, in the order sent.
    pub arches: Vec<ArchCode>,
    /// Option 60 as sent.
    pub vendor_class: Option<Vec<u8>>,
    /// Option 77 entries.
    pub user_classes: Vec<Vec<u8>>,
    /// SMBIOS UUID from option 97; never the all-zero UUID.
    pub uuid: Option<Uuid>,
    /// Raspberry Pi serial number (hex), for Pi 4/5 bootloaders.
    pub pi_serial: Option<String>,
    /// Option 12 as sent.
    pub hostname: Option<Vec<u8>>,
    /// Relay path, when relayed or when option 82 is present.
    pub relay: Option<ObservedRelay>,
    /// The address it holds or gets, when known.
    pub address: Option<ObservedAddress>,
    /// Whether a reservation matched it.
    pub known: bool,
}

impl Observation {
    /// Option 60 as text (lossy).
    pub fn vendor_class_text(&self) -> Option<String> {
        self.vendor_class
            .as_deref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Option 12 as text (lossy, trailing NULs dropped).
    pub fn hostname_text(&self) -> Option<String> {
        self.hostname.as_deref().map(|h| {
            let end = h.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
            String::from_utf8_lossy(&h[..end]).into_owned()
        })
    }
}

/// Something the rest of tugboot should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// What a netboot request showed (see [`Observation`]).
    Observed(Box<Observation>),
    /// A lease was bound or renewed.
    Leased {
        /// Address.
        address: Ipv4Addr,
        /// MAC.
        mac: Option<Mac>,
        /// Expiry.
        expires_at: SystemTime,
    },
    /// A lease was released.
    Released {
        /// Address.
        address: Ipv4Addr,
    },
    /// An address was declined as in use.
    Declined {
        /// Address.
        address: Ipv4Addr,
    },
    /// A NAK was sent.
    Nak {
        /// Address the client asked for.
        requested: Option<Ipv4Addr>,
    },
    /// A request was dropped.
    Ignored {
        /// MAC, if the packet got that far.
        mac: Option<Mac>,
        /// Why.
        reason: Ignored,
    },
}

/// The result of one `handle` call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Make these durable first.
    pub persist: Vec<LeaseRecord>,
    /// Then send these.
    pub replies: Vec<Reply>,
    /// Report these.
    pub events: Vec<Event>,
}

/// The DHCP decision core.
#[derive(Debug)]
pub struct Server {
    config: Config,
    leases: LeaseTable,
    limiter: RateLimiter<ClientKey>,
    /// Per subnet, the pool position after the last dynamic allocation: scans start
    /// there, so allocation is O(1) in the common case and a just-released address
    /// is not handed to the next client at once.
    cursors: Vec<u64>,
}

enum Step {
    Reply(Box<Message>, SocketAddrV4, Option<Mac>),
    Silent(Ignored),
}

impl Server {
    /// A server with an empty lease table.
    pub fn new(config: Config) -> Self {
        let l = &config.limits;
        let limiter =
            RateLimiter::new(l.per_mac_burst, l.per_mac_per_second, l.max_tracked_clients);
        Self {
            config,
            leases: LeaseTable::default(),
            limiter,
            cursors: Vec::new(),
        }
    }

    /// Restores persisted lease records (at start-up, before the first `handle`).
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = &'a LeaseRecord>) {
        self.leases.restore(records);
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The lease table (read-only).
    pub fn leases(&self) -> &LeaseTable {
        &self.leases
    }

    /// Handles one datagram.
    pub fn handle(&mut self, now: SystemTime, bytes: &[u8], ingress: Ingress) -> Outcome {
        let mut out = Outcome::default();
        self.leases.expire(now);
        let req = match Request::parse(bytes) {
            Ok(r) => r,
            Err(e) => {
                out.events.push(Event::Ignored {
                    mac: None,
                    reason: Ignored::Malformed(e),
                });
                return out;
            }
        };
        let mut class = classify(&req);
        let key = client_key(&req, &class);
        if !self.limiter.allow(&key, now) {
            out.events.push(Event::Ignored {
                mac: class.mac,
                reason: Ignored::RateLimited,
            });
            return out;
        }
        let giaddr = req.msg.giaddr();
        let trusted = !giaddr.is_unspecified() && self.config.is_trusted_relay(*ingress.src.ip());
        if !trusted {
            class.relay.distrust();
        }

        let step = if !giaddr.is_unspecified() && !trusted && !self.config.trusted_relays.is_empty()
        {
            Step::Silent(Ignored::UntrustedRelay(*ingress.src.ip()))
        } else {
            self.decide(now, &req, &class, &key, ingress, &mut out)
        };
        let mut address = None;
        match step {
            Step::Reply(msg, dest, link_layer) => {
                let msg_type = msg.opts().msg_type().unwrap_or(MessageType::Unknown(0));
                let yiaddr = msg.yiaddr();
                match encode_reply(&msg, class.relay.option82.as_deref(), req.max_reply_len()) {
                    Ok(bytes) => {
                        address = match msg_type {
                            _ if yiaddr.is_unspecified() => None,
                            MessageType::Offer => Some(ObservedAddress::Offered(yiaddr)),
                            MessageType::Ack => Some(ObservedAddress::Leased(yiaddr)),
                            _ => None,
                        };
                        out.replies.push(Reply {
                            dest,
                            link_layer,
                            msg_type,
                            bytes,
                        });
                    }
                    Err(e) => {
                        // Never acknowledge what cannot be sent; keep persisted records
                        // anyway (they describe state the table already holds).
                        out.events.push(Event::Ignored {
                            mac: class.mac,
                            reason: Ignored::Encode(e),
                        });
                    }
                }
            }
            Step::Silent(reason) => out.events.push(Event::Ignored {
                mac: class.mac,
                reason,
            }),
        }
        if class.firmware.is_netboot()
            && matches!(
                req.msg_type,
                MessageType::Discover | MessageType::Request | MessageType::Inform
            )
        {
            let ciaddr = req.msg.ciaddr();
            let address =
                address.or((!ciaddr.is_unspecified()).then_some(ObservedAddress::Claimed(ciaddr)));
            let known = self.is_known(&class);
            out.events.push(Event::Observed(Box::new(observation(
                class, &req, ingress, trusted, address, known,
            ))));
        }
        out
    }

    fn is_known(&self, class: &Classification) -> bool {
        self.reservation(class).is_some()
    }

    fn reservation(&self, class: &Classification) -> Option<&crate::config::Reservation> {
        self.config.reservations.iter().find(|r| {
            (r.mac.is_some() && r.mac == class.mac)
                || (r.client_id.is_some() && r.client_id == class.client_id)
        })
    }

    fn decide(
        &mut self,
        now: SystemTime,
        req: &Request,
        class: &Classification,
        key: &ClientKey,
        ingress: Ingress,
        out: &mut Outcome,
    ) -> Step {
        let known = self.is_known(class);
        let netboot = class.firmware.is_netboot();
        let boot_allowed = known || self.config.unknown_machines == UnknownPolicy::BootDefault;
        let boot = if netboot && boot_allowed {
            boot_params(class, &self.config)
        } else {
            None
        };

        if self.config.mode == Mode::ReservationOnly && !known {
            return Step::Silent(Ignored::NotForUs);
        }
        if ingress.port == ServerPort::Pxe {
            return self.pxe_boot_server(req, class, boot, ingress);
        }
        match self.config.mode {
            Mode::Proxy => self.proxy(req, class, boot),
            Mode::Authoritative | Mode::ReservationOnly => {
                self.authoritative(now, req, class, key, boot, ingress, out)
            }
        }
    }

    /// ProxyDHCP on port 67: DISCOVER from a netboot client → OFFER with boot
    /// parameters and no address.
    fn proxy(&self, req: &Request, class: &Classification, boot: Option<BootParams>) -> Step {
        let Some(boot) = boot else {
            return Step::Silent(Ignored::NotForUs);
        };
        if req.msg_type != MessageType::Discover {
            return Step::Silent(Ignored::Unhandled(req.msg_type));
        }
        if !matches!(
            class.firmware,
            Firmware::Pxe(_) | Firmware::HttpBoot(_) | Firmware::Ipxe(_) | Firmware::RaspberryPi(_)
        ) {
            return Step::Silent(Ignored::NotForUs);
        }
        let mut msg = self.reply_base(req, class, MessageType::Offer);
        apply_boot(&mut msg, &proxy_flavour(boot, class), class);
        let dest = reply_dest(req, &msg, false);
        Step::Reply(Box::new(msg), dest.0, dest.1)
    }

    /// Port 4011: a PXE client asks the boot server directly (REQUEST or INFORM,
    /// ciaddr set) → ACK to the source address and port.
    fn pxe_boot_server(
        &self,
        req: &Request,
        class: &Classification,
        boot: Option<BootParams>,
        ingress: Ingress,
    ) -> Step {
        let Some(boot) = boot else {
            return Step::Silent(Ignored::NotForUs);
        };
        if !matches!(req.msg_type, MessageType::Request | MessageType::Inform) {
            return Step::Silent(Ignored::Unhandled(req.msg_type));
        }
        let mut msg = self.reply_base(req, class, MessageType::Ack);
        msg.set_ciaddr(req.msg.ciaddr());
        apply_boot(&mut msg, &proxy_flavour(boot, class), class);
        Step::Reply(Box::new(msg), ingress.src, None)
    }

    /// A configured client on a subnet behind a relay renews (RENEWING) and informs by
    /// unicast straight to the server: no giaddr, `ciaddr` = source address, and that
    /// address is not on the receiving interface's subnet. Its subnet is then the one
    /// holding `ciaddr` (RFC 2131 §4.3.2, §4.3.5); selecting by the interface would NAK
    /// every relayed client at T1. A client whose address is on the interface's subnet
    /// keeps that subnet. Limitation: the shell does not tell unicast from broadcast,
    /// so a machine moved onto this link that broadcasts a REBIND for an address of
    /// one of our relayed subnets is treated like a routed renewal (ACKed, not NAKed).
    fn routed_client(&self, req: &Request, ingress: Ingress) -> Option<Ipv4Addr> {
        let ciaddr = req.msg.ciaddr();
        if ciaddr.is_unspecified() || *ingress.src.ip() != ciaddr {
            return None;
        }
        let subnets = &self.config.subnets;
        if subnets
            .iter()
            .any(|s| s.network.contains(ingress.interface) && s.network.contains(ciaddr))
        {
            return None;
        }
        subnets
            .iter()
            .any(|s| s.network.contains(ciaddr))
            .then_some(ciaddr)
    }
    #[allow(clippy::too_many_arguments)]
    fn authoritative(
        &mut self,
        now: SystemTime,
        req: &Request,
        class: &Classification,
        key: &ClientKey,
        boot: Option<BootParams>,
        ingress: Ingress,
        out: &mut Outcome,
    ) -> Step {
        let selector = class
            .relay
            .selector()
            .or_else(|| self.routed_client(req, ingress))
            .unwrap_or(ingress.interface);
        let Some(subnet_idx) = self
            .config
            .subnets
            .iter()
            .position(|s| s.network.contains(selector))
        else {
            return Step::Silent(Ignored::NoSubnet(selector));
        };
        let Some(subnet) = self.config.subnets.get(subnet_idx).cloned() else {
            return Step::Silent(Ignored::NoSubnet(selector));
        };
        let requested = match req.raw.get(50) {
            Some([a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        };
        let server_id = match req.raw.get(54) {
            Some([a, b, c, d]) => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        };
        let reserved = self
            .reservation(class)
            .and_then(|r| r.address)
            .filter(|a| subnet.network.contains(*a));

        match req.msg_type {
            MessageType::Discover => {
                let Some(addr) = self.pick_address(subnet_idx, &subnet, key, reserved, requested)
                else {
                    return Step::Silent(Ignored::PoolExhausted);
                };
                // A full offer table still gets an OFFER, it just reserves nothing: a
                // flood of DISCOVERs from made-up MACs must not lock the next real
                // client out (its REQUEST binds any free address, see below).
                if self.leases.offer_of(key).is_some()
                    || self.leases.pending_offers() < self.config.limits.max_pending_offers
                {
                    self.leases
                        .offer(key.clone(), addr, now + self.config.limits.offer_ttl);
                }
                let mut msg = self.reply_base(req, class, MessageType::Offer);
                msg.set_yiaddr(addr);
                self.lease_options(&mut msg, &subnet, class, subnet.lease_time);
                if let Some(b) = &boot {
                    apply_boot(&mut msg, b, class);
                }
                let (dest, ll) = reply_dest(req, &msg, false);
                Step::Reply(Box::new(msg), dest, ll)
            }
            MessageType::Request => {
                let ciaddr = req.msg.ciaddr();
                let target = match (server_id, requested) {
                    // SELECTING.
                    (Some(sid), _) if sid != self.server_id(class) => {
                        self.leases.withdraw_offer(key);
                        return Step::Silent(Ignored::OtherServer);
                    }
                    (Some(_), Some(r)) => r,
                    (Some(_), None) if !ciaddr.is_unspecified() => ciaddr,
                    (Some(_), None) => return self.nak(req, class, None, out),
                    // INIT-REBOOT.
                    (None, Some(r)) => r,
                    // RENEWING / REBINDING.
                    (None, None) if !ciaddr.is_unspecified() => ciaddr,
                    (None, None) => return Step::Silent(Ignored::NoRecord),
                };
                if !subnet.network.contains(target) {
                    return self.nak(req, class, Some(target), out);
                }
                let ours = self.leases.lease_of(key) == Some(target)
                    || self.leases.offer_of(key) == Some(target)
                    || reserved == Some(target);
                if !ours {
                    let taken = !self.leases.is_bindable_by(target, key)
                        || reserved.is_some_and(|r| r != target)
                        || self.reserved_for_other(target, class);
                    // SELECTING a free pool address whose offer this client no longer
                    // holds (expired, never remembered because the table was full, or
                    // taken over by a later DISCOVER): offers are soft, the first
                    // REQUEST binds. Never outside the pools, never from INIT-REBOOT
                    // (RFC 2131 §4.3.2: no record, stay silent).
                    let selecting_free = server_id.is_some()
                        && !taken
                        && target != self.config.server_address
                        && in_pools(&subnet, target);
                    if !selecting_free {
                        if taken || server_id.is_some() {
                            return self.nak(req, class, Some(target), out);
                        }
                        return Step::Silent(Ignored::NoRecord);
                    }
                }
                let expires_at = now + subnet.lease_time;
                self.leases.bind(target, key.clone(), class.mac, expires_at);
                out.persist.push(LeaseRecord {
                    address: target,
                    client: key.clone(),
                    mac: class.mac,
                    state: LeaseState::Bound,
                    expires_at,
                });
                out.events.push(Event::Leased {
                    address: target,
                    mac: class.mac,
                    expires_at,
                });
                let mut msg = self.reply_base(req, class, MessageType::Ack);
                msg.set_yiaddr(target);
                msg.set_ciaddr(ciaddr);
                self.lease_options(&mut msg, &subnet, class, subnet.lease_time);
                if let Some(b) = &boot {
                    apply_boot(&mut msg, b, class);
                }
                let (dest, ll) = reply_dest(req, &msg, false);
                Step::Reply(Box::new(msg), dest, ll)
            }
            MessageType::Release => {
                let addr = req.msg.ciaddr();
                if self.leases.release(addr, key) {
                    out.persist.push(LeaseRecord {
                        address: addr,
                        client: key.clone(),
                        mac: class.mac,
                        state: LeaseState::Released,
                        expires_at: now,
                    });
                    out.events.push(Event::Released { address: addr });
                    Step::Silent(Ignored::Unhandled(MessageType::Release))
                } else {
                    Step::Silent(Ignored::NoRecord)
                }
            }
            MessageType::Decline => {
                let Some(addr) = requested else {
                    return Step::Silent(Ignored::NoRecord);
                };
                let mine = self.leases.lease_of(key) == Some(addr)
                    || self.leases.offer_of(key) == Some(addr);
                if !mine {
                    return Step::Silent(Ignored::NoRecord);
                }
                let until = now + self.config.limits.decline_hold;
                self.leases.decline(addr, key.clone(), class.mac, until);
                out.persist.push(LeaseRecord {
                    address: addr,
                    client: key.clone(),
                    mac: class.mac,
                    state: LeaseState::Declined,
                    expires_at: until,
                });
                out.events.push(Event::Declined { address: addr });
                Step::Silent(Ignored::Unhandled(MessageType::Decline))
            }
            MessageType::Inform => {
                // RFC 2131 §3.4: configuration only; no yiaddr, no lease time.
                let ciaddr = req.msg.ciaddr();
                let mut msg = self.reply_base(req, class, MessageType::Ack);
                msg.set_ciaddr(ciaddr);
                self.lease_options(&mut msg, &subnet, class, Duration::ZERO);
                if let Some(b) = &boot {
                    apply_boot(&mut msg, b, class);
                }
                let (dest, ll) = reply_dest(req, &msg, false);
                Step::Reply(Box::new(msg), dest, ll)
            }
            other => Step::Silent(Ignored::Unhandled(other)),
        }
    }

    fn reserved_for_other(&self, addr: Ipv4Addr, class: &Classification) -> bool {
        self.config.reservations.iter().any(|r| {
            r.address == Some(addr)
                && !((r.mac.is_some() && r.mac == class.mac)
                    || (r.client_id.is_some() && r.client_id == class.client_id))
        })
    }

    fn nak(
        &mut self,
        req: &Request,
        class: &Classification,
        requested: Option<Ipv4Addr>,
        out: &mut Outcome,
    ) -> Step {
        out.events.push(Event::Nak { requested });
        let mut msg = Message::default();
        msg.set_opcode(Opcode::BootReply)
            .set_htype(req.msg.htype())
            .set_xid(req.msg.xid())
            .set_chaddr(req.chaddr())
            .set_giaddr(req.msg.giaddr());
        let mut opts = DhcpOptions::new();
        opts.insert(DhcpOption::MessageType(MessageType::Nak));
        opts.insert(DhcpOption::ServerIdentifier(self.server_id(class)));
        msg.set_opts(opts);
        let (dest, ll) = reply_dest(req, &msg, true);
        Step::Reply(Box::new(msg), dest, ll)
    }

    /// Reservation, current lease, outstanding offer, requested address, then the
    /// next free pool address after the subnet's cursor — in that order. The scan first
    /// skips addresses offered to other clients; only when every free address is on
    /// offer (the pool is under pressure) does it take one of those over, so DISCOVERs
    /// alone can never exhaust a pool.
    fn pick_address(
        &mut self,
        subnet_idx: usize,
        subnet: &Subnet,
        key: &ClientKey,
        reserved: Option<Ipv4Addr>,
        requested: Option<Ipv4Addr>,
    ) -> Option<Ipv4Addr> {
        if let Some(r) = reserved {
            return self.leases.is_bindable_by(r, key).then_some(r);
        }
        let leases = &self.leases;
        let config = &self.config;
        // `strict`: also skip addresses offered to someone else.
        let usable = |a: Ipv4Addr, strict: bool| {
            subnet.network.contains(a)
                && a != config.server_address
                && if strict {
                    leases.is_free_for(a, key)
                } else {
                    leases.is_bindable_by(a, key)
                }
                && !config.reservations.iter().any(|r| r.address == Some(a))
        };
        if let Some(a) = leases.lease_of(key).filter(|a| usable(*a, false)) {
            return Some(a);
        }
        if let Some(a) = leases.offer_of(key).filter(|a| usable(*a, false)) {
            return Some(a);
        }
        if let Some(a) = requested.filter(|a| in_pools(subnet, *a) && usable(*a, true)) {
            return Some(a);
        }
        let sizes: Vec<u64> = subnet
            .pools
            .iter()
            .map(|(s, e)| u64::from(u32::from(*e) - u32::from(*s)) + 1)
            .collect();
        let total: u64 = sizes.iter().sum();
        if total == 0 {
            return None;
        }
        let nth = |mut i: u64| -> Option<Ipv4Addr> {
            for ((s, _), size) in subnet.pools.iter().zip(&sizes) {
                if i < *size {
                    let off = u32::try_from(i).ok()?;
                    return Some(Ipv4Addr::from(u32::from(*s).checked_add(off)?));
                }
                i -= size;
            }
            None
        };
        let start = self.cursors.get(subnet_idx).copied().unwrap_or(0) % total;
        let scan = |strict: bool| {
            (0..total)
                .map(|step| (start + step) % total)
                .find_map(|i| nth(i).filter(|a| usable(*a, strict)).map(|a| (i, a)))
        };
        let (i, a) = scan(true).or_else(|| scan(false))?;
        if self.cursors.len() <= subnet_idx {
            self.cursors.resize(subnet_idx + 1, 0);
        }
        if let Some(c) = self.cursors.get_mut(subnet_idx) {
            *c = (i + 1) % total;
        }
        Some(a)
    }

    /// Our server identifier as the client sees it: the relay's RFC 5107 override
    /// when present (the relay then forwards renewals to us), else our address.
    fn server_id(&self, class: &Classification) -> Ipv4Addr {
        class
            .relay
            .server_id_override
            .filter(|_| class.relay.is_relayed())
            .unwrap_or(self.config.server_address)
    }

    fn reply_base(&self, req: &Request, class: &Classification, t: MessageType) -> Message {
        let mut msg = Message::default();
        msg.set_opcode(Opcode::BootReply)
            .set_htype(req.msg.htype())
            .set_xid(req.msg.xid())
            .set_flags(req.msg.flags())
            .set_chaddr(req.chaddr())
            .set_giaddr(req.msg.giaddr());
        let mut opts = DhcpOptions::new();
        opts.insert(DhcpOption::MessageType(t));
        opts.insert(DhcpOption::ServerIdentifier(self.server_id(class)));
        msg.set_opts(opts);
        msg
    }

    fn lease_options(
        &self,
        msg: &mut Message,
        subnet: &Subnet,
        class: &Classification,
        lease: Duration,
    ) {
        let opts = msg.opts_mut();
        opts.insert(DhcpOption::SubnetMask(subnet.network.mask()));
        opts.insert(DhcpOption::BroadcastAddr(subnet.network.broadcast()));
        if let Some(r) = subnet.router {
            opts.insert(DhcpOption::Router(vec![r]));
        }
        if !subnet.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
        }
        if let Some(d) = &subnet.domain {
            opts.insert(DhcpOption::DomainName(d.clone()));
        }
        if let Some(h) = self.reservation(class).and_then(|r| r.hostname.clone()) {
            opts.insert(DhcpOption::Hostname(h));
        }
        if !lease.is_zero() {
            let secs = u32::try_from(lease.as_secs()).unwrap_or(u32::MAX);
            opts.insert(DhcpOption::AddressLeaseTime(secs));
            opts.insert(DhcpOption::Renewal(secs / 2));
            opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
    }
}

/// Moves what the classification found into an observation (no copies of its vectors).
fn observation(
    class: Classification,
    req: &Request,
    ingress: Ingress,
    trusted: bool,
    address: Option<ObservedAddress>,
    known: bool,
) -> Observation {
    let Classification {
        firmware,
        arches,
        vendor_class,
        user_classes,
        mac,
        client_id,
        uuid,
        pi_serial,
        relay,
        ..
    } = class;
    let relay = (relay.is_relayed() || relay.circuit_id.is_some() || relay.remote_id.is_some())
        .then_some(ObservedRelay {
            giaddr: relay.giaddr,
            circuit_id: relay.circuit_id,
            remote_id: relay.remote_id,
            trusted,
        });
    Observation {
        mac,
        client_id,
        msg_type: req.msg_type,
        port: ingress.port,
        firmware,
        arches,
        vendor_class,
        user_classes,
        uuid,
        pi_serial,
        hostname: req.raw.get(12).map(<[u8]>::to_vec),
        relay,
        address,
        known,
    }
}

/// ProxyDHCP and boot-server replies must carry option 60 `PXEClient` for a PXE
/// client to take them as such — iPXE included (it ignores a proxy offer without
/// it and boots nothing), although it needs no option 60 from an authoritative
/// server.
fn proxy_flavour(mut boot: BootParams, class: &Classification) -> BootParams {
    if boot.vendor_class.is_none() && class.vendor_class_starts_with(b"PXEClient") {
        boot.vendor_class = Some(b"PXEClient");
    }
    boot
}

/// Whether `a` lies in one of the subnet's dynamic ranges.
fn in_pools(subnet: &Subnet, a: Ipv4Addr) -> bool {
    let a = u32::from(a);
    subnet
        .pools
        .iter()
        .any(|(s, e)| (u32::from(*s)..=u32::from(*e)).contains(&a))
}

fn client_key(req: &Request, class: &Classification) -> ClientKey {
    ClientKey::of_client(
        class.client_id.as_deref(),
        u8::from(req.msg.htype()),
        req.chaddr(),
    )
}

/// NUL-terminated copy: RFC 2132 does not require it, but PXE ROMs and U-Boot
/// copy option 66/67 into C strings, and dnsmasq sends the NUL too.
fn nul_terminated(s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    v.push(0);
    v
}

fn apply_boot(msg: &mut Message, boot: &BootParams, class: &Classification) {
    // Config validation keeps files ≤127 bytes; a longer URL (long UUID/MAC
    // substitution cannot exceed the checked budget) is still guarded here.
    let file = boot.file.as_bytes();
    if !file.is_empty() && file.len() <= 127 {
        msg.set_fname(file);
    }
    let opts = msg.opts_mut();
    if !file.is_empty() {
        opts.insert(DhcpOption::BootfileName(nul_terminated(file)));
    }
    if let Some(t) = boot.tftp_server {
        msg.set_siaddr(t);
        msg.opts_mut()
            .insert(DhcpOption::TFTPServerName(nul_terminated(
                t.to_string().as_bytes(),
            )));
    }
    let opts = msg.opts_mut();
    if let Some(vc) = boot.vendor_class {
        opts.insert(DhcpOption::ClassIdentifier(vc.to_vec()));
    }
    if let Some(v) = &boot.vendor_options {
        opts.insert(DhcpOption::VendorExtensions(v.clone()));
    }
    if let Some(v) = &boot.ipxe_options {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175u8),
            v.clone(),
        )));
    }
    if boot.mirror_machine_id
        && let Some(id) = &class.machine_id
    {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
}

/// RFC 2131 §4.1 destination rules.
fn reply_dest(req: &Request, reply: &Message, is_nak: bool) -> (SocketAddrV4, Option<Mac>) {
    let giaddr = req.msg.giaddr();
    if !giaddr.is_unspecified() {
        return (SocketAddrV4::new(giaddr, DHCP_SERVER_PORT), None);
    }
    let bcast = (
        SocketAddrV4::new(Ipv4Addr::BROADCAST, DHCP_CLIENT_PORT),
        None,
    );
    if is_nak {
        return bcast;
    }
    let ciaddr = req.msg.ciaddr();
    if !ciaddr.is_unspecified() {
        return (SocketAddrV4::new(ciaddr, DHCP_CLIENT_PORT), None);
    }
    if req.msg.flags().broadcast() {
        return bcast;
    }
    let yiaddr = reply.yiaddr();
    let mac = match req.chaddr() {
        [a, b, c, d, e, f] => Some(Mac([*a, *b, *c, *d, *e, *f])),
        _ => None,
    };
    match (yiaddr.is_unspecified(), mac) {
        (false, Some(m)) => (SocketAddrV4::new(yiaddr, DHCP_CLIENT_PORT), Some(m)),
        _ => bcast,
    }
}
