//! Artifact download throughput over loopback: tugboot-http vs nginx serving the same file in the
//! same run, measured with `wrk`. tugboot runs three times: as shipped (`file_send = auto`, which
//! copies for a client on this host, as wrk on loopback is), with `file_send = copy` and with
//! `file_send = sendfile` (what a client across a network card gets). nginx runs twice: with `sendfile on` (the usual setting) and
//! with `sendfile off; output_buffers 2 1m` (faster on some VMs); the ratio is against the better
//! of the two in each round. Prints a table; asserts nothing.
//!
//! ```sh
//! cargo bench -p tugboot-http --bench download
//! ```
//!
//! Environment: `TUGBOOT_BENCH_HTTP_MIB` (file size, default 256), `TUGBOOT_BENCH_SECS` (per
//! wrk run, default 10), `TUGBOOT_BENCH_ROUNDS` (default 3), `TUGBOOT_BENCH_CHUNK_KIB` (tugboot's
//! read size, default 256), `TUGBOOT_BENCH_WRK` (wrk arguments, default `-t2 -c8`),
//! `TUGBOOT_BENCH_VETH=1` (root: wrk in a network namespace of its own behind a veth pair, as a
//! container would be, instead of on loopback; the namespace is removed at the end).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tugboot_firmware::{
    Artifact, BlobStore, Manifest, Role, SecretKey, Signed, Timestamp, TrustRoot, TrustedRoot,
};
use tugboot_fleet::{Fleet, Live};
use tugboot_http::{BootServer, FileSend, HttpConfig};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Pseudo-random content (xorshift), written once and reused between runs.
fn make_file(path: &Path, mib: u64) {
    let want = mib << 20;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == want) {
        return;
    }
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create bench file"));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).expect("write bench file");
    }
    f.flush().expect("flush bench file");
}

/// Parses wrk's `Transfer/sec: 1.23GB` into MiB/s and `Requests/sec:` into a number.
fn parse_wrk(out: &str) -> Option<(f64, f64)> {
    let mut transfer = None;
    let mut rps = None;
    for line in out.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Transfer/sec:") {
            let v = v.trim();
            let split = v.find(|c: char| c.is_ascii_alphabetic())?;
            let (num, unit) = v.split_at(split);
            let num: f64 = num.parse().ok()?;
            let mib = match unit {
                "B" => num / 1_048_576.0,
                "KB" => num / 1024.0,
                "MB" => num,
                "GB" => num * 1024.0,
                "TB" => num * 1024.0 * 1024.0,
                _ => return None,
            };
            transfer = Some(mib);
        }
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        }
    }
    Some((transfer?, rps?))
}

/// Where the servers listen and where wrk runs: loopback, or a namespace behind a veth pair.
struct Net {
    /// The servers' address.
    host: &'static str,
    /// wrk's namespace (removed on drop, which removes the veth pair with it).
    netns: Option<String>,
}

impl Net {
    fn loopback() -> Net {
        Net {
            host: "127.0.0.1",
            netns: None,
        }
    }

