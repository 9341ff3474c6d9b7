//! Shared by the root-only network tests (`netns_*.rs`): a guard that owns the
//! namespaces and processes a test creates and always deletes them, tool checks that
//! panic with a clear message, polling helpers, `tugboot-dhcpd` start-up, and a small
//! pcap reader so tests can assert on the DHCP packets that really crossed a link.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Owns what a test created: killed and deleted on drop, also when the test panics.
pub struct Lab {
    pub names: Vec<String>,
    pub children: Vec<Child>,
    pub dir: PathBuf,
}

impl Lab {
    /// Creates `namespaces` (each with `lo` up) and a fresh work directory.
    pub fn new(tag: &str, namespaces: &[&str]) -> Self {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("tbdhcp-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut lab = Self {
            names: Vec::new(),
            children: Vec::new(),
            dir,
        };
        for n in namespaces {
            let name = format!("tb{tag}{n}-{id}");
            sh(&["ip", "netns", "add", &name]);
            lab.names.push(name.clone());
            sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        }
        lab
    }

    /// Full name of namespace number `i` (in the order given to [`Lab::new`]).
    pub fn ns(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// `ip -n NS args...`
    pub fn ip(&self, i: usize, args: &[&str]) {
        let mut v = vec!["ip", "-n", self.ns(i)];
        v.extend_from_slice(args);
        sh(&v);
    }

    /// A command that runs inside namespace `i`.
    pub fn exec(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.ns(i)]).arg(program);
        c
    }

    /// Starts `cmd`, keeps it for clean-up and returns its pid.
    pub fn spawn(&mut self, mut cmd: Command, what: &str) -> u32 {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}"));
        let pid = child.id();
        self.children.push(child);
        pid
    }

    /// Starts `tugboot-dhcpd` in namespace `i` and waits for "serving".
    pub fn start_tugboot(&mut self, i: usize, config: &Path, leases: &Path, args: &[&str]) -> u32 {
        let mut cmd = self.exec(i, env!("CARGO_BIN_EXE_tugboot-dhcpd"));
        cmd.arg("--config")
            .arg(config)
            .arg("--leases")
            .arg(leases)
            .args(args)
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tugboot-dhcpd");
        let stderr = child.stderr.take().expect("stderr");
        let pid = child.id();
        self.children.push(child);
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("tugboot-dhcpd exited before serving")
                .expect("read stderr");
            if line.contains("serving") {
                break;
            }
            assert!(!line.starts_with("Error"), "tugboot-dhcpd: {line}");
        }
        // Keep the rest of its output for diagnosis (TB_KEEP_TEST_DIR=1 keeps the file).
        let mut keep = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("tugboot-dhcpd-{pid}.log")))
            .expect("server log");
        std::thread::spawn(move || {
            use std::io::Write as _;
            for l in lines.map_while(Result::ok) {
                let _ = writeln!(keep, "{l}");
            }
        });
        pid
    }

    /// Starts tcpdump on `iface` in namespace `i`, writing DHCP/proxyDHCP packets
    /// to `file`, and waits until it is capturing.
    pub fn capture(&mut self, i: usize, iface: &str, file: &Path) -> u32 {
        let mut cmd = self.exec(i, "tcpdump");
        cmd.args([
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            "8192",
            "-w",
        ])
        .arg(file)
        .args(["udp", "port", "67", "or", "udp", "port", "68", "or"])
        .args(["udp", "port", "4011"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start tcpdump");
        let stderr = child.stderr.take().expect("stderr");
        let pid = child.id();
        self.children.push(child);
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("tcpdump exited before capturing")
                .expect("read stderr");
            if line.contains("listening on") {
                break;
            }
        }
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("tcpdump: {l}");
            }
        });
        pid
    }

    /// Sends `sig` to the child `pid` and waits (generous deadline) for it to exit.
    pub fn stop(&mut self, pid: u32, sig: &str) {
        signal(pid, sig);
        self.wait_exit(pid);
    }

    /// Waits (generous deadline, not a timing assertion) for the child `pid` to exit.
    pub fn wait_exit(&mut self, pid: u32) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let child = self
            .children
            .iter_mut()
            .find(|c| c.id() == pid)
            .expect("a child of this lab");
        while child.try_wait().expect("try_wait").is_none() {
            assert!(Instant::now() < deadline, "pid {pid} did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
        if std::env::var_os("TB_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .status()
        .unwrap_or_else(|e| panic!("spawn {args:?}: {e}"));
    assert!(st.success(), "command failed: {args:?}");
}

/// Sends `signal` (e.g. `-INT`, `-KILL`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    sh(&["kill", signal, &pid.to_string()]);
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Panics (the test fails, it is not skipped) unless root with every tool present.
pub fn require(tools: &[&str]) {
    assert!(
        is_root(),
        "needs root for network namespaces (tests/run runs the ignored tests as root)"
    );
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    assert!(
        missing.is_empty(),
        "missing tools {missing:?} (tests/setup installs them)"
    );
}

/// Polls `path` until `done(text)` holds; panics with the text after 60 s (a
/// deadline for a stuck run, not a timing assertion).
pub fn wait_until(path: &Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One DHCP datagram read back from a capture.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Capture time, microseconds since the epoch.
    pub at_us: u64,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    /// 1 = BOOTREQUEST, 2 = BOOTREPLY.
    pub op: u8,
    /// Option 53.
    pub msg_type: Option<u8>,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub mac: [u8; 6],
    /// Option 82, if present.
    pub relay_info: Option<Vec<u8>>,
}

fn ip4(b: &[u8], at: usize) -> Option<Ipv4Addr> {
    let o: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(o))
}

fn u16be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn option(dhcp: &[u8], code: u8) -> Option<Vec<u8>> {
    if dhcp.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut i = 240;
    while let Some(&c) = dhcp.get(i) {
        match c {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*dhcp.get(i + 1)?);
                let v = dhcp.get(i + 2..i + 2 + len)?;
                if c == code {
                    return Some(v.to_vec());
                }
                i += 2 + len;
            }
        }
    }
    None
}

