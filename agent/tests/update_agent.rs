//! The agent's update path driven through simulated reboots: a simulated machine (slots, state
//! file and boot environment on one [`FaultyIo`] file system) booted by the simulated U-Boot or
//! GRUB, with power cuts at every step.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use tugboot_agent::bootloader::{BootEnv, Slot, Vars};
use tugboot_agent::io::{FaultyIo, LossMode};
use tugboot_agent::slot::SlotPaths;
use tugboot_agent::update::{
    AbBootloader, Agent, AgentConfig, AgentError, AgentState, BootStatus, Booted, Grub, Image,
    Next, Outcome, PlainFileEnv, Uboot, UpdateError, sim,
};
use tugboot_firmware::{
    Artifact, Document, MAX_MANIFEST_BYTES, Manifest, Role, SecretKey, Sha256Digest, Signed,
    Timestamp, TrustRoot, TrustedRoot, VerifyError,
};

/// 2026-06-01T00:00:00Z.
const NOW: Timestamp = Timestamp::from_unix(1_780_272_000);
const CREATED: Timestamp = Timestamp::from_unix(1_767_225_600);
const EXPIRES: Timestamp = Timestamp::from_unix(1_798_761_600);
const ROOT_EXPIRES: Timestamp = Timestamp::from_unix(1_893_456_000);

const STATE: &str = "/data/tugboot/state.json";
const ENV: &str = "/boot/tugboot.env";
const SLOT_A: &str = "/dev/slotA";
const SLOT_B: &str = "/dev/slotB";
const CAPACITY: usize = 32 * 1024;
const BOARD: &str = "raspberrypi-4";

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn sign<T: Document>(value: T, signers: &[u8]) -> Vec<u8> {
    let mut signed = Signed::new(value).unwrap();
    for &n in signers {
        signed.sign(&key(n));
    }
    signed.to_bytes()
}

/// Keys 1, 2, 3; threshold 2. (Cached: ed25519 is slow in debug builds.)
fn root() -> TrustedRoot {
    static ROOT: OnceLock<TrustedRoot> = OnceLock::new();
    ROOT.get_or_init(make_root).clone()
}

fn make_root() -> TrustedRoot {
    let root = TrustRoot {
        version: 1,
        expires: ROOT_EXPIRES,
        threshold: 2,
        keys: vec![key(1).public(), key(2).public(), key(3).public()],
        revoked: vec![],
    };
    TrustedRoot::bootstrap(&sign(root, &[1, 2]), NOW).unwrap()
}

/// Pseudo-random bytes (xorshift64*); seeds differing only in bit 0 give the same bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_be_bytes()[0]
        })
        .collect()
}

fn manifest(version: u64, slot_content: &[u8]) -> Manifest {
    Manifest {
        name: "edge-gw".into(),
        version,
        boards: vec![BOARD.into()],
        artifacts: vec![Artifact {
            role: Role::Slot,
            name: "rootfs.img".into(),
            sha256: Sha256Digest::of(slot_content),
            size: slot_content.len() as u64,
        }],
        created: CREATED,
        expires: EXPIRES,
        min_version: None,
        labels: BTreeMap::new(),
    }
}

fn image_of(version: u64, content: &[u8]) -> Image {
    Image {
        name: "edge-gw".into(),
        version,
        sha256: Sha256Digest::of(content),
        size: content.len() as u64,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Uboot,
    Grub,
}

const KINDS: [Kind; 2] = [Kind::Uboot, Kind::Grub];

/// How the agent learns which slot runs: the truth (as `tugboot.slot=` on the kernel command
/// line gives it), or the bootloader's own records only ([`AbBootloader::booted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detect {
    Cmdline,
    Bootloader,
}

type DeviceAgent = Agent<FaultyIo, Box<dyn AbBootloader>>;

