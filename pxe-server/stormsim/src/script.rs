//! What the loaders read after the firmware: iPXE scripts (a small interpreter that yields
//! the network actions iPXE would take), GRUB and PXELINUX configurations, and a Raspberry
//! Pi's `config.txt`.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Largest script or configuration read.
pub const MAX_SCRIPT: usize = 64 * 1024;
/// Commands one script may run before it is taken for a loop.
pub const MAX_STEPS: u32 = 200;

/// Why a script cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    #[error("not an iPXE script (no #!ipxe)")]
    NotIpxe,
    #[error("no label {0:?}")]
    NoLabel(String),
    #[error("{0} commands without booting: a loop")]
    Loop(u32),
    #[error("{0}: missing argument")]
    Missing(&'static str),
    #[error("script ended without booting")]
    Ended,
}

/// What iPXE knows about itself (`${...}` settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vars {
    pub mac: [u8; 6],
    pub uuid: [u8; 16],
    pub serial: String,
    pub buildarch: &'static str,
    pub platform: &'static str,
    pub ip: Option<Ipv4Addr>,
}

impl Vars {
    fn get(&self, name: &str) -> String {
        let m = self.mac;
        match name {
            "mac" | "net0/mac" => format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            "mac:hexhyp" | "net0/mac:hexhyp" => format!(
                "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            "uuid" => {
                let h = hex::encode(self.uuid);
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..]
                )
            }
            "serial" | "serial:uristring" => self.serial.clone(),
            "buildarch" => self.buildarch.into(),
            "platform" => self.platform.into(),
            "ip" | "net0/ip" => self.ip.map(|a| a.to_string()).unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// `${name}` and `${name:type}` replaced; unknown settings are empty, as in iPXE.
    #[must_use]
    pub fn expand(&self, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            match rest[i + 2..].find('}') {
                Some(j) => {
                    out.push_str(&self.get(&rest[i + 2..i + 2 + j]));
                    rest = &rest[i + 3 + j..];
                }
                None => {
                    out.push_str(&rest[i..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// Something iPXE does on the network (or waits for), handed to the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `chain URL`: fetch and run another script.
    Chain(String),
    /// `kernel URL`: fetch the kernel image.
    Kernel(String),
    /// `initrd URL`: fetch an initrd.
    Initrd(String),
    /// `dhcp`: configure the interface again.
    Dhcp,
    Sleep(Duration),
    /// `boot`: start the loaded kernel (the machine is booted).
    Boot,
    /// `exit N`: back to the firmware.
    Exit(i32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    First,
    Or,
    And,
}

/// One script being run.
#[derive(Debug, Clone)]
pub struct Ipxe {
    /// Lines of segments (connector, words).
    lines: Vec<Vec<(Conn, Vec<String>)>>,
    labels: Vec<(String, usize)>,
    line: usize,
    seg: usize,
    steps: u32,
    pending: bool,
}

impl Ipxe {
    /// Parses a script (must start with `#!ipxe`).
    pub fn parse(text: &str) -> Result<Self, ScriptError> {
        let mut it = text.lines();
        if !it
            .next()
            .is_some_and(|l| l.trim_start().starts_with("#!ipxe"))
        {
            return Err(ScriptError::NotIpxe);
        }
        let mut lines = Vec::new();
        let mut labels = Vec::new();
        for raw in it {
            let l = raw.trim();
            if let Some(label) = l.strip_prefix(':') {
                labels.push((label.trim().to_owned(), lines.len()));
                continue;
            }
            let mut segs: Vec<(Conn, Vec<String>)> = Vec::new();
            let mut conn = Conn::First;
            let mut words = Vec::new();
            for w in l.split_whitespace() {
                if w.starts_with('#') {
                    break;
                }
                match w {
                    "||" | "&&" => {
                        segs.push((conn, std::mem::take(&mut words)));
                        conn = if w == "||" { Conn::Or } else { Conn::And };
                    }
                    _ => words.push(w.to_owned()),
                }
            }
            segs.push((conn, words));
            segs.retain(|(_, w)| !w.is_empty());
            if !segs.is_empty() {
                lines.push(segs);
            }
        }
        Ok(Ipxe {
            lines,
            labels,
            line: 0,
            seg: 0,
            steps: 0,
            pending: false,
        })
    }

    /// Advances past the command that just finished with `ok`.
    fn after(&mut self, ok: bool) {
        self.seg += 1;
        while let Some((conn, _)) = self.lines.get(self.line).and_then(|l| l.get(self.seg)) {
            let skip = match conn {
                Conn::Or => ok,
                Conn::And => !ok,
                Conn::First => false,
            };
            if !skip {
                return;
            }
            self.seg += 1;
        }
        self.line += 1;
        self.seg = 0;
    }

    /// The next network action. `last` is the outcome of the action returned before (`true`:
    /// it worked); pass `true` on the first call.
    pub fn next(&mut self, vars: &Vars, last: bool) -> Result<Action, ScriptError> {
        if self.pending {
            self.pending = false;
            self.after(last);
        }
        loop {
            self.steps += 1;
            if self.steps > MAX_STEPS {
                return Err(ScriptError::Loop(MAX_STEPS));
            }
            let Some((_, words)) = self.lines.get(self.line).and_then(|l| l.get(self.seg)) else {
                return Err(ScriptError::Ended);
            };
            let words: Vec<String> = words.iter().map(|w| vars.expand(w)).collect();
            // Options go; `--name X`, `-n X`, `--timeout X`, `-t X` take the next word along.
            let mut args: Vec<&str> = Vec::new();
            let mut skip = false;
            for a in &words[1..] {
                if std::mem::take(&mut skip) {
                    continue;
                }
                if a.starts_with('-') {
                    skip = matches!(a.as_str(), "--name" | "-n" | "--timeout" | "-t");
                    continue;
                }
                args.push(a);
            }
            let url = |what| {
                args.first()
                    .map(|s| (*s).to_owned())
                    .ok_or(ScriptError::Missing(what))
            };
            let action = match words[0].as_str() {
                "chain" | "imgexec" => Some(Action::Chain(url("chain")?)),
                "kernel" | "imgselect" => Some(Action::Kernel(url("kernel")?)),
                "initrd" | "module" | "imgfetch" => Some(Action::Initrd(url("initrd")?)),
                "dhcp" | "ifconf" => Some(Action::Dhcp),
                "boot" => Some(Action::Boot),
                "sleep" => Some(Action::Sleep(Duration::from_secs(
                    args.first().and_then(|s| s.parse().ok()).unwrap_or(0),
                ))),
                "exit" => Some(Action::Exit(
                    args.first().and_then(|s| s.parse().ok()).unwrap_or(0),
                )),
                "goto" => {
                    let label = args.first().ok_or(ScriptError::Missing("goto"))?;
                    let at = self
                        .labels
                        .iter()
                        .find(|(l, _)| l == label)
                        .map(|(_, at)| *at)
                        .ok_or_else(|| ScriptError::NoLabel((*label).to_owned()))?;
                    self.line = at;
                    self.seg = 0;
                    continue;
                }
                "isset" => {
                    let ok = args.first().is_some_and(|v| !v.is_empty());
                    self.after(ok);
                    continue;
                }
                _ => {
                    // echo, set, prompt, imgfree, ...: no network, always succeed.
                    self.after(true);
                    continue;
                }
            };
            self.pending = true;
            return Ok(action.unwrap_or(Action::Boot));
        }
    }
}

/// What a GRUB configuration makes GRUB load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubConfig {
    /// `configfile`: another configuration to read instead (tugboot's dispatch by MAC).
    pub configfile: Option<String>,
    pub linux: Option<String>,
    pub initrd: Vec<String>,
}

/// Reads a GRUB configuration the way the simulator's GRUB runs it: `$prefix` is `/grub`, the
/// dispatch configuration's `$m1`..`$m6` are this MAC's bytes, device prefixes such as
/// `(tftp)` or `(tftp,10.0.0.1)` are dropped, quotes removed.
#[must_use]
pub fn grub(text: &str, mac: [u8; 6]) -> GrubConfig {
    let mut out = GrubConfig::default();
    let expand = |w: &str| -> String {
        let mut s = w.trim_matches(|c| c == '"' || c == '\'').to_owned();
        s = s.replace("${prefix}", "/grub").replace("$prefix", "/grub");
        for (i, b) in mac.iter().enumerate() {
            let hex = format!("{b:02x}");
            s = s
                .replace(&format!("${{m{}}}", i + 1), &hex)
                .replace(&format!("$m{}", i + 1), &hex);
        }
        if s.starts_with('(')
            && let Some(end) = s.find(')')
        {
            s = s[end + 1..].to_owned();
        }
        s
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["configfile", path, ..] if out.configfile.is_none() => {
                out.configfile = Some(expand(path));
            }
            ["linux" | "linuxefi", path, ..] => out.linux = Some(expand(path)),
            ["initrd" | "initrdefi", paths @ ..] => {
                out.initrd = paths.iter().map(|p| expand(p)).collect();
            }
            _ => {}
        }
    }
    out
}

/// The label U-Boot's `pxe boot` runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PxelinuxLabel {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
}

/// The `default` label of a PXELINUX file (else the first one).
#[must_use]
pub fn pxelinux(text: &str) -> PxelinuxLabel {
    let mut default = None;
    let mut labels: Vec<(String, PxelinuxLabel)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let value = words.next().map(str::to_owned);
        match key.to_ascii_lowercase().as_str() {
            "default" => default = value,
            "label" => labels.push((value.unwrap_or_default(), PxelinuxLabel::default())),
            "kernel" | "linux" => {
                if let Some((_, l)) = labels.last_mut() {
                    l.kernel = value;
                }
            }
            "initrd" => {
                if let Some((_, l)) = labels.last_mut() {
                    l.initrd = value.map(|v| v.split(',').next().unwrap_or_default().to_owned());
                }
            }
            _ => {}
        }
    }
    labels
        .iter()
        .find(|(n, _)| Some(n) == default.as_ref())
        .or(labels.first())
        .map(|(_, l)| l.clone())
        .unwrap_or_default()
}

/// The files U-Boot 2023.01's `pxe get` tries, in order: by MAC, by the address in hex
/// shortened one digit at a time, then the defaults (qemu_arm64: arch `arm`, no SoC).
#[must_use]
pub fn pxelinux_candidates(mac: [u8; 6], ip: Ipv4Addr) -> Vec<String> {
    let m = mac.map(|b| format!("{b:02x}")).join("-");
    let mut out = vec![format!("pxelinux.cfg/01-{m}")];
    let hexip = format!("{:08X}", u32::from(ip));
    for n in (1..=8).rev() {
        out.push(format!("pxelinux.cfg/{}", &hexip[..n]));
    }
    out.push("pxelinux.cfg/default-arm".into());
    out.push("pxelinux.cfg/default".into());
    out
}

/// What a Raspberry Pi's `config.txt` makes its firmware load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiConfig {
    pub kernel: String,
    pub initramfs: Option<String>,
}

/// Reads `kernel=` and `initramfs` (sections are all taken as `[all]`; the default 64-bit
/// kernel name is `kernel8.img`).
#[must_use]
pub fn pi_config(text: &str) -> PiConfig {
    let mut kernel = None;
    let mut initramfs = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initramfs = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    PiConfig {
        kernel: kernel.unwrap_or_else(|| "kernel8.img".into()),
        initramfs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            uuid: [0xab; 16],
            serial: "S1".into(),
            buildarch: "x86_64",
            platform: "pcbios",
            ip: Some(Ipv4Addr::new(10, 0, 0, 5)),
        }
    }

