//! Artifact download throughput over loopback: tugboot-http vs nginx serving the same file in the
//! same run, measured with `wrk`. tugboot runs twice: as shipped (`file_send = auto`, which copies
//! for a client on this host, as wrk on loopback is) and forced to `sendfile` (what a client
//! across a network card gets). nginx runs twice: with `sendfile on` (the usual setting) and
//! with `sendfile off; output_buffers 2 1m` (faster on some VMs); the ratio is against the better
//! of the two in each round. Prints a table; asserts nothing.
//!
//! ```sh
//! cargo bench -p tugboot-http --bench download
//! ```
//!
//! Environment: `TUGBOOT_BENCH_HTTP_MIB` (file size, default 256), `TUGBOOT_BENCH_SECS` (per
//! wrk run, default 10), `TUGBOOT_BENCH_ROUNDS` (default 3), `TUGBOOT_BENCH_CHUNK_KIB` (tugboot's
//! read size, default 256), `TUGBOOT_BENCH_WRK` (wrk arguments, default `-t2 -c8`).

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

fn wrk(url: &str, secs: u64, args: &str) -> (f64, f64) {
    let mut cmd = Command::new("wrk");
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

fn start_nginx(dir: &Path, root: &Path, port: u16, io: &str) -> Nginx {
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
         server {{\n    listen 127.0.0.1:{port};\n    root {root};\n    location / {{ }}\n  }}\n}}\n",
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

fn wait_ready(url: &str) {
    for _ in 0..100 {
        let ok = Command::new("curl")
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
    // tugboot twice: as shipped (`file_send = auto`: on loopback the client is on this host, so
    // artifacts are copied from a map) and forced to `sendfile` (what a remote client gets).
    let live = std::sync::Arc::new(Live::new(fleet));
    let server = BootServer::new(store.clone(), std::sync::Arc::clone(&live), config.clone());
    let server_sf = BootServer::new(
        store.clone(),
        live,
        HttpConfig {
            file_send: FileSend::Sendfile,
            ..config
        },
    );

    // Both on one runtime thread (2 workers: the machine's core count here).
    let tport = free_port();
    let sfport = free_port();
    let servers = [
        (std::sync::Arc::clone(&server), tport),
        (std::sync::Arc::clone(&server_sf), sfport),
    ];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for (srv, port) in servers {
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
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
    let mut nurls = Vec::new();
    for (i, io) in [
        "sendfile on; tcp_nopush on;",
        "sendfile off; output_buffers 2 1m;",
    ]
    .into_iter()
    .enumerate()
    {
        let port = free_port();
        let dir = tmp.path().join(format!("nginx{i}"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        nginx.push(start_nginx(&dir, store.root(), port, io));
        nurls.push(format!(
            "http://127.0.0.1:{port}/sha256/{}",
            digest.to_hex()
        ));
    }

    let turl = format!(
        "http://127.0.0.1:{tport}/artifacts/sha256/{}",
        digest.to_hex()
    );
    let sfurl = format!(
        "http://127.0.0.1:{sfport}/artifacts/sha256/{}",
        digest.to_hex()
    );
    let urls = [
        turl.as_str(),
        sfurl.as_str(),
        nurls[0].as_str(),
        nurls[1].as_str(),
    ];
    for u in urls {
        wait_ready(u);
    }

    println!(
        "file: {} ({mib} MiB), wrk {wrk_args} -d{secs}s, tugboot chunk {chunk_kib} KiB",
        file.display()
    );
    println!(
        "{:<6} {:>14} {:>23} {:>20} {:>20} {:>8}",
        "round",
        "tugboot MiB/s",
        "tugboot sendfile MiB/s",
        "nginx sendfile MiB/s",
        "nginx buffers MiB/s",
        "ratio"
    );
    let tick: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0);
    let pids = [
        std::process::id(),
        std::process::id(),
        nginx[0].0.id(),
        nginx[1].0.id(),
    ];
    let mut cpu_per_gib: [Vec<f64>; 4] = Default::default();
    let mut ratios = Vec::new();
    let mut sf_ratios = Vec::new();
    for round in 1..=rounds {
        // Rotate the order so no server always runs first (on a cooler or warmer machine).
        let mut mibs = [0.0f64; 4];
        for k in 0..urls.len() {
            let i = (k + usize::try_from(round).unwrap_or(0)) % urls.len();
            let before = cpu_secs(pids[i], tick);
            mibs[i] = wrk(urls[i], secs, &wrk_args).0;
            let used = cpu_secs(pids[i], tick) - before;
            let gib = mibs[i] * secs as f64 / 1024.0;
            if gib > 0.0 {
                cpu_per_gib[i].push(used / gib);
            }
        }
        let best_nginx = mibs[2].max(mibs[3]);
        let of_best = |v: f64| {
            if best_nginx > 0.0 {
                v / best_nginx
            } else {
                0.0
            }
        };
        ratios.push(of_best(mibs[0]));
        sf_ratios.push(of_best(mibs[1]));
        println!(
            "{round:<6} {:>14.0} {:>23.0} {:>20.0} {:>20.0} {:>7.3}x",
            mibs[0],
            mibs[1],
            mibs[2],
            mibs[3],
            of_best(mibs[0])
        );
    }
    println!(
        "median ratio (tugboot as shipped / best nginx of the round): {:.3}x",
        median(ratios)
    );
    println!(
        "median ratio (tugboot forced to sendfile / best nginx of the round): {:.3}x",
        median(sf_ratios)
    );
    let [a, b, c, d] = cpu_per_gib.map(median);
    println!(
        "server CPU seconds per GiB served (median): tugboot {a:.3}, tugboot sendfile {b:.3}, \
         nginx sendfile {c:.3}, nginx buffers {d:.3}"
    );
    for (name, srv) in [("as shipped", &server), ("sendfile", &server_sf)] {
        let c = srv.counters();
        println!(
            "tugboot {name}: {} requests, {} MiB of file data handed to HTTP, {} MiB of it copied",
            c.requests,
            c.body_bytes >> 20,
            c.copied_body_bytes >> 20
        );
    }
    let _ = stop_tx.send(true);
    // Keep-alive wrk connections are gone once wrk exits; shutdown completes promptly.
    let _ = server_thread.join();
}
