//! The web console in a real browser (root: a network namespace; Debian's `chromium` and
//! `chromium-driver`, which `tests/setup` installs).
//!
//! One `tugboot serve` (DHCP, HTTP and the device API with the console) in a private namespace,
//! a signed image pushed through `tugboot images push`. A machine then netboots against
//! it from a second namespace on the same bridge: busybox `udhcpc` gets a lease from tugboot's
//! DHCP server announcing itself as a PXE client, and `curl` fetches its iPXE script over HTTP
//! as iPXE would. The operator labels it with a `<script>` value (`tugboot machines label`).
//! Then `tests/console/browser.py` drives chromium over WebDriver through the console: a page
//! without a session is redirected to login, a wrong token refused, login, the machine that
//! just netbooted listed and opened (facts with provenance, the label shown as text), a
//! rollout started and paused with confirmation, a forged POST refused, the live event view
//! receiving a transition over SSE. Screenshots at 1280 px and 390 px go to `docs/console/`.
//!
//! `cargo test -p tugboot --test console -- --ignored --nocapture` (as root).

mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vm::{Netns, Serve, require_root_and_tools, run, tugboot};

const MAC: &str = "02:00:00:77:00:01";
const INJECTED: &str = "<script>alert(1)</script>";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A second namespace with one veth port on `ns`'s bridge and no address: the machine.
struct Client {
    name: String,
}

impl Client {
    fn new(ns: &Netns) -> Self {
        let name = format!("{}-m", ns.name);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        let c = Client { name };
        run(Command::new("ip").args(["-n", &ns.name]).args([
            "link", "add", "vb-m", "type", "veth", "peer", "name", "eth0", "netns", &c.name,
        ]));
        for args in [
            vec!["link", "set", "vb-m", "master", "br0"],
            vec!["link", "set", "vb-m", "up"],
        ] {
            run(Command::new("ip").args(["-n", &ns.name]).args(&args));
        }
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", "eth0", "address", MAC],
            vec!["link", "set", "eth0", "up"],
        ] {
            run(Command::new("ip").args(["-n", &c.name]).args(&args));
        }
        c
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn write_config(dir: &Path) -> PathBuf {
    let config = dir.join("serve.toml");
    fs::write(
        &config,
        r#"
data_dir = "data"
trust_root = "root.json"
profiles = "profiles.toml"

[network]
interface = "br0"
address = "10.77.0.1"

[dhcp]
mode = "authoritative"
[[dhcp.subnets]]
network = "10.77.0.0/24"
pools = [{ start = "10.77.0.100", end = "10.77.0.150" }]
router = "10.77.0.1"

[http]
listen = "10.77.0.1:8080"

[api]
listen = "10.77.0.1:8443"
ca_dir = "ca"
"#,
    )
    .expect("write config");
    fs::write(
        dir.join("profiles.toml"),
        "default_profile = \"demo\"\n[profiles.demo]\nimage = \"demo\"\n",
    )
    .expect("write profiles");
    config
}

#[test]
#[ignore = "root: network namespaces, chromium"]
fn console_in_a_real_browser() {
    require_root_and_tools(
        &[
            "ip",
            "busybox",
            "curl",
            "python3",
            "openssl",
            "chromium",
            "chromedriver",
        ],
        &[],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let s = |name: &str| -> String { p(name).display().to_string() };
    fs::create_dir_all(p("staging")).expect("mkdir");
    let quiet = |args: &[&str]| {
        run(Command::new(tugboot()).args(args).current_dir(dir.path()));
    };
    quiet(&["keys", "generate", "--out", &s("signer")]);
    quiet(&[
        "keys",
        "root",
        "init",
        "--key",
        &s("signer.pub"),
        "--sign",
        &s("signer.key"),
        "--out",
        &s("root.json"),
    ]);
    fs::write(p("staging/kernel"), vec![0x5a_u8; 40_000]).expect("kernel");
    quiet(&[
        "image",
        "build",
        "--kernel",
        &s("staging/kernel"),
        "--cmdline",
        "quiet",
        "--name",
        "demo",
        "--version",
        "2",
        "--board",
        "x86_64-bios",
        "--sign",
        &s("signer.key"),
        "--store",
        &s("staging/blobs"),
        "--out",
        &s("staging/demo.json"),
        "--quiet",
    ]);
    quiet(&["ca", "init", "--dir", &s("ca")]);
    let config = write_config(dir.path());

    let mut ns = Netns::new("con");
    let mut serve = Serve::start(&mut ns, &config);
    let url = "https://10.77.0.1:8443";
    let token_file = s("data/api/operator-token");
    let operator = |args: &[&str]| -> String {
        run(ns
            .command(tugboot())
            .args(args)
            .env("TUGBOOT_SERVER", url)
            .env("TUGBOOT_TOKEN_FILE", &token_file)
            .env("TUGBOOT_CA_CERT", s("ca/ca.pem"))
            .current_dir(dir.path()))
    };
    operator(&[
        "images",
        "push",
        &s("staging/demo.json"),
        "--store",
        &s("staging/blobs"),
    ]);

    // The machine netboots: a DHCP lease from tugboot as a PXE client, then its iPXE script.
    let client = Client::new(&ns);
    let script = p("udhcpc.sh");
    fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace $ip/24 dev $interface ;; deconfig) ip addr flush dev $interface ;; esac\n",
    )
    .expect("udhcpc script");
    run(Command::new("chmod").arg("+x").arg(&script));
    let lease = client
        .command("busybox")
        .args([
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-i",
            "eth0",
            "-t",
            "10",
            "-T",
            "1",
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
            "-s",
        ])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("udhcpc");
    assert!(
        lease.status.success(),
        "udhcpc got no lease: {}",
        String::from_utf8_lossy(&lease.stderr)
    );
    let ipxe = run(client.command("curl").args([
        "-fsS",
        "--max-time",
        "10",
        &format!(
            "http://10.77.0.1:8080/ipxe?mac={}&arch=x86_64&platform=pcbios",
            MAC.replace(':', "-")
        ),
    ]));
    assert!(
        ipxe.starts_with("#!ipxe") && ipxe.contains("kernel "),
        "no boot script for the machine: {ipxe}"
    );
    // Observations reach the store in batches: the machine is there within moments.
    let label = format!("note={INJECTED}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = ns
            .command(tugboot())
            .args(["machines", "label", MAC, &label])
            .env("TUGBOOT_SERVER", url)
            .env("TUGBOOT_TOKEN_FILE", &token_file)
            .env("TUGBOOT_CA_CERT", s("ca/ca.pem"))
            .output()
            .expect("tugboot machines label");
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the netbooted machine never reached the store: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }

    let out = repo_root().join("docs/console");
    let browser = ns
        .command("python3")
        .arg(repo_root().join("tests/console/browser.py"))
        .args(["--url", url, "--cert", &s("data/api/server.pem")])
        .args(["--token-file", &token_file, "--mac", MAC, "--out"])
        .arg(&out)
        .status()
        .expect("run tests/console/browser.py");
    serve.drain();
    drop(client);
    let log = serve.stop(&mut ns);
    assert!(
        browser.success(),
        "browser checks failed (see above; docs/console/failure.png); server log:\n{log}"
    );
    assert!(log.contains("console login"), "{log}");
    assert!(
        log.contains("console login refused: wrong operator token"),
        "{log}"
    );
}
