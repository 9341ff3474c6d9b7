//! The operator CLI against a real `tugboot serve` with `[api]`, on loopback, no privileges:
//! `ca init`, serve, `images publish`, a device enrolling over HTTPS (its CSR made here with
//! rcgen), `machines list/approve`, `rollout create/status`, the device reporting its commit
//! over mutual TLS, the rollout completing, `machines revoke` shutting the device out, and a
//! wrong operator token refused with a one-line error.

mod common;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tugboot_api::client::{ApiClient, HttpResponse};

fn tugboot(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tugboot"))
        .args(args)
        .env_remove("TUGBOOT_SERVER")
        .env_remove("TUGBOOT_TOKEN_FILE")
        .env_remove("TUGBOOT_CA_CERT")
        .envs(env.iter().copied())
        .output()
        .expect("run tugboot")
}

fn ok_env(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = tugboot(args, env);
    assert!(
        out.status.success(),
        "tugboot {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(args: &[&str]) -> String {
    ok_env(args, &[])
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The running server; killed on drop if the test fails before stopping it.
struct Serve {
    child: Child,
    log: mpsc::Receiver<String>,
    lines: Vec<String>,
    api: SocketAddr,
    http: SocketAddr,
}

impl Serve {
    fn start(config: &Path) -> Self {
        let common::Started {
            child,
            log,
            lines,
            ready,
        } = common::start_serve(config);
        let addr = |what: &str| -> SocketAddr {
            ready["fields"][what]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {what} address in {ready}"))
        };
        Serve {
            api: addr("api"),
            http: addr("http"),
            child,
            log,
            lines,
        }
    }

    fn stop(mut self) -> String {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(l) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.lines.push(l);
        }
        let status = self.child.wait().expect("wait");
        let log = self.lines.join("\n");
        assert!(status.success(), "serve exited with {status}:\n{log}");
        log
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A device: its key, CSR and (once issued) certificate, talking HTTPS like the agent would.
struct Device {
    mac: String,
    key_pem: String,
    csr_pem: String,
    cert_pem: Option<String>,
    id: i64,
}

impl Device {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        Device {
            mac: "02:00:00:0a:0b:0c".into(),
            key_pem: key.serialize_pem(),
            csr_pem,
            cert_pem: None,
            id: 0,
        }
    }
}

struct Net {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    ca_pem: String,
}

impl Net {
    fn client(&self, d: Option<&Device>) -> ApiClient {
        let identity = d.and_then(|d| d.cert_pem.as_deref().map(|c| (c, d.key_pem.as_str())));
        ApiClient::new(self.addr, "127.0.0.1", &self.ca_pem, identity).expect("client")
    }

    fn enroll(&self, d: &mut Device) -> HttpResponse {
        let body = json!({"csr": d.csr_pem, "mac": d.mac});
        let r = self
            .rt
            .block_on(self.client(None).post_json("/api/v1/enroll", &body))
            .expect("enroll request");
        if let Ok(v) = r.json() {
            if let Some(id) = v["device_id"].as_i64() {
                d.id = id;
            }
            if let Some(c) = v["certificate"].as_str() {
                d.cert_pem = Some(c.to_owned());
            }
        }
        r
    }

    fn get(&self, d: &Device, path: &str) -> HttpResponse {
        self.rt
            .block_on(self.client(Some(d)).get(path))
            .expect("device GET")
    }

    fn post(&self, d: &Device, path: &str, body: &Value) -> HttpResponse {
        self.rt
            .block_on(self.client(Some(d)).post_json(path, body))
            .expect("device POST")
    }
}

fn body(r: &HttpResponse) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

#[test]
fn operator_cli_drives_enrollment_rollout_and_revocation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let s = |name: &str| -> String { p(name).display().to_string() };
    fs::create_dir_all(p("staging")).expect("mkdir");

    // Keys, root, a signed image whose artifact is in the server's blob store.
    ok(&["keys", "generate", "--out", &s("signer")]);
    ok(&[
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
    ok(&[
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
        &s("data/blobs"),
        "--out",
        &s("staging/demo.json"),
        "--quiet",
    ]);

    // The CA: created once, never overwritten.
    let ca = json_of(&ok(&["ca", "init", "--dir", &s("ca"), "--json"]));
    let fp = ca["fingerprint"].as_str().expect("fingerprint");
    assert!(fp.starts_with("sha256:") && fp.len() == 7 + 64, "{fp}");
    let again = tugboot(&["ca", "init", "--dir", &s("ca")], &[]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ca init"), "{err}");

    fs::write(
        p("serve.toml"),
        r#"
data_dir = "data"
trust_root = "root.json"

[network]
address = "127.0.0.1"

[http]
listen = "127.0.0.1:0"

[api]
listen = "127.0.0.1:0"
ca_dir = "ca"
"#,
    )
    .expect("config");
    let check = json_of(&ok(&[
        "check-config",
        "--json",
        "--config",
        &s("serve.toml"),
    ]));
    assert_eq!(check["api"]["ca_dir"], s("ca"));
    assert_eq!(
        check["api"]["operator_token_file"],
        s("data/api/operator-token")
    );

    let serve = Serve::start(&p("serve.toml"));
    // The token was created by the first start, private to its owner.
    let token_file = s("data/api/operator-token");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = fs::metadata(&token_file)
            .expect("token")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let url = format!("https://{}", serve.api);
    let ca_pem = s("ca/ca.pem");
    let env = [
        ("TUGBOOT_SERVER", url.as_str()),
        ("TUGBOOT_TOKEN_FILE", token_file.as_str()),
        ("TUGBOOT_CA_CERT", ca_pem.as_str()),
    ];
    let net = Net {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        addr: serve.api,
        ca_pem: fs::read_to_string(p("ca/ca.pem")).expect("ca.pem"),
    };

    // Publish through the CLI (flags rather than the environment here); again is idempotent.
    let published = json_of(&ok(&[
        "images",
        "publish",
        &s("staging/demo.json"),
        "--json",
        "--server",
        &url,
        "--token-file",
        &token_file,
        "--ca-cert",
        &ca_pem,
    ]));
    assert_eq!(published["name"], "demo");
    assert_eq!(published["version"], 2);
    ok_env(&["images", "publish", &s("staging/demo.json")], &env);
    let listed = ok_env(&["images", "list", "--name", "demo"], &env);
    assert!(
        listed
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("demo ")),
        "{listed}"
    );

    // A device asks to enroll without a token: pending until the operator approves.
    let mut dev = Device::new();
    let r = net.enroll(&mut dev);
    assert_eq!(r.status, 202, "{}", body(&r));
    assert!(dev.id > 0);
    let machines = json_of(&ok_env(&["machines", "list", "--json"], &env));
    let m = machines
        .as_array()
        .expect("list")
        .iter()
        .find(|m| m["mac"] == dev.mac.as_str())
        .unwrap_or_else(|| panic!("device not listed: {machines}"));
    assert_eq!(m["id"], dev.id);
    assert_ne!(m["state"], "approved");
    let table = ok_env(&["machines", "list"], &env);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&dev.mac), "{table}");

    let id = dev.id.to_string();
    let approved = json_of(&ok_env(&["machines", "approve", &id, "--json"], &env));
    assert_eq!(approved["state"], "approved");
    let r = net.enroll(&mut dev);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(dev.cert_pem.is_some());

    // Roll the image out to the group the device is in (every approved machine).
    let created = json_of(&ok_env(
        &[
            "rollout",
            "create",
            "--image",
            "demo",
            "--version",
            "2",
            "--selector",
            "*",
            "--stage",
            "100",
            "--max-failure-permille",
            "0",
            "--json",
        ],
        &env,
    ));
    let rollout = created["id"].as_i64().expect("rollout id").to_string();
    let status = json_of(&ok_env(&["rollout", "status", &rollout, "--json"], &env));
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["devices"]["pending"], 1, "{status}");
    assert_eq!(status["devices"]["committed"], 0, "{status}");

    // The device gets its assignment and the exact published manifest over mTLS.
    let r = net.get(&dev, "/api/v1/device/assignment");
    assert_eq!(r.status, 200, "{}", body(&r));
    let manifest_url = r.json().expect("json")["manifest_url"]
        .as_str()
        .expect("manifest_url")
        .to_owned();
    let r = net.get(&dev, &manifest_url);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, fs::read(p("staging/demo.json")).expect("manifest"));

    // It installs, reboots, commits, reports: the rollout completes.
    let report = json!({"id": "r1", "seq": 1, "boot_id": "b1", "agent": "0.1.0",
        "outcome": {"outcome": "committed", "name": "demo", "version": 2, "slot": "B"}});
    let r = net.post(&dev, "/api/v1/device/reports", &report);
    assert_eq!(r.status, 200, "{}", body(&r));
    let status = json_of(&ok_env(&["rollout", "status", &rollout, "--json"], &env));
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["devices"]["committed"], 1, "{status}");
    let table = ok_env(&["rollout", "status"], &env);
    let row = table.lines().nth(1).unwrap_or_default();
    assert!(
        row.contains("demo v2") && row.contains("completed") && row.contains("1/0/0/0/1"),
        "{table}"
    );
    let shown = ok_env(&["machines", "show", &id], &env);
    assert!(shown.contains("committed demo v2"), "{shown}");

    // Revoked: the same certificate is refused on its next request.
    let revoked = json_of(&ok_env(&["machines", "revoke", &id, "--json"], &env));
    assert_eq!(revoked["machine"]["state"], "revoked");
    assert_eq!(
        revoked["revoked_certificates"].as_array().map(Vec::len),
        Some(1)
    );
    let r = net.get(&dev, "/api/v1/device/assignment");
    assert_eq!(r.status, 403, "{}", body(&r));

    // A wrong token: non-zero exit, one line naming the HTTP status and the server's reason.
    fs::write(p("wrong.token"), "not-the-operator-token-at-all\n").expect("write");
    let wrong = s("wrong.token");
    let out = tugboot(
        &["machines", "list", "--token-file", &wrong],
        &[env[0], env[2]],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: GET /api/v1/admin/machines: HTTP 401")
            && err.contains("operator bearer token required"),
        "{err}"
    );
    // A CA that is not the server's: the TLS handshake fails, also on one line.
    ok(&["ca", "init", "--dir", &s("other-ca")]);
    let other = s("other-ca/ca.pem");
    let out = tugboot(
        &["rollout", "status", "--ca-cert", &other],
        &[env[0], env[1]],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");
    // Nothing to connect to is a clear error too, before any network traffic.
    let out = tugboot(&["machines", "list"], &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TUGBOOT_SERVER"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = serve.stop();
    assert!(log.contains("machine revoked by operator"), "{log}");
    assert!(log.contains("tugboot serve: stopped"), "{log}");
}

/// One HTTP/1.1 GET on loopback; returns the status and the body.
fn http_get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    (status, raw[split + 4..].to_vec())
}

