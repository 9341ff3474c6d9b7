//! The `tugboot` CLI end to end: the real binary, real files, every attack refused with its own
//! error code and a one-line reason.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        fs::write(env.path("vmlinuz"), pseudo_random(3 << 20, 1)).unwrap();
        fs::write(env.path("initrd.img"), pseudo_random((5 << 20) + 17, 2)).unwrap();
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_tugboot"))
            .args(args)
            .current_dir(self.dir.path())
            .env("TUGBOOT_STORE", self.path("store"))
            .output()
            .unwrap()
    }

    /// Runs with `--json`, expects success, returns the document.
    fn ok(&self, args: &[&str]) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(
            out.status.success(),
            "tugboot {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Runs with `--json`, expects failure, checks the one-line reason, returns the error code.
    fn fails(&self, args: &[&str]) -> String {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.run(&all);
        assert!(!out.status.success(), "tugboot {args:?} should have failed");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.lines().count(),
            1,
            "reason must be one line: {stderr}"
        );
        assert!(stderr.starts_with("error: "), "{stderr}");
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["ok"], false);
        doc["error"]["code"].as_str().unwrap().to_owned()
    }

    fn key(&self, name: &str) {
        self.ok(&["keys", "generate", "--out", &format!("keys/{name}")]);
    }

    fn build(&self, out: &str, version: &str, sign: &[&str], extra: &[&str]) -> Value {
        let mut args = vec![
            "image",
            "build",
            "--name",
            "demo",
            "--version",
            version,
            "--board",
            "x86_64-uefi",
            "--kernel",
            "vmlinuz",
            "--initrd",
            "initrd.img",
            "--cmdline",
            "console=ttyS0",
            "--out",
            out,
        ];
        let sign_args: Vec<String> = sign.iter().map(|k| format!("keys/{k}.key")).collect();
        for k in &sign_args {
            args.extend(["--sign", k.as_str()]);
        }
        args.extend_from_slice(extra);
        self.ok(&args)
    }
}

/// Deterministic bytes that do not compress or repeat (xorshift).
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[3]
        })
        .collect()
}

/// Threshold-2 root of keys a and b, signed by both.
fn two_key_root(env: &Env) {
    env.key("a");
    env.key("b");
    env.ok(&[
        "keys",
        "root",
        "init",
        "--key",
        "keys/a.pub",
        "--key",
        "keys/b.pub",
        "--threshold",
        "2",
        "--sign",
        "keys/a.key",
        "--sign",
        "keys/b.key",
        "--out",
        "root.json",
    ]);
}

fn blob_path(env: &Env, manifest: &Value, role: &str) -> PathBuf {
    let artifacts = manifest["manifest"]["artifacts"].as_array().unwrap();
    let a = artifacts.iter().find(|a| a["role"] == role).unwrap();
    env.path("store/sha256").join(a["sha256"].as_str().unwrap())
}

fn overwrite(path: &Path, bytes: &[u8]) {
    let mut perm = fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(path, perm).unwrap();
    fs::write(path, bytes).unwrap();
}