/// One simulated device: image v1 committed in slot A, noise in slot B, v2 offered.
struct World {
    io: FaultyIo,
    kind: Kind,
    detect: Detect,
    /// The slot this boot started with, and what the agent detected at its first start in it
    /// (the daemon remembers that per boot id: an environment the agent rewrote in this boot
    /// no longer says what booted).
    running: (Slot, Option<Booted>),
    boots: u64,
    v1: Vec<u8>,
    v2: Vec<u8>,
    manifest_v2: Vec<u8>,
}

impl World {
    fn new(kind: Kind) -> Self {
        let io = FaultyIo::new();
        // Not a multiple of the chunk size: the last chunk is short.
        let v1 = noise(9_000, 0x11);
        let v2 = noise(10_500, 0x23);
        io.add_device(SLOT_A, &v1, CAPACITY as u64);
        io.add_device(SLOT_B, &noise(CAPACITY, 0x45), CAPACITY as u64);
        let state = AgentState::provisioned(Slot::A, Some(image_of(41, &v1)), 41);
        io.add_file(STATE, &state.to_bytes());
        let mut vars = Vars::new();
        vars.set("tugboot_slot", "A").unwrap();
        vars.set("bootcmd", "run tugboot_boot").unwrap();
        io.add_file(ENV, &tugboot_agent::update::boot::encode_plain(&vars));
        static MANIFEST_V2: OnceLock<Vec<u8>> = OnceLock::new();
        let manifest_v2 = MANIFEST_V2
            .get_or_init(|| sign(manifest(42, &v2), &[1, 2]))
            .clone();
        Self {
            io,
            kind,
            detect: Detect::Cmdline,
            running: (Slot::A, None),
            boots: 0,
            v1,
            v2,
            manifest_v2,
        }
    }

    fn env(&self) -> PlainFileEnv<FaultyIo> {
        PlainFileEnv::new(self.io.clone(), ENV)
    }

    fn bootloader(&self) -> Box<dyn AbBootloader> {
        match self.kind {
            Kind::Uboot => Box::new(Uboot::new(self.env(), 1)),
            Kind::Grub => Box::new(Grub::new(self.env(), 1)),
        }
    }

    fn config() -> AgentConfig {
        AgentConfig {
            state_path: STATE.into(),
            slots: SlotPaths {
                a: SLOT_A.into(),
                b: SLOT_B.into(),
            },
            board: Some(BOARD.into()),
            chunk: 4096,
            checkpoint: 4096,
        }
    }

    /// Power on: the simulated bootloader picks a slot, which must hold verified content.
    /// The power may also fail while the bootloader saves its counters; it then starts over.
    fn power_on(&mut self) -> (Slot, String) {
        loop {
            self.io.power_cycle();
            self.boots += 1;
            let mut env = self.env();
            let booted = match self.kind {
                Kind::Uboot => sim::uboot_power_on(&mut env),
                Kind::Grub => sim::grub_power_on(&mut env),
            };
            match booted {
                Ok(slot) => {
                    self.check_invariants(slot);
                    self.running = (slot, None);
                    return (slot, format!("boot-{}", self.boots));
                }
                Err(e) => assert!(self.io.power_lost(), "the bootloader cannot boot: {e}"),
            }
        }
    }

    fn slot_holds(&self, slot: Slot, content: &[u8]) -> bool {
        let path = if slot == Slot::A { SLOT_A } else { SLOT_B };
        let data = self.io.contents(Path::new(path)).unwrap();
        data.get(..content.len()) == Some(content)
    }

    fn state(&self) -> AgentState {
        AgentState::parse(&self.io.contents(Path::new(STATE)).unwrap()).unwrap()
    }

    /// What must hold at every power-on, whatever happened before.
    fn check_invariants(&self, booted: Slot) {
        assert!(
            self.slot_holds(booted, &self.v1) || self.slot_holds(booted, &self.v2),
            "booted slot {booted} holds unverified content"
        );
        let state = self.state();
        let committed = state.committed.image.clone().unwrap();
        let content = if committed.version == 42 {
            &self.v2
        } else {
            &self.v1
        };
        assert_eq!(committed, image_of(committed.version, content));
        assert!(
            self.slot_holds(state.committed.slot, content),
            "committed slot lost its image"
        );
        assert_eq!(
            state.floor, committed.version,
            "floor moves with commits only"
        );
    }