fn parse_frame(at_us: u64, f: &[u8]) -> Option<Seen> {
    if u16be(f, 12)? != 0x0800 {
        return None;
    }
    let ip = f.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(ihl..)?;
    let dhcp = udp.get(8..)?;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(dhcp.get(28..34)?);
    Some(Seen {
        at_us,
        src: ip4(ip, 12)?,
        dst: ip4(ip, 16)?,
        sport: u16be(udp, 0)?,
        dport: u16be(udp, 2)?,
        op: *dhcp.first()?,
        msg_type: option(dhcp, 53).and_then(|v| v.first().copied()),
        ciaddr: ip4(dhcp, 12)?,
        yiaddr: ip4(dhcp, 16)?,
        siaddr: ip4(dhcp, 20)?,
        giaddr: ip4(dhcp, 24)?,
        mac,
        relay_info: option(dhcp, 82),
    })
}

/// Every IPv4/UDP DHCP datagram of a pcap file (Ethernet link type, little-endian,
/// micro- or nanosecond timestamps). A torn last record (capture killed) is ignored.
pub fn read_pcap(path: &Path) -> Vec<Seen> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let magic = u32le(&b, 0).expect("pcap header");
    let nanos = match magic {
        0xa1b2_c3d4 => false,
        0xa1b2_3c4d => true,
        other => panic!("not a little-endian pcap file (magic {other:#x})"),
    };
    assert_eq!(u32le(&b, 20), Some(1), "link type must be Ethernet");
    let mut out = Vec::new();
    let mut i = 24;
    while let (Some(sec), Some(frac), Some(len)) =
        (u32le(&b, i), u32le(&b, i + 4), u32le(&b, i + 8))
    {
        let len = usize::try_from(len).expect("length fits");
        let Some(frame) = b.get(i + 16..i + 16 + len) else {
            break;
        };
        let us = u64::from(frac) / if nanos { 1000 } else { 1 };
        if let Some(s) = parse_frame(u64::from(sec) * 1_000_000 + us, frame) {
            out.push(s);
        }
        i += 16 + len;
    }
    out
}
