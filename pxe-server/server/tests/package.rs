//! The .deb packages, installed and netbooting (root: mount + network namespaces, QEMU).
//!
//! `packaging/build-debs` builds tugboot_*.deb and tugboot-agent_*.deb (the server binary is
//! the one `cargo test` built, `--profile dev`: no second server build in CI). Then, in a
//! private network namespace and a private mount namespace:
//!
//! 1. a throwaway root: an overlay whose lower layer is the host's own Debian (read-only) and
//!    whose upper layer is a tmpfs, entered with chroot. `dpkg -i` installs both packages for
//!    real there (dpkg's database, dependency checks, maintainer scripts: the `tugboot` system
//!    user, /var/lib/tugboot) and the host sees none of it; the tmpfs goes with the namespace;
//! 2. `tugboot init --interface br0` (the packaged binary) writes /etc/tugboot; a signed
//!    image is built with the packaged CLI and the key init wrote;
//! 3. the unit's own `ExecStart=` line runs as the unit's `User=`/`Group=` with exactly its
//!    `AmbientCapabilities=` (as the ambient, inheritable and bounding sets, setpriv), no new
//!    privileges, a minimal environment and the unit's `UMask=`: without systemd (not PID 1
//!    here), what the unit grants is what the process has;
//! 4. a QEMU machine (SeaBIOS + iPXE ROM) netboots from it to the image's marker.
//!
//! Not covered by this test: the rest of the unit's sandboxing (ProtectSystem=, the system
//! call filter, ...) needs systemd itself; `systemd-analyze verify` checks the unit's syntax.
//!
//! `cargo test -p tugboot --test package -- --ignored --nocapture` (as root).

mod vm;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm::{Firmware, Netns, Serve, Vm, host_kernel, initramfs_x86, require_root_and_tools, run};

const MARKER: &str = "TUGBOOT-PACKAGE-OK";
const MAC: &str = "52:54:00:12:34:77";

/// Runs in the mount namespace (`unshare --mount`) inside the network namespace; its last step
/// `exec`s into the server, so its process is the server's.
const SCRIPT: &str = r#"
set -euo pipefail
T=$1 D=$2 KERNEL=$3
say() { echo "pkgtest: $*" >&2; }
mount --make-rprivate /
mount -t tmpfs -o size=3g,mode=0755 pkgtest "$T"
mkdir "$T/upper" "$T/work" "$T/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/upper,workdir=$T/work" "$T/root"
R=$T/root
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
# No systemd in here: maintainer scripts see no /run/systemd/system and start nothing.
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mkdir -p "$R/mnt/pkgtest"
mount --bind "$D" "$R/mnt/pkgtest"
in_root() { chroot "$R" "$@"; }

say "dpkg -i"
in_root sh -c 'DEBIAN_FRONTEND=noninteractive dpkg -i /mnt/pkgtest/debs/tugboot_*.deb /mnt/pkgtest/debs/tugboot-agent_*.deb' >&2
in_root dpkg-query -W -f='pkgtest: installed ${Package} ${Version} ${Architecture} ${db:Status-Abbrev}\n' tugboot tugboot-agent >&2
in_root getent passwd tugboot >&2
[ "$(in_root stat -c %U:%a /var/lib/tugboot)" = tugboot:750 ]
in_root tugboot-agent version >&2
test -s "$R/usr/share/man/man1/tugboot-init.1.gz"
in_root bash -c 'source /usr/share/bash-completion/completions/tugboot && complete -p tugboot' >&2
in_root systemd-analyze verify /lib/systemd/system/tugboot.service /lib/systemd/system/tugboot-agent.service >&2

say "tugboot init"
in_root tugboot init --interface br0 >&2
in_root tugboot image build --kernel "$KERNEL" --initrd /mnt/pkgtest/initrd.cpio \
  --cmdline "console=ttyS0 panic=-1" --name pkg-test --version 1 --board x86_64-bios \
  --sign /etc/tugboot/keys/release.key --store /var/lib/tugboot/blobs \
  --out /var/lib/tugboot/manifests/pkg-test.json --quiet >&2
printf '\ndefault_profile = "test"\n[profiles.test]\nimage = "pkg-test"\n' >>"$R/etc/tugboot/profiles.toml"
# Built as root (the release key is root's): the service user's from now on (docs/packages.md).
in_root chown -R tugboot:tugboot /var/lib/tugboot