    fn start(&mut self) -> Result<(DeviceAgent, Next), AgentError> {
        let (_, id) = self.power_on();
        let booted = self.detected()?;
        Agent::start(
            self.io.clone(),
            self.bootloader(),
            Self::config(),
            booted,
            &id,
        )
    }

    /// What the agent learns about the running slot: at the first start in a boot from the
    /// bootloader's records, which must be the truth whatever moment the power failed; later
    /// in the same boot, what it learnt then.
    fn detected(&mut self) -> Result<Booted, AgentError> {
        let (truth, known) = self.running;
        let booted = match (self.detect, known) {
            (Detect::Cmdline, _) => Booted::from(truth),
            (Detect::Bootloader, Some(b)) => b,
            (Detect::Bootloader, None) => {
                let b = self.bootloader().booted()?;
                assert_eq!(b.slot, truth, "detected {b:?}");
                b
            }
        };
        self.running.1 = Some(booted);
        Ok(booted)
    }

    fn start_ok(&mut self) -> (DeviceAgent, Next) {
        self.start().unwrap()
    }

    fn install(&self, agent: &mut DeviceAgent) -> Result<Next, AgentError> {
        agent.update(&self.manifest_v2, &root(), NOW, &mut &self.v2[..])
    }

    fn boot_status(&self) -> BootStatus {
        self.bootloader().status().unwrap()
    }

    /// The bytes that must not change when an update is refused.
    fn protected(&self) -> Vec<Vec<u8>> {
        [SLOT_A, ENV, STATE]
            .iter()
            .map(|p| self.io.durable_contents(Path::new(p)).unwrap())
            .collect()
    }
}

fn committed_v2(reports: &[Outcome]) -> bool {
    matches!(
        reports.last(),
        Some(Outcome::Committed {
            version: 42,
            slot: Slot::B,
            ..
        })
    )
}

#[test]
fn full_cycle_commits_after_the_reboot() {
    for kind in KINDS {
        let mut w = World::new(kind);
        let (mut agent, next) = w.start_ok();
        assert_eq!(next, Next::Idle);
        assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
        assert!(agent.take_reports().is_empty(), "no success before commit");
        assert_eq!(agent.state().floor, 41);
        assert_eq!(
            w.boot_status(),
            BootStatus {
                default: Slot::A,
                trial: Some(Slot::B)
            }
        );
        let (mut agent, next) = w.start_ok();
        assert_eq!(next, Next::HealthCheck, "{kind:?}");
        assert!(agent.take_reports().is_empty(), "no success before commit");
        assert_eq!(agent.health(Ok(())).unwrap(), Next::Idle);
        let reports = agent.take_reports();
        assert!(committed_v2(&reports), "{reports:?}");
        assert_eq!(reports.len(), 1);
        let state = w.state();
        assert_eq!(state.floor, 42);
        assert_eq!(state.committed.slot, Slot::B);
        assert_eq!(state.update, None);
        assert_eq!(
            w.boot_status(),
            BootStatus {
                default: Slot::B,
                trial: None
            }
        );
        for _ in 0..3 {
            let (mut agent, next) = w.start_ok();
            assert_eq!(next, Next::Idle);
            assert!(agent.take_reports().is_empty());
            assert_eq!(w.power_on().0, Slot::B);
        }
    }
}