    const BOOT: &str = include_str!("../../../tests/fixtures/ipxe/boot.ipxe");
    const CHAIN: &str = include_str!("../../../tests/fixtures/ipxe/chain.ipxe");

    #[test]
    fn tugboots_bootstrap_chains_with_ipxes_facts() {
        let mut s = Ipxe::parse(CHAIN).unwrap();
        let v = vars();
        assert_eq!(
            s.next(&v, true).unwrap(),
            Action::Chain(
                "http://192.0.2.1:8080/ipxe?mac=52-54-00-12-34-56&uuid=abababab-abab-abab-abab-abababababab&serial=S1&arch=x86_64&platform=pcbios".into()
            )
        );
        // A failed chain: sleep, dhcp, chain again, then exit.
        assert_eq!(
            s.next(&v, false).unwrap(),
            Action::Sleep(Duration::from_secs(10))
        );
        assert_eq!(s.next(&v, true).unwrap(), Action::Dhcp);
        assert!(matches!(s.next(&v, false).unwrap(), Action::Chain(_)));
        assert_eq!(s.next(&v, false).unwrap(), Action::Exit(1));
        // Without an address it runs dhcp first.
        let mut s = Ipxe::parse(CHAIN).unwrap();
        let no_ip = Vars { ip: None, ..vars() };
        assert_eq!(s.next(&no_ip, true).unwrap(), Action::Dhcp);
        assert!(matches!(s.next(&v, true).unwrap(), Action::Chain(_)));
    }