unit=$R/lib/systemd/system/tugboot.service
key() { sed -n "s/^$1=//p" "$unit"; }
exec_start=$(key ExecStart)
user=$(key User)
group=$(key Group)
umask_=$(key UMask)
caps=$(key AmbientCapabilities | tr 'A-Z ' 'a-z\n' | sed 's/^cap_/+/' | paste -sd,)
[ "$(key CapabilityBoundingSet)" = "$(key AmbientCapabilities)" ]
# The service user cannot read the signing key.
if in_root setpriv --reuid="$user" --regid="$group" --init-groups cat /etc/tugboot/keys/release.key >/dev/null 2>&1; then
  say "the service user can read the release key"; exit 1
fi
say "ExecStart=$exec_start as $user:$group caps $caps umask $umask_"
umask "$umask_"
exec chroot "$R" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/var/lib/tugboot USER="$user" LOGNAME="$user" \
  setpriv --reuid="$user" --regid="$group" --init-groups \
  --inh-caps=-all,"$caps" --ambient-caps=-all,"$caps" --bounding-set=-all,"$caps" --no-new-privs \
  -- $exec_start
"#;

#[test]
#[ignore = "root: mount and network namespaces + QEMU"]
fn the_packages_install_into_a_clean_root_and_netboot_a_machine() {
    require_root_and_tools(
        &[
            "ip",
            "unshare",
            "setpriv",
            "dpkg-deb",
            "readelf",
            "qemu-system-x86_64",
            "busybox",
            "dnsmasq",
            "systemd-analyze",
        ],
        &["/usr/lib/ipxe/undionly.kpxe"],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");

    let t0 = Instant::now();
    run(Command::new(repo.join("packaging/build-debs"))
        .args(["--profile", "dev", "--server-bin", vm::tugboot(), "--out"])
        .arg(d.join("debs")));
    let built = t0.elapsed();
    fs::write(d.join("initrd.cpio"), initramfs_x86(MARKER)).expect("initrd");
    fs::write(d.join("pkgtest.sh"), SCRIPT).expect("script");
    fs::create_dir(d.join("mnt")).expect("mnt");

    let mut ns = Netns::new("pkg");
    ns.router_advertisements(d);
    let t1 = Instant::now();
    let server = ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "bash"])
        .arg(d.join("pkgtest.sh"))
        .arg(d.join("mnt"))
        .arg(d)
        .arg(host_kernel())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the package script");
    let mut serve = Serve::adopt(&mut ns, server, Duration::from_secs(240));
    let ready = t1.elapsed();
    let setup = serve.lines.join("\n");
    assert!(
        setup.contains("installed tugboot 0.1.0 amd64 ii")
            && setup.contains("installed tugboot-agent 0.1.0 amd64 ii"),
        "{setup}"
    );
    assert!(
        setup.contains("ExecStart=/usr/bin/tugboot serve --config /etc/tugboot/serve.toml as tugboot:tugboot caps +net_bind_service"),
        "{setup}"
    );

    // What the server process really holds: the service user's ids, and CAP_NET_BIND_SERVICE
    // (bit 10) as its only capability.
    let status = fs::read_to_string(format!("/proc/{}/status", serve.pid)).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    let uids = field("Uid:");
    assert!(uids.iter().all(|u| u == &uids[0] && u != "0"), "{status}");
    assert_eq!(field("CapEff:"), ["0000000000000400"], "{status}");
    assert_eq!(field("CapBnd:"), ["0000000000000400"], "{status}");
    assert_eq!(field("NoNewPrivs:"), ["1"], "{status}");
    assert!(
        fs::read_link(format!("/proc/{}/exe", serve.pid))
            .expect("exe")
            .ends_with("usr/bin/tugboot"),
        "not the packaged binary"
    );

    let t2 = Instant::now();
    let mut vm = Vm::start(&mut ns, d, Firmware::Bios, MAC, "tap0");
    let times = vm.wait_for(MARKER, &mut serve);
    let booted = t2.elapsed();
    vm.stop(&mut ns);
    let log = serve.stop(&mut ns);
    assert!(log.contains("manifest published"), "{log}");
    println!(
        "package: build-debs {built:?}; dpkg -i + init + image build + serve ready {ready:?}; \
         VM power-on to marker {booted:?} (kernel started {:?}); install to first netboot {:?}",
        times.kernel_started,
        ready + booted
    );
}