#[test]
fn health_failure_and_watchdog_roll_back_with_the_reason() {
    for kind in KINDS {
        for watchdog in [false, true] {
            let mut w = World::new(kind);
            let (mut agent, _) = w.start_ok();
            assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
            let (mut agent, next) = w.start_ok();
            assert_eq!(next, Next::HealthCheck);
            let next = if watchdog {
                agent.watchdog_timeout()
            } else {
                agent.health(Err("nginx.service failed".into()))
            };
            assert_eq!(next.unwrap(), Next::Reboot);
            assert!(agent.take_reports().is_empty(), "reported after the reboot");
            let (mut agent, next) = w.start_ok();
            assert_eq!(next, Next::Idle);
            let reports = agent.take_reports();
            let [
                Outcome::RolledBack {
                    version,
                    slot,
                    reason,
                    ..
                },
            ] = reports.as_slice()
            else {
                panic!("{reports:?}")
            };
            assert_eq!((*version, *slot), (42, Slot::A));
            let expect = if watchdog {
                "watchdog"
            } else {
                "nginx.service failed"
            };
            assert!(reason.contains(expect), "{reason}");
            let state = w.state();
            assert_eq!(state.floor, 41, "floor untouched by a failed update");
            assert_eq!(state.committed.slot, Slot::A);
            assert_eq!(state.last_result, Some(reports[0].clone()));
            assert_eq!(
                w.boot_status(),
                BootStatus {
                    default: Slot::A,
                    trial: None
                }
            );
            assert_eq!(w.power_on().0, Slot::A);
        }
    }
}

#[test]
fn crash_loop_in_the_new_slot_falls_back_and_is_reported() {
    for kind in KINDS {
        let mut w = World::new(kind);
        let (mut agent, _) = w.start_ok();
        assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
        // The new image panics before the agent runs, again and again.
        let mut crashes = 0;
        let booted = loop {
            let (slot, _) = w.power_on();
            if slot == Slot::A {
                break slot;
            }
            crashes += 1;
            assert!(crashes <= 3, "{kind:?}: the bootloader never falls back");
        };
        assert_eq!(booted, Slot::A);
        assert_eq!(crashes, 1, "one trial boot");
        // The agent comes up in the old slot after the fallback (a new boot).
        w.boots += 1;
        let (mut agent, next) = Agent::start(
            w.io.clone(),
            w.bootloader(),
            World::config(),
            Slot::A,
            &format!("boot-{}", w.boots),
        )
        .unwrap();
        assert_eq!(next, Next::Idle);
        let reports = agent.take_reports();
        assert!(
            matches!(reports.as_slice(), [Outcome::RolledBack { reason, .. }] if reason.contains("fell back")),
            "{reports:?}"
        );
        assert_eq!(w.state().floor, 41);
        // The update can be tried again, and this time it is healthy.
        assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
        let (mut agent, next) = w.start_ok();
        assert_eq!(next, Next::HealthCheck);
        agent.health(Ok(())).unwrap();
        assert!(committed_v2(&agent.take_reports()));
    }
}

#[test]
fn agent_restart_without_reboot_asks_again() {
    let mut w = World::new(Kind::Uboot);
    let (mut agent, _) = w.start_ok();
    let id = format!("boot-{}", w.boots);
    assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
    drop(agent);
    let (_, next) =
        Agent::start(w.io.clone(), w.bootloader(), World::config(), Slot::A, &id).unwrap();
    assert_eq!(next, Next::Reboot);
    assert_eq!(w.boot_status().trial, Some(Slot::B), "still armed");
}

/// Drives the device until v2 is committed (health always good), rebooting when asked and
/// power-cycling after every error. Before each reboot the agent is also restarted in the
/// same boot, which must ask for the reboot again and never commit. Returns every report.
fn run_to_commit(w: &mut World, max_boots: usize) -> Vec<Outcome> {
    let mut reports = Vec::new();
    for _ in 0..max_boots {
        let Ok((mut agent, mut next)) = w.start() else {
            continue;
        };
        let reboot = loop {
            let result = match next {
                Next::Reboot => break true,
                Next::HealthCheck => agent.health(Ok(())),
                Next::Idle if agent.state().committed.slot == Slot::B => {
                    reports.extend(agent.take_reports());
                    return reports;
                }
                Next::Idle => w.install(&mut agent),
            };
            reports.extend(agent.take_reports());
            match result {
                Ok(n) => next = n,
                Err(_) => break false,
            }
        };
        reports.extend(agent.take_reports());
        drop(agent);
        if reboot {
            restart_before_reboot(w);
        }
    }
    panic!("not committed after {max_boots} boots: {reports:?}");
}