#[test]
fn round_trip_build_sign_verify() {
    let env = Env::new();
    two_key_root(&env);
    let built = env.build("m.json", "7", &["a"], &["--label", "channel=stable"]);
    assert_eq!(built["manifest"]["version"], 7);
    assert_eq!(built["manifest"]["artifacts"].as_array().unwrap().len(), 3);

    assert_eq!(
        env.fails(&["image", "verify", "m.json", "--root", "root.json"]),
        "below-threshold"
    );
    env.ok(&["image", "sign", "m.json", "--key", "keys/b.key"]);
    let v = env.ok(&[
        "image",
        "verify",
        "m.json",
        "--root",
        "root.json",
        "--board",
        "x86_64-uefi",
    ]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["version"], 7);
    assert_eq!(v["artifacts"].as_array().unwrap().len(), 3);
    assert!(
        v["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["verified"] == true)
    );

    let inspected = env.ok(&["image", "inspect", "m.json"]);
    assert_eq!(inspected["verified"], false);
    assert_eq!(inspected["manifest"]["labels"]["channel"], "stable");
    assert_eq!(inspected["signatures"].as_array().unwrap().len(), 2);

    // The stored kernel is byte-identical to the input.
    let kernel = blob_path(&env, &built, "kernel");
    assert_eq!(
        fs::read(kernel).unwrap(),
        fs::read(env.path("vmlinuz")).unwrap()
    );
}

#[test]
fn every_manifest_attack_has_its_own_error() {
    let env = Env::new();
    two_key_root(&env);
    env.key("outsider");
    env.build("good.json", "5", &["a", "b"], &["--min-version", "3"]);
    let verify = |file: &str, extra: &[&str]| {
        let mut args = vec![
            "image",
            "verify",
            file,
            "--root",
            "root.json",
            "--skip-artifacts",
        ];
        args.extend_from_slice(extra);
        env.fails(&args)
    };
    env.ok(&[
        "image",
        "verify",
        "good.json",
        "--root",
        "root.json",
        "--current-version",
        "3",
    ]);

    // Tampered signed content: the version digit changes, the signatures stay.
    let good = fs::read_to_string(env.path("good.json")).unwrap();
    assert!(good.contains(r#""version":5"#));
    fs::write(
        env.path("tampered.json"),
        good.replace(r#""version":5"#, r#""version":6"#),
    )
    .unwrap();
    assert_eq!(verify("tampered.json", &[]), "bad-signature");

    // Signed only by a key the root does not know.
    env.build("unknown.json", "5", &["outsider"], &[]);
    assert_eq!(verify("unknown.json", &[]), "unknown-key");

    // One of two signatures.
    env.build("half.json", "5", &["a"], &[]);
    assert_eq!(verify("half.json", &[]), "below-threshold");

    // Expired: verify as of a time after the expiry.
    assert_eq!(
        verify("good.json", &["--now", "2200-01-01T00:00:00Z"]),
        "expired"
    );
    // Rollback below the device's floor; minimum version not met; wrong board.
    assert_eq!(verify("good.json", &["--floor", "6"]), "rollback");
    assert_eq!(
        verify("good.json", &["--current-version", "2"]),
        "minimum-version"
    );
    assert_eq!(
        verify("good.json", &["--board", "raspberrypi-4"]),
        "wrong-board"
    );

    // Malformed and oversize files.
    fs::write(env.path("garbage.json"), b"{\"signed\": 1").unwrap();
    assert_eq!(verify("garbage.json", &[]), "malformed");
    fs::write(env.path("huge.json"), vec![b' '; (1 << 20) + 1]).unwrap();
    assert_eq!(verify("huge.json", &[]), "oversize");
}

#[test]
fn tampered_and_swapped_artifacts_are_refused() {
    let env = Env::new();
    env.key("a");
    env.ok(&[
        "keys",
        "root",
        "init",
        "--key",
        "keys/a.pub",
        "--sign",
        "keys/a.key",
        "--out",
        "root.json",
    ]);
    let built = env.build("m.json", "1", &["a"], &[]);
    let initrd = blob_path(&env, &built, "initrd");
    let original = fs::read(&initrd).unwrap();

    // A flipped byte anywhere: start, middle, last byte.
    for pos in [0, original.len() / 2, original.len() - 1] {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        overwrite(&initrd, &bad);
        let code = env.fails(&["image", "verify", "m.json", "--root", "root.json"]);
        assert_eq!(code, "artifact-digest-mismatch", "flip at {pos}");
    }
    // Endless data: one byte more than signed.
    let mut longer = original.clone();
    longer.push(0);
    overwrite(&initrd, &longer);
    assert_eq!(
        env.fails(&["image", "verify", "m.json", "--root", "root.json"]),
        "artifact-too-long"
    );
    // Truncated.
    overwrite(&initrd, &original[..original.len() - 1]);
    assert_eq!(
        env.fails(&["image", "verify", "m.json", "--root", "root.json"]),
        "artifact-too-short"
    );

    // An artifact swapped in from another (validly signed) image.
    fs::write(
        env.path("other-initrd.img"),
        pseudo_random((5 << 20) + 17, 99),
    )
    .unwrap();
    let other = env.ok(&[
        "image",
        "build",
        "--name",
        "other",
        "--version",
        "1",
        "--board",
        "x86_64-uefi",
        "--initrd",
        "other-initrd.img",
        "--sign",
        "keys/a.key",
        "--out",
        "other.json",
    ]);
    let other_blob = fs::read(blob_path(&env, &other, "initrd")).unwrap();
    overwrite(&initrd, &other_blob);
    assert_eq!(
        env.fails(&["image", "verify", "m.json", "--root", "root.json"]),
        "artifact-digest-mismatch"
    );
    overwrite(&initrd, &original);
    env.ok(&["image", "verify", "m.json", "--root", "root.json"]);
}

#[test]
fn root_rotation_and_revocation() {
    let env = Env::new();
    two_key_root(&env);
    env.key("c");
    let rotate = |out: &str, signers: &[&str]| {
        let (a, c) = (key_id(&env, "a"), "keys/c.pub".to_owned());
        let mut args: Vec<String> = [
            "keys",
            "root",
            "rotate",
            "--from",
            "root.json",
            "--add-key",
            &c,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend([
            "--revoke".into(),
            a.clone(),
            "--remove-key".into(),
            a,
            "--out".into(),
            out.into(),
        ]);
        for s in signers {
            args.extend(["--sign".into(), format!("keys/{s}.key")]);
        }
        env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    };
    // Old root's threshold missing (only a signed).
    rotate("root2-old-missing.json", &["a"]);
    let code = env.fails(&[
        "keys",
        "root",
        "verify",
        "root.json",
        "root2-old-missing.json",
    ]);
    assert_eq!(code, "below-threshold");
    // New root's threshold missing: a and b satisfy root 1, but a is revoked in root 2.
    rotate("root2-new-missing.json", &["a", "b"]);
    let code = env.fails(&[
        "keys",
        "root",
        "verify",
        "root.json",
        "root2-new-missing.json",
    ]);
    assert_eq!(code, "revoked-key");

    // Properly signed: old threshold (a, b) and new threshold (b, c).
    rotate("root2.json", &["a", "b", "c"]);
    let v = env.ok(&["keys", "root", "verify", "root.json", "root2.json"]);
    assert_eq!(v["version"], 2);

    // Under root 2, a's signature no longer counts: a + b is below the threshold, b + c passes.
    env.build("ab.json", "1", &["a", "b"], &[]);
    env.build("bc.json", "1", &["b", "c"], &[]);
    let verify = |m: &str| {
        vec![
            "image",
            "verify",
            m,
            "--root",
            "root.json",
            "--root",
            "root2.json",
            "--skip-artifacts",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    let ab: Vec<String> = verify("ab.json");
    let code = env.fails(&ab.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(code == "revoked-key" || code == "below-threshold", "{code}");
    let bc: Vec<String> = verify("bc.json");
    env.ok(&bc.iter().map(String::as_str).collect::<Vec<_>>());

    // Skipping a version is refused too.
    assert_eq!(
        env.fails(&["keys", "root", "verify", "root2.json", "root.json"]),
        "root-version"
    );
}

fn key_id(env: &Env, name: &str) -> String {
    env.ok(&["keys", "show", &format!("keys/{name}.pub")])["keyid"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn linuxkit_import_and_boards() {
    let env = Env::new();
    env.key("a");
    fs::copy(env.path("vmlinuz"), env.path("sshd-kernel")).unwrap();
    fs::copy(env.path("initrd.img"), env.path("sshd-initrd.img")).unwrap();
    fs::write(env.path("sshd-cmdline"), "console=ttyS0 console=tty0").unwrap();
    let built = env.ok(&[
        "image",
        "import-linuxkit",
        "sshd",
        "--version",
        "3",
        "--board",
        "x86_64-bios",
        "--sign",
        "keys/a.key",
        "--out",
        "sshd.json",
    ]);
    assert_eq!(built["manifest"]["name"], "sshd");
    let roles: Vec<&str> = built["manifest"]["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["kernel", "initrd", "cmdline"]);

    // Missing linuxkit output and an unknown board are one-line failures.
    assert_eq!(
        env.fails(&[
            "image",
            "import-linuxkit",
            "nope",
            "--version",
            "1",
            "--board",
            "x86_64-bios",
            "--out",
            "n.json"
        ]),
        "error"
    );
    assert_eq!(
        env.fails(&[
            "image",
            "build",
            "--name",
            "x",
            "--version",
            "1",
            "--board",
            "toaster",
            "--kernel",
            "vmlinuz",
            "--out",
            "x.json"
        ]),
        "error"
    );

    let boards = env.ok(&["boards", "list"]);
    let names: Vec<&str> = boards
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    for expected in [
        "x86_64-bios",
        "x86_64-uefi",
        "arm64-uefi",
        "qemu-arm64-uboot",
        "raspberrypi-3",
        "raspberrypi-4",
        "raspberrypi-5",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[test]
fn profiles_file_is_edited_and_queried_from_the_cli() {
    let env = Env::new();
    let file = "profiles.toml";
    fs::write(
        env.path(file),
        "# the lab's machines\ndefault_profile = \"netboot\"\n\n[profiles.netboot]\nimage = \"demo\"\n",
    )
    .unwrap();
    let p = |args: &[&str]| {
        let mut all = vec!["profiles", "--file", file];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let ok = |args: Vec<String>| env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let fails = |args: Vec<String>| env.fails(&args.iter().map(String::as_str).collect::<Vec<_>>());

    ok(p(&[
        "add-profile",
        "rescue",
        "--image",
        "rescue",
        "--version",
        "3",
        "--cmdline",
        "single",
    ]));
    ok(p(&["add-profile", "disk", "--local"]));
    ok(p(&[
        "add-machine",
        "--name",
        "rack1-node7",
        "--mac",
        "52:54:00:12:34:07",
        "--board",
        "x86_64-uefi",
        "--label",
        "rack=r1",
        "--label",
        "role=db\"primary\"",
    ]));
    ok(p(&[
        "add-group",
        "rack1",
        "--profile",
        "rescue",
        "--label",
        "rack=r1",
    ]));

    // The operator's comment survives; the file still loads as serve loads it.
    let text = fs::read_to_string(env.path(file)).unwrap();
    assert!(text.starts_with("# the lab's machines\n"), "{text}");
    let listed = ok(p(&["list"]));
    assert_eq!(listed["machines"][0]["name"], "rack1-node7");
    assert_eq!(listed["machines"][0]["labels"]["role"], "db\"primary\"");
    assert_eq!(listed["groups"][0]["name"], "rack1");

    // The group matches through the machine's labels; an unknown MAC gets the default.
    let r = ok(p(&["resolve", "--mac", "52-54-00-12-34-07"]));
    assert_eq!(r["profile"], "rescue");
    assert_eq!(r["via"], "group rack1");
    assert_eq!(r["board"], "x86_64-uefi");
    let r = ok(p(&["resolve", "--mac", "52:54:00:99:99:99"]));
    assert_eq!(r["profile"], "netboot");
    assert_eq!(r["via"], "default_profile");

    // Refusals leave the file as it was.
    let before = fs::read(env.path(file)).unwrap();
    fails(p(&["add-machine", "--mac", "52:54:00:12:34:07"]));
    fails(p(&[
        "add-machine",
        "--mac",
        "52:54:00:12:34:08",
        "--board",
        "toaster",
    ]));
    fails(p(&[
        "add-machine",
        "--mac",
        "52:54:00:12:34:09",
        "--profile",
        "missing",
    ]));
    fails(p(&["add-machine", "--mac", "not-a-mac"]));
    fails(p(&[
        "add-group",
        "rack1",
        "--profile",
        "rescue",
        "--label",
        "rack=r2",
    ]));
    fails(p(&["add-profile", "netboot", "--image", "x"]));
    assert_eq!(fs::read(env.path(file)).unwrap(), before);
}

/// A root file system (directory, then the same tree as a tar) becomes one slot artifact: a
/// squashfs with `boot/vmlinuz` inside, identical bytes for the same tree whenever and however
/// it is built; a tree without a kernel is refused.
#[test]
fn rootfs_becomes_a_reproducible_squashfs_slot() {
    let env = Env::new();
    env.key("a");
    let tree = env.path("tree");
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::copy(env.path("vmlinuz"), tree.join("boot/vmlinuz")).unwrap();
    fs::write(tree.join("etc/os-release"), "ID=tugboot-test\n").unwrap();
    let slot_of = |built: &Value| -> (String, String) {
        let a = built["manifest"]["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["role"] == "slot")
            .unwrap_or_else(|| panic!("no slot artifact: {built}"));
        (
            a["name"].as_str().unwrap().to_owned(),
            a["sha256"].as_str().unwrap().to_owned(),
        )
    };
    let build = |out: &str, rootfs: &str| {
        env.ok(&[
            "image",
            "build",
            "--name",
            "os",
            "--version",
            "1",
            "--board",
            "x86_64-uefi",
            "--rootfs",
            rootfs,
            "--sign",
            "keys/a.key",
            "--out",
            out,
        ])
    };
    let first = build("os1.json", "tree");
    let (name, digest) = slot_of(&first);
    assert_eq!(name, "rootfs.squashfs");
    // Later, with every file touched: the same bytes.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    fs::write(tree.join("etc/os-release"), "ID=tugboot-test\n").unwrap();
    assert_eq!(slot_of(&build("os2.json", "tree")).1, digest);
    // The same tree as a tar.
    let tar = Command::new("tar")
        .args(["-cf", "tree.tar", "-C", "tree", "."])
        .current_dir(env.dir.path())
        .status()
        .unwrap();
    assert!(tar.success());
    assert_eq!(slot_of(&build("os3.json", "tree.tar")).1, digest);
    // squashfs-tools read it back: the kernel is inside, byte for byte.
    let blob = env.path("store/sha256").join(&digest);
    let listing = Command::new("unsquashfs")
        .arg("-l")
        .arg(&blob)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("squashfs-root/boot/vmlinuz"), "{listing}");
    let out = env.path("unpacked");
    let st = Command::new("unsquashfs")
        .arg("-d")
        .arg(&out)
        .arg(&blob)
        .output()
        .unwrap();
    assert!(st.status.success());
    assert!(fs::read(out.join("boot/vmlinuz")).unwrap() == fs::read(env.path("vmlinuz")).unwrap());

    fs::remove_file(tree.join("boot/vmlinuz")).unwrap();
    let out = env.run(&[
        "image",
        "build",
        "--name",
        "os",
        "--version",
        "2",
        "--board",
        "x86_64-uefi",
        "--rootfs",
        "tree",
        "--sign",
        "keys/a.key",
        "--out",
        "os4.json",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no boot/vmlinuz"), "{err}");
}

/// `tugboot ... | head`: the reader closes the pipe early; the command leaves quietly with
/// 141 (as if killed by SIGPIPE), never a panic.
#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    for args in [
        &["boards", "list"][..],
        &["boards", "show", "raspberrypi-4", "--json"],
        &["completions", "bash"],
    ] {
        // A pipe whose reader is gone before the command starts: its first write fails.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = Command::new(env!("CARGO_BIN_EXE_tugboot"))
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {stderr}");
    }
}

/// `image` (local files) and `images` (a server's catalogue) are told apart in the error.
#[test]
fn image_and_images_slips_name_the_right_command() {
    let env = Env::new();
    let out = env.run(&["image", "push", "x.json"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `tugboot images push`?"), "{err}");
    let out = env.run(&["images", "build", "--name", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did you mean `tugboot image build`?"), "{err}");
}
