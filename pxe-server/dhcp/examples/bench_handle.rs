//! Throughput of the decision core on real captures (a benchmark, not a test).
//!
//! `cargo run --release -p tugboot-dhcp --example bench_handle`
//!
//! Prints, per DISCOVER fixture, the time of one `Server::handle` (parse, classify,
//! decide, encode) with a distinct MAC and client id per iteration, so neither the
//! rate limiter nor the lease table short-circuits the work.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tugboot_dhcp::{Config, FUZZ_CONFIG, Ingress, Server, ServerPort};

fn main() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/dhcp");
    let mut config = Config::from_toml(FUZZ_CONFIG).expect("config");
    // Room for every iteration: a /16 pool.
    config.subnets[0].network = "10.77.0.0/16".parse().expect("cidr");
    config.subnets[0].pools = vec![(Ipv4Addr::new(10, 77, 1, 0), Ipv4Addr::new(10, 77, 255, 254))];
    config.limits.max_pending_offers = 1 << 20;
    config.limits.max_tracked_clients = 1 << 20;
    let ingress = Ingress {
        interface: Ipv4Addr::new(10, 77, 0, 1),
        port: ServerPort::Dhcp,
        src: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    };
    println!(
        "{:<32} {:>10} {:>12} {:>12}",
        "fixture", "iters", "ns/handle", "handles/s"
    );
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|e| e == "bin") && p.to_string_lossy().contains("discover")
        })
        .collect();
    names.sort();
    for path in names {
        let base = std::fs::read(&path).expect("read");
        let iters: u32 = 20_000;
        let mut server = Server::new(config.clone());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut pkt = base.clone();
        let cid = option_offset(&pkt, 61);
        let start = Instant::now();
        let mut replies = 0usize;
        for i in 0..iters {
            pkt[28..32].copy_from_slice(&i.to_be_bytes());
            if let Some((off, len)) = cid
                && len >= 4
            {
                pkt[off + len - 4..off + len].copy_from_slice(&i.to_be_bytes());
            }
            let out = server.handle(now, black_box(&pkt), ingress);
            replies += out.replies.len();
        }
        let el = start.elapsed();
        let ns = el.as_nanos() / u128::from(iters);
        let per_s = f64::from(iters) / el.as_secs_f64();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("{name:<32} {iters:>10} {ns:>12} {per_s:>12.0}   ({replies} replies)");
    }
}

/// Offset and length of option `code`'s payload (first instance).
fn option_offset(p: &[u8], code: u8) -> Option<(usize, usize)> {
    let mut i = 240;
    while i + 1 < p.len() {
        match p[i] {
            0 => i += 1,
            255 => return None,
            c => {
                let l = usize::from(p[i + 1]);
                if c == code {
                    return Some((i + 2, l));
                }
                i += 2 + l;
            }
        }
    }
    None
}