/// The agent restarts in the boot that asked for the reboot (a crash, `run --once` again):
/// whatever the environment says, it asks for the reboot again and commits nothing.
fn restart_before_reboot(w: &mut World) {
    if w.io.power_lost() {
        return;
    }
    let id = format!("boot-{}", w.boots);
    let before = w.state();
    let Ok(booted) = w.detected() else {
        return;
    };
    if let Ok((mut agent, next)) =
        Agent::start(w.io.clone(), w.bootloader(), World::config(), booted, &id)
    {
        assert!(
            agent
                .take_reports()
                .iter()
                .all(|r| !matches!(r, Outcome::Committed { .. })),
            "committed in the boot that asked for the reboot"
        );
        if !w.io.power_lost() {
            assert_eq!(next, Next::Reboot, "{booted:?}");
        }
    }
    let after = w.state();
    assert_eq!(after.floor, before.floor, "floor moved before the reboot");
    assert_eq!(after.committed, before.committed);
}

#[test]
fn power_loss_at_every_step_keeps_the_device_bootable() {
    for kind in KINDS {
        for mode in [LossMode::DropUnsynced, LossMode::KeepWrites] {
            power_loss_at_every_step(kind, mode, Detect::Cmdline);
        }
    }
}

/// The same matrix with the running slot taken from the bootloader's records only (no
/// `tugboot.slot=`): at every boot the inference must be the truth.
#[test]
fn power_loss_at_every_step_with_the_slot_from_the_bootloader() {
    for kind in KINDS {
        for mode in [LossMode::DropUnsynced, LossMode::KeepWrites] {
            power_loss_at_every_step(kind, mode, Detect::Bootloader);
        }
    }
}

/// For every N: cut the power after the N-th write/sync/rename of a whole update (download,
/// sync, arm, reboot, bootloader counters, health, commit), then keep booting through the
/// simulated bootloader until the update is committed. `World::power_on` checks at every boot
/// that the booted slot holds verified content and the committed slot its recorded image.
fn power_loss_at_every_step(kind: Kind, mode: LossMode, detect: Detect) {
    let clean = {
        let mut w = World::new(kind);
        w.detect = detect;
        let reports = run_to_commit(&mut w, 4);
        assert!(committed_v2(&reports));
        w.io.steps()
    };
    let mut n = 0;
    loop {
        let mut w = World::new(kind);
        w.detect = detect;
        w.io.set_loss_mode(mode);
        w.io.cut_power_after(n);
        let reports = run_to_commit(&mut w, 12);
        let at = format!("{kind:?} {mode:?} {detect:?} cut after {n}");
        // Success is reported once, last, and only once the commit is durable.
        assert!(committed_v2(&reports), "{at}: {reports:?}");
        let successes = reports
            .iter()
            .filter(|r| matches!(r, Outcome::Committed { .. }))
            .count();
        assert_eq!(successes, 1, "{at}: {reports:?}");
        let state = w.state();
        assert_eq!((state.floor, state.committed.slot), (42, Slot::B), "{at}");
        assert_eq!(state.update, None, "{at}");
        assert_eq!(
            w.boot_status(),
            BootStatus {
                default: Slot::B,
                trial: None
            },
            "{at}"
        );
        assert!(w.slot_holds(Slot::B, &w.v2), "{at}");
        if w.io.cuts() == 0 {
            break;
        }
        n += 1;
    }
    assert!(n >= clean, "{kind:?}: {n} cut points < {clean} steps");
    eprintln!(
        "{kind:?} {mode:?}: a clean update takes {clean} steps; power cut after each of 0..{n}"
    );
}