    #[test]
    fn machine_script_loads_kernel_initrd_then_boots_or_retries() {
        let v = vars();
        let mut s = Ipxe::parse(BOOT).unwrap();
        assert!(matches!(s.next(&v, true).unwrap(), Action::Kernel(u) if u.ends_with("639c")));
        assert!(matches!(s.next(&v, true).unwrap(), Action::Initrd(u) if u.ends_with("70f2")));
        assert_eq!(s.next(&v, true).unwrap(), Action::Boot);
        let mut s = Ipxe::parse(BOOT).unwrap();
        s.next(&v, true).unwrap();
        assert_eq!(
            s.next(&v, false).unwrap(),
            Action::Sleep(Duration::from_secs(10))
        );
        assert!(matches!(s.next(&v, true).unwrap(), Action::Chain(_)));
        assert!(Ipxe::parse("echo hi").is_err());
        let mut looping = Ipxe::parse("#!ipxe\n:a\necho x\ngoto a\n").unwrap();
        assert!(matches!(looping.next(&v, true), Err(ScriptError::Loop(_))));
        let mut bad = Ipxe::parse("#!ipxe\ngoto nowhere\n").unwrap();
        assert!(matches!(bad.next(&v, true), Err(ScriptError::NoLabel(_))));
        let mut end = Ipxe::parse("#!ipxe\necho only\n").unwrap();
        assert_eq!(end.next(&v, true), Err(ScriptError::Ended));
    }