/// One catalogue, one registry: an image pushed and published only through the operator API is
/// what netboot serves and what a rollout installs; a machine labelled through the CLI joins a
/// label netboot group and a label rollout; a forged `/ipxe` query changes neither its board
/// nor its serial, and cannot put it into a rollout.
#[test]
fn pushed_image_and_cli_labels_drive_netboot_and_rollouts_but_forged_queries_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |name: &str| -> PathBuf { dir.path().join(name) };
    let s = |name: &str| -> String { p(name).display().to_string() };
    fs::create_dir_all(p("staging")).expect("mkdir");
    ok(&["keys", "generate", "--out", &s("signer")]);
    ok(&[
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
    // Built into a local blob store the server does not share: it must be pushed.
    let kernel: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(p("staging/kernel"), &kernel).expect("kernel");
    ok(&[
        "image",
        "build",
        "--kernel",
        &s("staging/kernel"),
        "--cmdline",
        "quiet",
        "--name",
        "demo",
        "--version",
        "3",
        "--board",
        "x86_64-uefi",
        "--sign",
        &s("signer.key"),
        "--store",
        &s("local-blobs"),
        "--out",
        &s("staging/demo.json"),
        "--quiet",
    ]);
    ok(&["ca", "init", "--dir", &s("ca")]);
    fs::write(
        p("profiles.toml"),
        r#"
default_profile = "plain"
[profiles.plain]
image = "demo"
cmdline = "role=plain"
[profiles.lab]
image = "demo"
cmdline = "role=lab"
[[groups]]
name = "lab"
profile = "lab"
selector = "site=lab"
"#,
    )
    .expect("profiles");
    fs::write(
        p("serve.toml"),
        r#"
data_dir = "data"
trust_root = "root.json"
profiles = "profiles.toml"
[network]
address = "127.0.0.1"
[http]
listen = "127.0.0.1:0"
[api]
listen = "127.0.0.1:0"
ca_dir = "ca"
"#,
    )
    .expect("config");
    let serve = Serve::start(&p("serve.toml"));
    let http = serve.http;
    let url = format!("https://{}", serve.api);
    let token_file = s("data/api/operator-token");
    let ca_pem = s("ca/ca.pem");
    let env = [
        ("TUGBOOT_SERVER", url.as_str()),
        ("TUGBOOT_TOKEN_FILE", token_file.as_str()),
        ("TUGBOOT_CA_CERT", ca_pem.as_str()),
    ];
    let net = Net {
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        addr: serve.api,
        ca_pem: fs::read_to_string(p("ca/ca.pem")).expect("ca.pem"),
    };

    // Nothing published yet: the machine is told why.
    let (st, script) = http_get(http, "/ipxe?mac=02-00-00-0a-0b-0c&arch=x86_64&platform=efi");
    assert_eq!(st, 200);
    assert!(String::from_utf8_lossy(&script).contains("is not published"));

    // Push, interrupted after the first chunk: the first PATCH by hand, then `images push`
    // continues from where the server stands.
    let kd = tugboot_firmware::Sha256Digest::of(&kernel).to_hex();
    let auth = format!(
        "Bearer {}",
        fs::read_to_string(&token_file).expect("token").trim()
    );
    let first = net
        .rt
        .block_on(net.client(None).request(
            "PATCH",
            &format!("/api/v1/admin/blobs/{kd}?size={}&offset=0", kernel.len()),
            &[("Authorization", &auth)],
            &kernel[..1_000_000],
        ))
        .expect("first chunk");
    assert_eq!(first.status, 200, "{}", body(&first));
    let pushed = json_of(&ok_env(
        &[
            "images",
            "push",
            &s("staging/demo.json"),
            "--store",
            &s("local-blobs"),
            "--json",
        ],
        &env,
    ));
    assert_eq!(pushed["name"], "demo");
    assert_eq!(
        pushed["uploaded_bytes"],
        u64::try_from(kernel.len() - 1_000_000).expect("size") + 5,
        "resumed, not restarted (+ the cmdline artifact `quiet`): {pushed}"
    );
    // Pushing again uploads nothing.
    let again = json_of(&ok_env(
        &[
            "images",
            "push",
            &s("staging/demo.json"),
            "--store",
            &s("local-blobs"),
            "--json",
        ],
        &env,
    ));
    assert_eq!(again["uploaded_bytes"], 0, "{again}");
    let listed = ok_env(&["images", "list"], &env);
    assert!(
        listed.contains("demo") && listed.contains("published"),
        "{listed}"
    );
    let shown = ok_env(&["images", "show", "demo", "3"], &env);
    assert!(
        shown.contains("x86_64-uefi") && shown.contains(&kd),
        "{shown}"
    );

    // Netboot serves the pushed image: the script and the artifact, byte for byte.
    let (_, script) = http_get(http, "/ipxe?mac=02-00-00-0a-0b-0c&arch=x86_64&platform=efi");
    let script = String::from_utf8_lossy(&script).into_owned();
    assert!(
        script.contains(&format!("/artifacts/sha256/{kd}")),
        "{script}"
    );
    assert!(script.contains("role=plain"), "{script}");
    let (st, bytes) = http_get(http, &format!("/artifacts/sha256/{kd}"));
    assert_eq!(st, 200);
    assert!(bytes == kernel, "artifact differs");

    // Two devices enroll with tokens; the operator labels one of them through the CLI.
    let tokens = json_of(&ok_env(
        &["enroll", "token", "create", "--count", "2", "--json"],
        &env,
    ));
    let mut lab = Device::new();
    let mut other = Device::new();
    other.mac = "02:00:00:0d:0e:0f".into();
    for (d, t) in [(&mut lab, 0), (&mut other, 1)] {
        let body = json!({"csr": d.csr_pem, "mac": d.mac, "token": tokens["tokens"][t]});
        let r = net
            .rt
            .block_on(net.client(None).post_json("/api/v1/enroll", &body))
            .expect("enroll");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json().expect("json");
        d.id = v["device_id"].as_i64().expect("id");
        d.cert_pem = v["certificate"].as_str().map(str::to_owned);
    }
    // A token bound to one MAC with a short life: another MAC is refused, the list shows it.
    let bound = json_of(&ok_env(
        &[
            "enroll",
            "token",
            "create",
            "--mac",
            "02-00-00-aa-bb-cc",
            "--expires",
            "1h",
            "--json",
        ],
        &env,
    ));
    let mut stranger = Device::new();
    stranger.mac = "02:00:00:aa:bb:cd".into();
    let req = json!({"csr": stranger.csr_pem, "mac": stranger.mac, "token": bound["tokens"][0]});
    let r = net
        .rt
        .block_on(net.client(None).post_json("/api/v1/enroll", &req))
        .expect("enroll");
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let listed = ok_env(&["enroll", "token", "list"], &env);
    assert!(
        listed.contains("02:00:00:aa:bb:cc") && listed.contains("unused"),
        "{listed}"
    );
    assert_eq!(
        listed.matches("used").count() - listed.matches("unused").count(),
        2,
        "{listed}"
    );
    assert!(!listed.contains(bound["tokens"][0].as_str().unwrap()));
    let labelled = json_of(&ok_env(
        &["machines", "label", &lab.mac, "site=lab", "--json"],
        &env,
    ));
    assert_eq!(labelled["labels"]["site"], "lab", "{labelled}");
    assert_eq!(
        labelled["facts"]["label.site"]["source"],
        "declared:operator"
    );

    // The label netboot group takes it at once.
    let (_, script) = http_get(http, "/ipxe?mac=02-00-00-0a-0b-0c&arch=x86_64&platform=efi");
    assert!(String::from_utf8_lossy(&script).contains("role=lab"));
    let (_, script) = http_get(http, "/ipxe?mac=02-00-00-0d-0e-0f&arch=x86_64&platform=efi");
    assert!(String::from_utf8_lossy(&script).contains("role=plain"));

    // A forged query for the other device: a board and serial that would match a rollout.
    let (st, _) = http_get(
        http,
        "/ipxe?mac=02-00-00-0d-0e-0f&board=raspberrypi-4&serial=EVIL&hostname=evil",
    );
    assert_eq!(st, 200);

    // The label rollout admits the labelled device only; a board rollout nobody.
    let create = |selector: &str| {
        json_of(&ok_env(
            &[
                "rollout",
                "create",
                "--image",
                "demo",
                "--version",
                "3",
                "--selector",
                selector,
                "--stage",
                "100",
                "--max-failure-permille",
                "0",
                "--json",
            ],
            &env,
        ))
    };
    let by_label = create("site=lab");
    assert_eq!(by_label["devices"]["group"], 1, "{by_label}");
    let r = net.get(&lab, "/api/v1/device/assignment");
    assert_eq!(r.status, 200, "{}", body(&r));
    let assignment = r.json().expect("json");
    assert!(
        assignment["artifacts"]
            .as_object()
            .is_some_and(|a| a.contains_key(&kd)),
        "the assignment names the pushed artifact: {assignment}"
    );
    let r = net.get(&lab, &format!("/api/v1/device/artifacts/{kd}"));
    assert_eq!(r.status, 200);
    assert!(r.body == kernel);
    assert_eq!(net.get(&other, "/api/v1/device/assignment").status, 204);
    let by_board = create("board=raspberrypi-4");
    assert_eq!(
        by_board["devices"]["group"], 0,
        "a forged board joins no rollout: {by_board}"
    );

    // What the registry says about the other device: the forged claims are observed facts,
    // its identity is untouched. (Observations reach the store in batches: wait for them.)
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown = json_of(&ok_env(&["machines", "show", &other.mac, "--json"], &env));
        if shown["machine"]["facts"]["serial"].is_object() {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "observations never recorded: {shown}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let m = &shown["machine"];
    assert_eq!(m["serial"], Value::Null, "{m}");
    assert_eq!(m["facts"]["board"]["source"], "observed:http", "{m}");
    assert_eq!(m["facts"]["serial"]["source"], "observed:http", "{m}");
    // The operator declares the board: a forged query cannot change it back.
    ok_env(
        &["machines", "assign", &other.mac, "--board", "x86_64-uefi"],
        &env,
    );
    http_get(http, "/ipxe?mac=02-00-00-0d-0e-0f&board=raspberrypi-4");
    let shown = json_of(&ok_env(&["machines", "show", &other.mac, "--json"], &env));
    assert_eq!(shown["machine"]["board"], "x86_64-uefi");
    assert_eq!(
        shown["machine"]["facts"]["board"]["source"],
        "declared:operator"
    );

    // Yanked: no netboot, no artifact, no assignment.
    ok_env(&["images", "yank", "demo", "3"], &env);
    let (_, script) = http_get(http, "/ipxe?mac=02-00-00-0a-0b-0c");
    assert!(String::from_utf8_lossy(&script).contains("is not published"));
    assert_eq!(http_get(http, &format!("/artifacts/sha256/{kd}")).0, 404);
    assert_eq!(net.get(&lab, "/api/v1/device/assignment").status, 204);
    assert_eq!(
        net.get(&lab, &format!("/api/v1/device/artifacts/{kd}"))
            .status,
        404
    );
    let log = serve.stop();
    assert!(log.contains("tugboot serve: stopped"), "{log}");
}