#[test]
fn bad_artifacts_touch_nothing_that_boots() {
    let good = World::new(Kind::Uboot).v2;
    let mut tampered = good.clone();
    tampered[5_000] ^= 0x40;
    let mut longer = good.clone();
    longer.extend_from_slice(b"tail");
    let cases: [(&str, &[u8]); 4] = [
        ("tampered", &tampered),
        ("truncated", &good[..10_000]),
        ("longer", &longer),
        ("empty", b""),
    ];
    for kind in KINDS {
        for (what, data) in cases {
            let mut w = World::new(kind);
            let (mut agent, _) = w.start_ok();
            let before = w.protected();
            let env_before = w.env().load().unwrap();
            let next = agent
                .update(&w.manifest_v2, &root(), NOW, &mut &data[..])
                .unwrap();
            assert_eq!(next, Next::Idle, "{what}");
            let reports = agent.take_reports();
            assert!(
                matches!(reports.as_slice(), [Outcome::Failed { version: 42, .. }]),
                "{what}: {reports:?}"
            );
            let after = w.protected();
            assert_eq!(before[0], after[0], "{what}: active slot changed");
            assert_eq!(before[1], after[1], "{what}: boot environment changed");
            assert_eq!(w.env().load().unwrap(), env_before);
            let state = w.state();
            assert_eq!((state.floor, state.committed.slot), (41, Slot::A));
            assert!(matches!(state.last_result, Some(Outcome::Failed { .. })));
            assert_eq!(w.power_on().0, Slot::A, "{what}");
        }
    }
}

fn attack_manifests(v2: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let good = manifest(42, v2);
    let valid = sign(good.clone(), &[1, 2]);
    let mut tampered = String::from_utf8(valid.clone()).unwrap();
    tampered = tampered.replacen("\"version\":42", "\"version\":43", 1);
    assert_ne!(tampered.as_bytes(), &valid[..]);
    let mut oversize = valid.clone();
    oversize.resize(MAX_MANIFEST_BYTES + 1, b' ');
    vec![
        ("unsigned", sign(good.clone(), &[])),
        ("below threshold", sign(good.clone(), &[1])),
        ("unknown keys", sign(good.clone(), &[8, 9])),
        ("tampered after signing", tampered.into_bytes()),
        (
            "expired",
            sign(
                Manifest {
                    expires: Timestamp::from_unix(NOW.unix() - 1),
                    created: Timestamp::from_unix(NOW.unix() - 100),
                    ..good.clone()
                },
                &[1, 2],
            ),
        ),
        (
            "rollback",
            sign(
                Manifest {
                    version: 40,
                    ..good.clone()
                },
                &[1, 2],
            ),
        ),
        (
            "wrong board",
            sign(
                Manifest {
                    boards: vec!["x86-64-uefi".into()],
                    ..good.clone()
                },
                &[1, 2],
            ),
        ),
        (
            "stepping stone missing",
            sign(
                Manifest {
                    min_version: Some(42),
                    ..good.clone()
                },
                &[1, 2],
            ),
        ),
        ("oversize", oversize),
        ("not json", b"\x00\xffgarbage".to_vec()),
        ("empty", Vec::new()),
    ]
}