    #[test]
    fn grub_configs() {
        let mac = [0x52, 0x54, 0, 0xf1, 0, 4];
        let direct = "set timeout=0\nlinux /artifacts/sha256/aa 'console=ttyAMA0'\ninitrd /artifacts/sha256/bb\n";
        let c = grub(direct, mac);
        assert_eq!(c.linux.as_deref(), Some("/artifacts/sha256/aa"));
        assert_eq!(c.initrd, ["/artifacts/sha256/bb"]);
        let dispatch = "regexp ...\n  configfile \"$prefix/grub.cfg-01-$m1-$m2-$m3-$m4-$m5-$m6\"\n";
        assert_eq!(
            grub(dispatch, mac).configfile.as_deref(),
            Some("/grub/grub.cfg-01-52-54-00-f1-00-04")
        );
        assert_eq!(
            grub("linux (tftp,10.0.0.1)/vmlinuz\n", mac)
                .linux
                .as_deref(),
            Some("/vmlinuz")
        );
    }

    #[test]
    fn pxelinux_files() {
        let text = "default tugboot\nprompt 0\n\nlabel other\n  kernel k0\nlabel tugboot\n  kernel artifacts/sha256/k\n  initrd artifacts/sha256/i\n  append x\n";
        let l = pxelinux(text);
        assert_eq!(l.kernel.as_deref(), Some("artifacts/sha256/k"));
        assert_eq!(l.initrd.as_deref(), Some("artifacts/sha256/i"));
        let c = pxelinux_candidates(
            [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            Ipv4Addr::new(10, 100, 0, 10),
        );
        assert_eq!(c[0], "pxelinux.cfg/01-52-54-00-12-34-56");
        assert_eq!(c[1], "pxelinux.cfg/0A64000A");
        assert_eq!(c[8], "pxelinux.cfg/0");
        assert_eq!(c.last().unwrap(), "pxelinux.cfg/default");
    }

    #[test]
    fn pi_configs() {
        let c = pi_config(
            "# tugboot\n[all]\narm_64bit=1\nkernel=tugboot-kernel.img\ninitramfs tugboot-initrd.img followkernel\n",
        );
        assert_eq!(c.kernel, "tugboot-kernel.img");
        assert_eq!(c.initramfs.as_deref(), Some("tugboot-initrd.img"));
        assert_eq!(pi_config("").kernel, "kernel8.img");
    }
}