    fn veth() -> Net {
        let id = std::process::id();
        let ns = format!("tbhttp-{id}");
        let (near, far) = (format!("tbh{id}"), format!("tbhp{id}"));
        let net = Net {
            host: "10.231.0.1",
            netns: Some(ns.clone()),
        };
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "ip {args:?} failed (root needed for TUGBOOT_BENCH_VETH)"
            );
        };
        ip(&["netns", "add", &ns]);
        ip(&["link", "add", &near, "type", "veth", "peer", "name", &far]);
        ip(&["link", "set", &far, "netns", &ns]);
        ip(&["addr", "add", "10.231.0.1/24", "dev", &near]);
        ip(&["link", "set", &near, "up"]);
        ip(&["-n", &ns, "addr", "add", "10.231.0.2/24", "dev", &far]);
        ip(&["-n", &ns, "link", "set", &far, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        net
    }

    /// `program` to run where wrk runs.
    fn command(&self, program: &str) -> Command {
        match &self.netns {
            None => Command::new(program),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn wrk(net: &Net, url: &str, secs: u64, args: &str) -> (f64, f64) {
    let mut cmd = net.command("wrk");
    cmd.args(args.split_whitespace())
        .arg(format!("-d{secs}s"))
        .arg("--timeout")
        .arg("60s")
        .arg(url);
    let out = cmd.output().expect("wrk is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match parse_wrk(&text) {
        Some((mib, rps)) => (mib, rps),
        None => panic!(
            "cannot parse wrk output:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

struct Nginx(Child);

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master then stops its workers (a killed master orphans them).
    fn drop(&mut self) {
        let terminated = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        if !terminated {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

fn start_nginx(dir: &Path, root: &Path, host: &str, port: u16, io: &str) -> Nginx {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    let d = dir.display();
    let conf = format!(
        "{user}daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  {io}\n  keepalive_requests 100000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  default_type application/octet-stream;\n\
         server {{\n    listen {host}:{port};\n    root {root};\n    location / {{ }}\n  }}\n}}\n",
        user = if is_root { "user root;\n" } else { "" },
        root = root.display(),
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("write nginx.conf");
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx is installed");
    Nginx(child)
}

/// User + system CPU seconds used so far by `pid` and its child processes (nginx's master and
/// workers; for this process, all its threads), from `/proc/<pid>/stat`.
fn cpu_secs(pid: u32, tick: f64) -> f64 {
    let mut total = 0.0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    for entry in dir.flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`: state ppid ... utime(14) stime(15), counted from 1.
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ppid = f.get(1).and_then(|v| v.parse::<u32>().ok());
        if p == pid || ppid == Some(pid) {
            let ticks: u64 = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            total += ticks as f64 / tick;
        }
    }
    total
}

fn wait_ready(net: &Net, url: &str) {
    for _ in 0..100 {
        let ok = net
            .command("curl")
            .args(["-s", "-f", "-o", "/dev/null", "-r", "0-0", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{url} never answered");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() {
    // `cargo bench` passes `--bench`; under `cargo test --benches` do not run a minute of load.
    if !std::env::args().any(|a| a == "--bench") {
        println!("download benchmark: run it with `cargo bench -p tugboot-http --bench download`");
        return;
    }
    let mib = env_u64("TUGBOOT_BENCH_HTTP_MIB", 256);
    let secs = env_u64("TUGBOOT_BENCH_SECS", 10);
    let rounds = env_u64("TUGBOOT_BENCH_ROUNDS", 3);
    let chunk_kib = env_u64("TUGBOOT_BENCH_CHUNK_KIB", 256);
    let wrk_args = std::env::var("TUGBOOT_BENCH_WRK").unwrap_or_else(|_| "-t2 -c8".into());

    let tmp = tempfile::tempdir().expect("tempdir");
    let file = std::env::temp_dir().join(format!("tugboot-bench-http-{mib}m.bin"));
    make_file(&file, mib);

    // Store the file as a blob, sign and publish a manifest for it.
    let store = BlobStore::open(tmp.path().join("blobs")).expect("blob store");
    let (digest, size) = store
        .put(std::fs::File::open(&file).expect("open bench file"), None)
        .expect("put");
    let key = SecretKey::from_seed(&[1; 32]);
    let now = Timestamp::from_unix(1_800_000_000);
    let mut root = Signed::new(TrustRoot {
        version: 1,
        expires: Timestamp::from_unix(1_900_000_000),
        threshold: 1,
        keys: vec![key.public()],
        revoked: vec![],
    })
    .expect("root");
    root.sign(&key);
    let root = TrustedRoot::bootstrap(&root.to_bytes(), now).expect("trusted root");
    let mut manifest = Signed::new(Manifest {
        name: "bench".into(),
        version: 1,
        boards: vec!["x86_64-uefi".into()],
        artifacts: vec![Artifact {
            role: Role::Slot,
            name: "slot.img".into(),
            sha256: digest,
            size,
        }],
        created: Timestamp::from_unix(1_700_000_000),
        expires: Timestamp::from_unix(1_850_000_000),
        min_version: None,
        labels: BTreeMap::new(),
    })
    .expect("manifest");
    manifest.sign(&key);
    let config = HttpConfig {
        chunk_size: usize::try_from(chunk_kib << 10).unwrap_or(usize::MAX),
        // wrk is one address playing many clients (`-c200`): lift the per-address cap (32).
        max_connections_per_peer: 4096,
        ..HttpConfig::default()
    };
    let (verified, cmdline) =
        tugboot_store::prepare_image(&manifest.to_bytes(), &store, &root, now).expect("publish");
    let mut fleet = Fleet::default();
    fleet
        .catalogue
        .insert(verified, cmdline)
        .expect("catalogue");
    let net = if std::env::var_os("TUGBOOT_BENCH_VETH").is_some_and(|v| v == "1") {
        Net::veth()
    } else {
        Net::loopback()
    };
    let host = net.host;

    // tugboot three times: as shipped (`file_send = auto`: copied from a map for a client on this
    // host, as wrk on loopback is; `sendfile` for one behind the veth), always copying, and
    // always `sendfile` (what a client across a network card gets).
    let live = std::sync::Arc::new(Live::new(fleet));
    let variants = [
        ("tugboot", FileSend::Auto),
        ("tugboot copy", FileSend::Copy),
        ("tugboot sendfile", FileSend::Sendfile),
    ];
    let servers: Vec<_> = variants
        .iter()
        .map(|&(_, file_send)| {
            let srv = BootServer::new(
                store.clone(),
                std::sync::Arc::clone(&live),
                HttpConfig {
                    file_send,
                    ..config.clone()
                },
            );
            (srv, free_port())
        })
        .collect();

    // All on one runtime thread (2 workers: the machine's core count here).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let to_serve: Vec<_> = servers
        .iter()
        .map(|(srv, port)| (std::sync::Arc::clone(srv), *port))
        .collect();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (srv, port) in to_serve {
                let listener = tokio::net::TcpListener::bind((host, port))
                    .await
                    .expect("bind tugboot");
                let mut stop = stop_rx.clone();
                tasks.push(tokio::spawn(tugboot_http::serve(
                    listener,
                    srv,
                    async move {
                        let _ = stop.wait_for(|s| *s).await;
                    },
                )));
            }
            for t in tasks {
                t.await.expect("serve task").expect("serve");
            }
        });
    });

    let mut nginx = Vec::new();
    let mut names: Vec<&str> = variants.iter().map(|v| v.0).collect();
    let mut urls: Vec<String> = servers
        .iter()
        .map(|(_, port)| format!("http://{host}:{port}/artifacts/sha256/{}", digest.to_hex()))
        .collect();
    for (i, (name, io)) in [
        ("nginx sendfile", "sendfile on; tcp_nopush on;"),
        ("nginx buffers", "sendfile off; output_buffers 2 1m;"),
    ]
    .into_iter()
    .enumerate()
    {
        let port = free_port();
        let dir = tmp.path().join(format!("nginx{i}"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        nginx.push(start_nginx(&dir, store.root(), host, port, io));
        names.push(name);
        urls.push(format!("http://{host}:{port}/sha256/{}", digest.to_hex()));
    }
    for u in &urls {
        wait_ready(&net, u);
    }
    let tick: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let me = std::process::id();
    let pids = [me, me, me, nginx[0].0.id(), nginx[1].0.id()];

    println!(
        "file: {} ({mib} MiB), wrk {wrk_args} -d{secs}s{}, tugboot chunk {chunk_kib} KiB",
        file.display(),
        if net.netns.is_some() {
            " from a namespace behind a veth pair"
        } else {
            " on loopback"
        },
    );
    print!("{:<6}", "round");
    for n in &names {
        print!(" {:>22}", format!("{n} MiB/s"));
    }
    println!(" {:>8}", "ratio");
    let n = urls.len();
    let mut cpu_per_gib: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); 3];
    for round in 1..=rounds {
        // Rotate the order so no server always runs first (on a cooler or warmer machine).
        let mut mibs = vec![0.0f64; n];
        for k in 0..n {
            let i = (k + usize::try_from(round).unwrap_or(0)) % n;
            let before = cpu_secs(pids[i], tick);
            mibs[i] = wrk(&net, &urls[i], secs, &wrk_args).0;
            let used = cpu_secs(pids[i], tick) - before;
            let gib = mibs[i] * secs as f64 / 1024.0;
            if gib > 0.0 {
                cpu_per_gib[i].push(used / gib);
            }
        }
        let best_nginx = mibs[3].max(mibs[4]);
        let of_best = |v: f64| {
            if best_nginx > 0.0 {
                v / best_nginx
            } else {
                0.0
            }
        };
        for (t, r) in ratios.iter_mut().enumerate() {
            r.push(of_best(mibs[t]));
        }
        print!("{round:<6}");
        for m in &mibs {
            print!(" {m:>22.0}");
        }
        println!(" {:>7.3}x", of_best(mibs[0]));
    }
    for (t, r) in ratios.into_iter().enumerate() {
        println!(
            "median ratio ({} / best nginx of the round): {:.3}x",
            names[t],
            median(r)
        );
    }
    print!("server CPU seconds per GiB served (median):");
    for (name, v) in names.iter().zip(cpu_per_gib) {
        print!(" {name} {:.3};", median(v));
    }
    println!();
    for ((name, _), (srv, _)) in variants.iter().zip(&servers) {
        let c = srv.counters();
        println!(
            "{name}: {} requests, {} MiB of file data handed to HTTP, {} MiB of it copied",
            c.requests,
            c.body_bytes >> 20,
            c.copied_body_bytes >> 20
        );
    }
    let _ = stop_tx.send(true);
    // Keep-alive wrk connections are gone once wrk exits; shutdown completes promptly.
    let _ = server_thread.join();
}