#[test]
fn manifest_attacks_write_nothing() {
    for kind in KINDS {
        let mut w = World::new(kind);
        let (mut agent, _) = w.start_ok();
        let attacks = attack_manifests(&w.v2);
        for (what, bytes) in attacks {
            let steps = w.io.steps();
            let before = w.protected();
            let slot_b = w.io.durable_contents(Path::new(SLOT_B));
            let err = agent
                .update(&bytes, &root(), NOW, &mut &w.v2[..])
                .unwrap_err();
            assert!(matches!(err, AgentError::Manifest(_)), "{what}: {err}");
            assert_eq!(w.io.steps(), steps, "{what}: something was written");
            assert_eq!(w.protected(), before, "{what}");
            assert_eq!(w.io.durable_contents(Path::new(SLOT_B)), slot_b, "{what}");
            assert!(agent.take_reports().is_empty());
        }
        // A valid manifest without a slot artifact is refused by the agent, also writing nothing.
        let mut kernel_only = manifest(42, &w.v2);
        kernel_only.artifacts[0].role = Role::Kernel;
        let steps = w.io.steps();
        let err = agent
            .update(&sign(kernel_only, &[1, 2]), &root(), NOW, &mut &w.v2[..])
            .unwrap_err();
        assert!(
            matches!(err, AgentError::Update(UpdateError::NoSlotArtifact)),
            "{err}"
        );
        assert_eq!(w.io.steps(), steps);
        // And the device still updates with the good one afterwards.
        assert_eq!(w.install(&mut agent).unwrap(), Next::Reboot);
    }
}

#[test]
fn rollback_error_codes_are_the_firmware_ones() {
    let mut w = World::new(Kind::Grub);
    let (mut agent, _) = w.start_ok();
    let old = sign(manifest(40, &w.v2), &[1, 2]);
    let err = agent
        .update(&old, &root(), NOW, &mut &w.v2[..])
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Manifest(VerifyError::Rollback {
                version: 40,
                floor: 41
            })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("rollback"), "{err}");
}

#[test]
fn installed_slot_is_verified_again_before_arming() {
    for kind in KINDS {
        let mut w = World::new(kind);
        // As if the power went after `installed` was recorded, and the slot then decayed.
        let mut state = w.state();
        state.update = Some(tugboot_agent::update::UpdateRecord {
            slot: Slot::B,
            image: image_of(42, &w.v2),
            manifest_sha256: Sha256Digest::of(&w.manifest_v2),
            phase: tugboot_agent::update::Phase::Installed,
            downloaded: 0,
        });
        w.io.add_file(STATE, &state.to_bytes());
        let mut decayed = w.v2.clone();
        decayed[777] ^= 1;
        w.io.add_device(SLOT_B, &decayed, CAPACITY as u64);
        let env_before = w.io.durable_contents(Path::new(ENV));
        let (mut agent, next) = w.start_ok();
        assert_eq!(next, Next::Idle);
        let reports = agent.take_reports();
        assert!(
            matches!(reports.as_slice(), [Outcome::Failed { reason, .. }] if reason.contains("reads back wrong")),
            "{reports:?}"
        );
        assert_eq!(
            w.io.durable_contents(Path::new(ENV)),
            env_before,
            "never armed"
        );
        assert_eq!(w.power_on().0, Slot::A);
        // With intact content the same state arms and reboots into the trial.
        let mut w = World::new(kind);
        w.io.add_file(STATE, &state.to_bytes());
        w.io.add_device(SLOT_B, &w.v2.clone(), CAPACITY as u64);
        let (_, next) = w.start_ok();
        assert_eq!(next, Next::Reboot);
        assert_eq!(w.boot_status().trial, Some(Slot::B));
    }
}

#[test]
fn unreadable_state_stops_the_agent_and_writes_nothing() {
    let w = World::new(Kind::Uboot);
    for bad in [&b"{}"[..], b"not json", &[b' '; 70_000]] {
        w.io.add_file(STATE, bad);
        let steps = w.io.steps();
        let Err(err) = Agent::start(
            w.io.clone(),
            w.bootloader(),
            World::config(),
            Slot::A,
            "boot-1",
        ) else {
            panic!("accepted {bad:?}")
        };
        assert!(matches!(err, AgentError::State { .. }), "{err}");
        assert_eq!(w.io.contents(Path::new(STATE)).unwrap(), bad);
        assert_eq!(w.io.steps(), steps);
    }
}
