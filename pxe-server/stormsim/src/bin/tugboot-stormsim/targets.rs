//! The servers under test and their files: `tugboot serve` (one, or two sharing PostgreSQL),
//! and dnsmasq (DHCP + TFTP) with nginx (HTTP) configured as their documentation says for the
//! same job. Both get the same boot files and the same kernel and initrd bytes.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use tugboot_stormsim::Rng;
use tugboot_stormsim::fleet::{self, POOL};

use crate::lab::{self, Lab, server_address};

/// Writes `len` pseudo-random bytes (deterministic in `seed`).
pub fn random_file(path: &Path, len: u64, seed: u64) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f = std::io::BufWriter::new(
        fs::File::create(path).with_context(|| format!("create {}", path.display()))?,
    );
    let mut rng = Rng::new(seed);
    let mut left = len;
    let mut block = vec![0u8; 1 << 16];
    while left > 0 {
        for c in block.chunks_exact_mut(8) {
            c.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let n = usize::try_from(left.min(block.len() as u64)).unwrap_or(block.len());
        f.write_all(&block[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut f = fs::File::open(path)?;
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Copies (hard-links when possible) `from` to `to`.
fn place(from: &Path, to: &Path) -> Result<()> {
    if let Some(d) = to.parent() {
        fs::create_dir_all(d)?;
    }
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).with_context(|| format!("{} -> {}", from.display(), to.display()))?;
    }
    Ok(())
}

/// The image and boot files every target serves.
pub struct Files {
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_sha: String,
    pub initrd_sha: String,
    pub kernel_len: u64,
    pub initrd_len: u64,
    /// undionly.kpxe, snponly.efi, grubnetaa64.efi (real files when installed).
    pub boot: Vec<(String, PathBuf)>,
    /// Raspberry Pi firmware stand-ins (name below the tree, path).
    pub pi: Vec<(String, PathBuf)>,
    pub tugboot: PathBuf,
    pub notes: Vec<String>,
}

impl Files {
    /// Kernel and initrd of the given sizes, a signed image of them, and the boot files.
    pub fn prepare(dir: &Path, tugboot: &Path, kernel_kib: u64, initrd_kib: u64) -> Result<Files> {
        let kernel = dir.join("kernel.bin");
        let initrd = dir.join("initrd.bin");
        random_file(&kernel, kernel_kib * 1024, 1)?;
        random_file(&initrd, initrd_kib * 1024, 2)?;
        let mut notes = Vec::new();
        let mut boot = Vec::new();
        for (name, real, stand_in) in [
            ("undionly.kpxe", "/usr/lib/ipxe/undionly.kpxe", 70_000u64),
            ("snponly.efi", "/usr/lib/ipxe/snponly.efi", 180_000),
            (
                "grubnetaa64.efi",
                "/var/cache/tugboot-arm64/grubnetaa64-stock.efi",
                3_900_000,
            ),
        ] {
            let p = Path::new(real);
            if p.exists() {
                boot.push((name.to_owned(), p.to_path_buf()));
            } else {
                let s = dir.join("standin").join(name);
                random_file(&s, stand_in, 3)?;
                notes.push(format!("{real} missing: a random {stand_in}-byte stand-in"));
                boot.push((name.to_owned(), s));
            }
        }
        // Raspberry Pi firmware is not free software: stand-ins of the real files' sizes (the
        // simulator moves bytes, the Pi is simulated).
        let mut pi = Vec::new();
        for (name, len) in [
            ("start4.elf", 2_257_536u64),
            ("fixup4.dat", 5_400),
            ("bcm2711-rpi-4-b.dtb", 52_593),
            ("overlays/overlay_map.dtb", 2_870),
        ] {
            let p = dir.join("pi").join(name);
            random_file(&p, len, 4)?;
            pi.push((name.to_owned(), p));
        }
        let t = |args: &[&str]| lab::run(Command::new(tugboot).args(args).arg("--quiet"));
        let s = |p: &str| dir.join(p).display().to_string();
        t(&["keys", "generate", "--out", &s("signer")])?;
        t(&[
            "keys",
            "root",
            "init",
            "--key",
            &s("signer.pub"),
            "--sign",
            &s("signer.key"),
            "--out",
            &s("root.json"),
        ])?;
        fs::write(
            dir.join("profiles.toml"),
            "default_profile = \"storm\"\n\n[profiles.storm]\nimage = \"storm\"\ncmdline = \"tugboot.storm=1\"\n",
        )?;
        Ok(Files {
            dir: dir.to_path_buf(),
            kernel_sha: sha256_file(&kernel)?,
            initrd_sha: sha256_file(&initrd)?,
            kernel_len: kernel_kib * 1024,
            initrd_len: initrd_kib * 1024,
            kernel,
            initrd,
            boot,
            pi,
            tugboot: tugboot.to_path_buf(),
            notes,
        })
    }

    fn boot_file(&self, name: &str) -> &Path {
        self.boot
            .iter()
            .find(|(n, _)| n == name)
            .map_or(Path::new("/nonexistent"), |(_, p)| p.as_path())
    }

    /// Builds the signed image into `blobs` with its manifest in `manifests`.
    fn build_image(&self, blobs: &Path, manifests: &Path) -> Result<()> {
        let s = |p: &Path| p.display().to_string();
        let mut args = vec![
            "image".to_owned(),
            "build".into(),
            "--kernel".into(),
            s(&self.kernel),
            "--initrd".into(),
            s(&self.initrd),
            "--cmdline".into(),
            "console=ttyS0".into(),
            "--name".into(),
            "storm".into(),
            "--version".into(),
            "1".into(),
        ];
        for b in [
            "x86_64-bios",
            "x86_64-uefi",
            "arm64-uefi",
            "qemu-arm64-uboot",
            "raspberrypi-4",
        ] {
            args.extend(["--board".into(), b.into()]);
        }
        args.extend([
            "--sign".into(),
            s(&self.dir.join("signer.key")),
            "--store".into(),
            s(blobs),
            "--out".into(),
            s(&manifests.join("storm-1.json")),
            "--quiet".into(),
        ]);
        lab::run(Command::new(&self.tugboot).args(&args))?;
        Ok(())
    }
}

/// Settings of a tugboot run.
#[derive(Debug, Clone)]
pub struct TugbootOptions {
    pub machines: u32,
    pub rack_size: u32,
    /// Servers sharing the fleet (1, or 2 for scale-out).
    pub servers: usize,
    /// `store = ...` (PostgreSQL for scale-out), else SQLite in each data_dir.
    pub store: Option<String>,
    /// Extra lines for `[tftp]`.
    pub tftp_extra: String,
    pub api: bool,
}

/// One started `tugboot serve`.
pub struct Tugboot {
    pub pid: u32,
    pub dir: PathBuf,
    pub log: PathBuf,
    pub address: Ipv4Addr,
}

/// The pool of rack `rack` for server `k` of `n`: split scope (disjoint halves).
pub fn pool(k: usize, n: usize) -> (u8, u8) {
    let size = u32::from(POOL.1 - POOL.0) + 1;
    let n = u32::try_from(n.max(1)).unwrap_or(1);
    let k = u32::try_from(k).unwrap_or(0);
    let per = size / n;
    let first = u32::from(POOL.0) + k * per;
    let last = if k + 1 == n {
        u32::from(POOL.1)
    } else {
        first + per - 1
    };
    (
        u8::try_from(first).unwrap_or(POOL.0),
        u8::try_from(last).unwrap_or(POOL.1),
    )
}

/// Writes server `k`'s directory and configuration.
pub fn tugboot_config(files: &Files, base: &Path, k: usize, o: &TugbootOptions) -> Result<PathBuf> {
    let dir = base.join(format!("tugboot{k}"));
    let data = dir.join("data");
    fs::create_dir_all(data.join("manifests"))?;
    if k == 0 {
        files.build_image(&data.join("blobs"), &data.join("manifests"))?;
    } else {
        // The catalogue comes from the shared store; the blobs must be here too (on separate
        // hosts: the same content-addressed files, copied).
        let from = base.join("tugboot0/data/blobs");
        for e in walk(&from)? {
            let rel = e.strip_prefix(&from)?;
            place(&e, &data.join("blobs").join(rel))?;
        }
    }
    for (name, p) in &files.boot {
        place(p, &dir.join("tftp").join(name))?;
    }
    place(
        files.boot_file("snponly.efi"),
        &dir.join("boot/ipxe-uefi-x64.efi"),
    )?;
    for (name, p) in &files.pi {
        place(p, &dir.join("rpi").join(name))?;
    }
    let addr = server_address(k);
    let (first, last) = pool(k, o.servers);
    let mut c = String::new();
    let _ = writeln!(
        c,
        "data_dir = \"data\"\ntrust_root = \"{}\"\nprofiles = \"{}\"",
        files.dir.join("root.json").display(),
        files.dir.join("profiles.toml").display()
    );
    if let Some(s) = &o.store {
        let _ = writeln!(c, "store = \"{s}\"");
    }
    let _ = writeln!(
        c,
        "\n[network]\ninterface = \"s0\"\naddress = \"{addr}\"\n\n[dhcp]\nmode = \"authoritative\"\ntrusted_relays = [\"10.100.0.0/14\"]\n[dhcp.boot]\nuefi_x64 = \"snponly.efi\""
    );
    for r in 0..fleet::racks(o.machines, o.rack_size) {
        let net = fleet::rack_network(r);
        let [a, b, cc, _] = net.octets();
        let _ = writeln!(
            c,
            "[[dhcp.subnets]]\nnetwork = \"{net}/24\"\npools = [{{ start = \"{a}.{b}.{cc}.{first}\", end = \"{a}.{b}.{cc}.{last}\" }}]\nrouter = \"{a}.{b}.{cc}.1\"\nlease_time_secs = 3600"
        );
    }
    let _ = writeln!(
        c,
        "\n[tftp]\nroot = \"tftp\"\nrpi_firmware = \"rpi\"\n{}\n[http]\nlisten = \"{addr}:8080\"\nboot_dir = \"boot\"",
        o.tftp_extra
    );
    if o.api {
        let _ = writeln!(
            c,
            "\n[api]\nlisten = \"{addr}:8443\"\nca_dir = \"{}\"",
            base.join("ca").display()
        );
    }
    fs::write(dir.join("serve.toml"), c)?;
    lab::run(
        Command::new(&files.tugboot)
            .args(["check-config", "--config"])
            .arg(dir.join("serve.toml")),
    )
    .context("tugboot check-config refused the generated configuration")?;
    Ok(dir)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// Starts server `k` in its namespace and waits for `tugboot serve: ready`.
pub fn start_tugboot(lab: &mut Lab, files: &Files, dir: &Path, k: usize) -> Result<Tugboot> {
    let log = dir.join("serve.log");
    let mut cmd = Lab::command(&lab.servers[k], &files.tugboot);
    cmd.args(["serve", "--config"])
        .arg(dir.join("serve.toml"))
        .current_dir(dir)
        .env(
            "RUST_LOG",
            std::env::var("TUGBOOT_STORM_LOG").unwrap_or_else(|_| "info".into()),
        );
    let pid = lab.spawn(&format!("tugboot serve {k}"), cmd, &log)?;
    lab::wait_for_line(&log, "tugboot serve: ready", Duration::from_secs(120))?;
    Ok(Tugboot {
        pid,
        dir: dir.to_path_buf(),
        log,
        address: server_address(k),
    })
}

/// How nginx sends files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NginxIo {
    /// `sendfile on; tcp_nopush on;` (Debian's and nginx's documented default for files).
    Sendfile,
    /// `sendfile off; output_buffers 2 1m;` (faster on some VMs, see docs/benchmarks.md).
    Buffers,
}

/// dnsmasq + nginx started in server namespace 0.
pub struct Classic {
    pub dnsmasq: u32,
    pub nginx: u32,
}

/// Writes the dnsmasq TFTP tree and the nginx root the way their documentation describes
/// for iPXE/PXE, UEFI HTTP boot, GRUB, U-Boot and Raspberry Pi clients, and starts both.
pub fn start_classic(
    lab: &mut Lab,
    files: &Files,
    base: &Path,
    machines: u32,
    rack_size: u32,
    io: NginxIo,
    no_ping: bool,
) -> Result<Classic> {
    let dir = base.join("classic");
    let tftp = dir.join("tftp");
    let www = dir.join("www");
    let addr = server_address(0);
    let (k, i) = (&files.kernel_sha, &files.initrd_sha);
    for root in [&tftp, &www] {
        place(&files.kernel, &root.join(format!("artifacts/sha256/{k}")))?;
        place(&files.initrd, &root.join(format!("artifacts/sha256/{i}")))?;
    }
    for (name, p) in &files.boot {
        place(p, &tftp.join(name))?;
    }
    place(files.boot_file("snponly.efi"), &www.join("ipxe.efi"))?;
    fs::write(
        www.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel http://{addr}:8080/artifacts/sha256/{k} initrd=initrd console=ttyS0\ninitrd --name initrd http://{addr}:8080/artifacts/sha256/{i}\nboot\n"
        ),
    )?;
    fs::create_dir_all(tftp.join("grub"))?;
    fs::write(
        tftp.join("grub/grub.cfg"),
        format!(
            "set timeout=0\nlinux /artifacts/sha256/{k} console=ttyAMA0\ninitrd /artifacts/sha256/{i}\n"
        ),
    )?;
    fs::create_dir_all(tftp.join("pxelinux.cfg"))?;
    fs::write(
        tftp.join("pxelinux.cfg/default"),
        format!(
            "default storm\nprompt 0\ntimeout 0\nlabel storm\n  kernel artifacts/sha256/{k}\n  initrd artifacts/sha256/{i}\n  append console=ttyAMA0\n"
        ),
    )?;
    // U-Boot's boot script, as mkimage makes it: `pxe get; pxe boot`.
    let script = dir.join("boot.cmd");
    fs::write(&script, "pxe get\npxe boot\n")?;
    lab::run(
        Command::new("mkimage")
            .args([
                "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", "storm", "-d",
            ])
            .arg(&script)
            .arg(tftp.join("boot.scr.uimg")),
    )
    .context("mkimage (u-boot-tools) makes U-Boot's boot script")?;
    // Raspberry Pi: one tree at the TFTP root (the bootloader falls back to it when there is
    // no <serial>/ directory), kernel and initramfs named in config.txt.
    for (name, p) in &files.pi {
        place(p, &tftp.join(name))?;
    }
    fs::write(
        tftp.join("config.txt"),
        "[all]\narm_64bit=1\nenable_uart=1\nkernel=kernel8.img\ninitramfs initrd.img followkernel\n",
    )?;
    fs::write(tftp.join("cmdline.txt"), "console=serial0,115200\n")?;
    place(&files.kernel, &tftp.join("kernel8.img"))?;
    place(&files.initrd, &tftp.join("initrd.img"))?;

    let mut args: Vec<String> = [
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--interface=s0",
        "--log-facility=-",
        "--enable-tftp",
        // iPXE: the script URL for iPXE, the iPXE binary for firmware (ipxe.org "chainloading").
        "--dhcp-match=set:ipxe,175",
        "--dhcp-match=set:bios,option:client-arch,0",
        "--dhcp-match=set:efi64,option:client-arch,7",
        "--dhcp-match=set:efi64,option:client-arch,9",
        "--dhcp-match=set:efihttp,option:client-arch,16",
        "--dhcp-match=set:arm64efi,option:client-arch,11",
        "--dhcp-match=set:uboot,option:client-arch,22",
        // Raspberry Pi documentation: `pxe-service=0,"Raspberry Pi Boot"` (tagged, so that
        // x86 BIOS PXE clients, also arch 0, keep their boot file).
        "--dhcp-mac=set:rpi,dc:a6:32:*:*:*",
        "--pxe-service=tag:rpi,0,\"Raspberry Pi Boot\"",
        "--dhcp-boot=tag:!ipxe,tag:bios,tag:!rpi,undionly.kpxe",
        "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
        "--dhcp-boot=tag:arm64efi,grubnetaa64.efi",
        "--dhcp-boot=tag:uboot,boot.scr.uimg",
        // UEFI HTTP boot needs option 60 HTTPClient echoed (UEFI spec; tests/fixtures/dhcp).
        "--dhcp-option-force=tag:efihttp,60,HTTPClient",
        // iPXE "no-pxedhcp": do not wait for ProxyDHCP offers (ipxe.org/howto/dhcpd).
        "--dhcp-option=encap:175,176,1b",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("--dhcp-boot=tag:ipxe,http://{addr}:8080/boot.ipxe"));
    args.push(format!(
        "--dhcp-boot=tag:efihttp,http://{addr}:8080/ipxe.efi"
    ));
    if no_ping {
        args.push("--no-ping".into());
    }
    args.push(format!("--tftp-root={}", tftp.display()));
    // Defaults are 50 transfers and 1000 leases: raised for a hall, as its man page says.
    args.push(format!("--tftp-max={}", machines.clamp(50, 10_000)));
    args.push(format!("--dhcp-lease-max={}", (machines * 2).max(1000)));
    args.push(format!(
        "--dhcp-leasefile={}",
        dir.join("dnsmasq.leases").display()
    ));
    args.push(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    for r in 0..fleet::racks(machines, rack_size) {
        let [a, b, c, _] = fleet::rack_network(r).octets();
        args.push(format!(
            "--dhcp-range={a}.{b}.{c}.{},{a}.{b}.{c}.{},255.255.255.0,1h",
            POOL.0, POOL.1
        ));
    }
    let log = dir.join("dnsmasq.log");
    let mut cmd = Lab::command(&lab.servers[0], Path::new("dnsmasq"));
    cmd.args(&args);
    let dnsmasq = lab.spawn("dnsmasq", cmd, &log)?;
    lab::wait_for_line(&log, "TFTP root is", Duration::from_secs(30))?;

    let (sendfile, buffers) = match io {
        NginxIo::Sendfile => ("on", "tcp_nopush on;"),
        NginxIo::Buffers => ("off", "output_buffers 2 1m;"),
    };
    let d = dir.display();
    let conf = format!(
        "user root;\ndaemon off;\nworker_processes auto;\nworker_rlimit_nofile 65536;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
         events {{ worker_connections 16384; }}\n\
         http {{\n  access_log {d}/nginx-access.log;\n  sendfile {sendfile};\n  {buffers}\n  keepalive_timeout 65;\n  keepalive_requests 1000;\n\
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
         uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  default_type application/octet-stream;\n\
         server {{\n    listen {addr}:8080;\n    root {};\n    location / {{ }}\n  }}\n}}\n",
        www.display()
    );
    fs::write(dir.join("nginx.conf"), conf)?;
    let mut cmd = Lab::command(&lab.servers[0], Path::new("nginx"));
    cmd.arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"));
    let nginx = lab.spawn("nginx", cmd, &dir.join("nginx.log"))?;
    // Ready when it answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = Lab::command(&lab.clients, Path::new("curl"))
            .args(["-sf", "-o", "/dev/null"])
            .arg(format!("http://{addr}:8080/boot.ipxe"))
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            break;
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "nginx did not answer: {}",
                fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Classic { dnsmasq, nginx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_scope_pools_are_disjoint_and_cover_the_range() {
        assert_eq!(pool(0, 1), (10, 249));
        assert_eq!(pool(0, 2), (10, 129));
        assert_eq!(pool(1, 2), (130, 249));
    }
}
