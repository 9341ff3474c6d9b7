//! The shared cases: each is generic over the backend and asserts behaviour the `Store`
//! documentation promises.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;
use tugboot_fleet::facts::{Declarer, FactKey, Observer, Source};
use tugboot_fleet::observe::observed;
use tugboot_fleet::profiles::ProfileSet;
use tugboot_store::{
    DeviceCert, Image, Mac, MachineId, MachineState, NewRollout, OutcomeKind, Report,
    ReportOutcome, RolloutStage, RolloutState, RolloutThresholds, RolloutTransition, Sighting,
    Slot, Store, StoreError, WriteOutcome,
};

use crate::backends::Backend;

pub fn mac(n: u32) -> Mac {
    let [a, b, c, d] = n.to_be_bytes();
    Mac([0x02, 0x00, a, b, c, d])
}

pub fn sighting(n: u32) -> Sighting {
    sighting_with(n, &[], 1)
}

pub fn sighting_with(n: u32, facts: &[(&str, &str)], at: i64) -> Sighting {
    Sighting {
        mac: mac(n),
        facts: observed(Observer::Dhcp, at, facts),
    }
}

pub async fn machine_of<S: Store>(s: &S, n: u32, now: i64) -> MachineId {
    s.observe(&[sighting(n)], now).await.unwrap()[0]
}

pub fn report(device: MachineId, id: &str, received_at: i64) -> Report {
    Report {
        device,
        report_id: id.into(),
        boot_id: "6c1f0e8e-boot".into(),
        slot: Some(Slot::B),
        image_version: 7,
        checks: json!({"disk": "ok", "net": {"ok": true, "rtt_ms": 3}}),
        uptime_secs: 120,
        last_error: None,
        outcome: None,
        received_at,
    }
}

fn digest(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

fn key(k: &str) -> FactKey {
    FactKey::new(k).unwrap()
}

const OPERATOR: Source = Source::Declared(Declarer::Operator);

pub async fn machines_observed_and_kept<B: Backend>(b: &B) {
    let s = b.open().await;
    let ids = s
        .observe(
            &[
                sighting_with(2, &[("arch", "x86_64")], 100),
                sighting_with(1, &[("arch", "arm64"), ("firmware", "uefi")], 100),
            ],
            100,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    let m = s.get_machine(ids[1]).await.unwrap().unwrap();
    assert_eq!(m.mac, Some(mac(1)));
    assert_eq!(m.state, MachineState::Unknown);
    assert_eq!((m.first_seen, m.last_seen), (100, 100));
    assert_eq!(m.facts.value("arch"), Some("arm64"));
    let f = m.facts.get("firmware").unwrap();
    assert_eq!((f.source, f.at), (Source::Observed(Observer::Dhcp), 100));
    assert!(m.name.is_none() && m.serial.is_none() && m.last_booted_image.is_none());

    // Seen again: same machine, last_seen moves (never back), newer observations replace.
    let again = s
        .observe(&[sighting_with(1, &[("arch", "arm32")], 200)], 200)
        .await
        .unwrap();
    assert_eq!(again, [ids[1]]);
    s.observe(&[sighting_with(1, &[("arch", "riscv64")], 150)], 150)
        .await
        .unwrap();
    let m = s.find_machine_by_mac(mac(1)).await.unwrap().unwrap();
    assert_eq!((m.first_seen, m.last_seen), (100, 200));
    assert_eq!(
        m.facts.value("arch"),
        Some("arm32"),
        "an older observation loses"
    );
    assert_eq!(m.facts.value("firmware"), Some("uefi"), "absent facts stay");

    // The operator declares a board; a later (forged) observation cannot change it.
    s.set_facts(
        m.id,
        &[(key("board"), "raspberrypi-4".into())],
        OPERATOR,
        300,
    )
    .await
    .unwrap();
    s.observe(&[sighting_with(1, &[("board", "x86_64-bios")], 400)], 400)
        .await
        .unwrap();
    let m = s.get_machine(m.id).await.unwrap().unwrap();
    assert_eq!(m.facts.value("board"), Some("raspberrypi-4"));
    assert_eq!(m.facts.trusted_value("board"), Some("raspberrypi-4"));
    // Attested ranks below declared: the device cannot override the operator either.
    s.set_facts(m.id, &[(key("board"), "x".into())], Source::Attested, 500)
        .await
        .unwrap();
    assert_eq!(
        s.get_machine(m.id)
            .await
            .unwrap()
            .unwrap()
            .facts
            .value("board"),
        Some("raspberrypi-4")
    );
    // Withdrawn by the operator: gone; the attested value did not survive under it.
    let m = s
        .withdraw_facts(m.id, &[key("board")], OPERATOR)
        .await
        .unwrap();
    assert_eq!(m.facts.value("board"), None);
    // Withdrawing someone else's fact does nothing.
    let m = s
        .withdraw_facts(m.id, &[key("arch")], OPERATOR)
        .await
        .unwrap();
    assert_eq!(m.facts.value("arch"), Some("arm32"));

    let approved = s
        .set_machine_state(m.id, MachineState::Approved)
        .await
        .unwrap();
    assert_eq!(approved.state, MachineState::Approved);
    // A batch: the last image named for a machine wins; an unknown machine is skipped.
    let boots = [
        (m.id, "edge-gw@6".to_owned()),
        (MachineId(i64::MAX), "x@1".to_owned()),
        (m.id, "edge-gw@7".to_owned()),
    ];
    assert_eq!(s.record_boots(&boots, 600).await.unwrap(), 1);
    assert_eq!(s.record_boots(&[], 600).await.unwrap(), 0);
    let booted = s.get_machine(m.id).await.unwrap().unwrap();
    assert_eq!(booted.last_booted_image.as_deref(), Some("edge-gw@7"));
    assert_eq!(booted.last_seen, 600);

    let all = s.list_machines().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all.iter().find(|x| x.id == m.id), Some(&booted));

    let other = ids[0];
    assert!(s.delete_machine(other).await.unwrap());
    assert!(!s.delete_machine(other).await.unwrap());
    assert_eq!(s.get_machine(other).await.unwrap(), None);
    assert!(matches!(
        s.set_machine_state(other, MachineState::Revoked).await,
        Err(StoreError::NotFound {
            entity: "machine",
            ..
        })
    ));
    assert_eq!(
        s.record_boots(&[(other, "x@1".into())], 1).await.unwrap(),
        0
    );
    assert!(matches!(
        s.set_facts(other, &[(key("label.x"), "y".into())], OPERATOR, 1)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn machines_reject_bad_input<B: Backend>(b: &B) {
    let s = b.open().await;
    // Sightings carry observations only.
    let mut forged = sighting(9);
    forged
        .facts
        .offer_value("board", "x", Source::Attested, 1)
        .unwrap();
    assert!(matches!(
        s.observe(&[forged], 1).await,
        Err(StoreError::InvalidInput { field: "facts", .. })
    ));
    assert_eq!(
        s.list_machines().await.unwrap(),
        vec![],
        "rejected input writes nothing"
    );
    let id = machine_of(&s, 9, 1).await;
    for bad in ["a\nb", ""] {
        assert!(
            matches!(
                s.set_facts(
                    id,
                    &[(key("label.x"), bad.replace("\\n", "\n"))],
                    OPERATOR,
                    1
                )
                .await,
                Err(StoreError::InvalidInput { .. })
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        s.set_facts(
            id,
            &[(key("label.x"), "y".into())],
            Source::Observed(Observer::Http),
            1
        )
        .await,
        Err(StoreError::InvalidInput {
            field: "source",
            ..
        })
    ));
    let too_many: Vec<(FactKey, String)> = (0..300)
        .map(|i| (key(&format!("label.k{i}")), "v".into()))
        .collect();
    assert!(matches!(
        s.set_facts(id, &too_many, OPERATOR, 1).await,
        Err(StoreError::InvalidInput { field: "facts", .. })
    ));
    assert!(s.get_machine(id).await.unwrap().unwrap().facts.is_empty());
}

const DECLARED: &str = r#"
[profiles.edge]
image = "edge"

[[machines]]
name = "gw-1"
mac = "02:00:00:00:00:01"
board = "x86_64-uefi"
profile = "edge"
labels = { rack = "r1" }

[[machines]]
name = "by-serial"
serial = "SN-3"
labels = { rack = "r2" }

[[machines]]
uuid = "8a3b1c2d-0000-4000-8000-000000000002"
hostname = "gw-2"
"#;

pub async fn declared_machines_sync<B: Backend>(b: &B) {
    let s = b.open().await;
    // gw-1 was seen by DHCP before the file declared it.
    let seen = s
        .observe(
            &[sighting_with(
                1,
                &[("board", "raspberrypi-4"), ("arch", "x86_64")],
                10,
            )],
            10,
        )
        .await
        .unwrap()[0];
    let set = ProfileSet::from_toml(DECLARED).unwrap();
    let sum = s.declare_machines(set.machines(), 20).await.unwrap();
    assert_eq!(sum.created, 2, "the serial and the UUID machine are new");
    assert_eq!(sum.facts_withdrawn, 0);
    let gw1 = s.get_machine(seen).await.unwrap().unwrap();
    assert_eq!(gw1.name.as_deref(), Some("gw-1"));
    assert_eq!(
        gw1.state,
        MachineState::Unknown,
        "a known machine keeps its state"
    );
    assert_eq!(
        gw1.facts.value("board"),
        Some("x86_64-uefi"),
        "declared beats observed"
    );
    assert_eq!(
        gw1.facts.get("board").unwrap().source,
        Source::Declared(Declarer::File)
    );
    assert_eq!(gw1.facts.value("arch"), Some("x86_64"), "observations stay");
    assert_eq!(gw1.facts.trusted_value("label.rack"), Some("r1"));
    let by_serial = s.find_machine_by_serial("SN-3").await.unwrap().unwrap();
    assert_eq!(by_serial.state, MachineState::Adopted);
    assert_eq!(by_serial.mac, None, "declared without a MAC");

    // Idempotent: the same file again changes nothing, keeps the statement times.
    let again = s.declare_machines(set.machines(), 30).await.unwrap();
    assert_eq!(
        (again.created, again.facts_written, again.facts_withdrawn),
        (0, 0, 0)
    );
    assert_eq!(
        s.get_machine(seen)
            .await
            .unwrap()
            .unwrap()
            .facts
            .get("board")
            .unwrap()
            .at,
        20
    );

    // The operator relabels gw-1; the file's label must not come back over it.
    s.set_facts(seen, &[(key("label.rack"), "r9".into())], OPERATOR, 40)
        .await
        .unwrap();
    // The file changes: gw-1 loses its board line and the serial machine disappears.
    let edited = DECLARED.replace("board = \"x86_64-uefi\"\n", "").replace(
        "[[machines]]\nname = \"by-serial\"\nserial = \"SN-3\"\nlabels = { rack = \"r2\" }\n",
        "",
    );
    let set = ProfileSet::from_toml(&edited).unwrap();
    let sum = s.declare_machines(set.machines(), 50).await.unwrap();
    assert_eq!(sum.created, 0);
    assert!(sum.facts_withdrawn >= 2, "{sum:?}");
    let gw1 = s.get_machine(seen).await.unwrap().unwrap();
    assert_eq!(
        gw1.facts.value("board"),
        None,
        "withdrawn with the file line"
    );
    assert_eq!(
        gw1.facts.value("label.rack"),
        Some("r9"),
        "the operator's label stays"
    );
    let by_serial = s.find_machine_by_serial("SN-3").await.unwrap().unwrap();
    assert!(by_serial.facts.is_empty(), "{:?}", by_serial.facts);

    // A name moves to the machine the file now gives it to.
    let moved = DECLARED
        .replace("name = \"by-serial\"", "name = \"gw-1b\"")
        .replace("name = \"gw-1\"", "name = \"by-serial\"");
    s.declare_machines(ProfileSet::from_toml(&moved).unwrap().machines(), 60)
        .await
        .unwrap();
    assert_eq!(
        s.get_machine(seen).await.unwrap().unwrap().name.as_deref(),
        Some("by-serial")
    );
}

pub async fn corrupt_rows_are_errors<B: Backend>(b: &B) {
    let s = b.open().await;
    let id = machine_of(&s, 5, 1).await;
    b.exec_raw("UPDATE machines SET mac = 'zz'").await;
    assert!(matches!(
        s.get_machine(id).await,
        Err(StoreError::CorruptRow {
            table: "machines",
            ..
        })
    ));
    assert!(matches!(
        s.list_machines().await,
        Err(StoreError::CorruptRow { .. })
    ));
    b.exec_raw("UPDATE machines SET mac = NULL").await;
    b.exec_raw(&format!(
        "INSERT INTO machine_facts (machine_id, key, value, source, rank, at) VALUES ({}, 'Bad Key', 'v', 'attested', 2, 1)",
        id.0
    ))
    .await;
    assert!(matches!(
        s.get_machine(id).await,
        Err(StoreError::CorruptRow {
            table: "machine_facts",
            ..
        })
    ));
}

pub async fn concurrent_observations_keep_one_row_per_mac<B: Backend>(b: &B) {
    // Two servers (two pools on one database) observe the same machines at once.
    let stores = [Arc::new(b.open().await), Arc::new(b.open().await)];
    let mut tasks = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            // A minute apart: each round refreshes `last_seen` (REFRESH_SECS).
            for round in 0..20i64 {
                let at = round * tugboot_store::REFRESH_SECS;
                let batch: Vec<Sighting> = (0..50u32)
                    .map(|n| {
                        sighting_with(n, &[("arch", if i == 0 { "arm64" } else { "x86_64" })], at)
                    })
                    .collect();
                let mut tries = 0;
                // PostgreSQL may pick one of two crossing batches as a deadlock victim; the
                // shell retries a failed batch the same way.
                while let Err(e) = s.observe(&batch, at).await {
                    tries += 1;
                    assert!(tries < 5, "{e}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let all = stores[0].list_machines().await.unwrap();
    assert_eq!(all.len(), 50);
    let macs: BTreeSet<_> = all.iter().map(|m| m.mac).collect();
    assert_eq!(macs.len(), 50);
    assert!(
        all.iter()
            .all(|m| m.facts.len() == 1 && m.last_seen == 19 * tugboot_store::REFRESH_SECS)
    );
}

/// Repeated sightings within a minute write nothing: `last_seen` and an unchanged fact's `at`
/// move once `REFRESH_SECS` have passed; a changed value is written at once.
pub async fn repeated_sightings_refresh_to_the_minute<B: Backend>(b: &B) {
    let s = b.open().await;
    let minute = tugboot_store::REFRESH_SECS;
    let id = s
        .observe(&[sighting_with(1, &[("arch", "x86_64")], 1000)], 1000)
        .await
        .unwrap()[0];
    for at in [1001, 1030, 1000 + minute - 1] {
        let again = s
            .observe(&[sighting_with(1, &[("arch", "x86_64")], at)], at)
            .await
            .unwrap()[0];
        assert_eq!(again, id, "the same machine");
    }
    let m = s.get_machine(id).await.unwrap().unwrap();
    assert_eq!(m.last_seen, 1000);
    assert_eq!(m.facts.get("arch").map(|f| f.at), Some(1000));
    // A changed value is written at once.
    s.observe(&[sighting_with(1, &[("arch", "arm64")], 1031)], 1031)
        .await
        .unwrap();
    let m = s.get_machine(id).await.unwrap().unwrap();
    assert_eq!(m.facts.value("arch"), Some("arm64"));
    assert_eq!(m.facts.get("arch").map(|f| f.at), Some(1031));
    // A minute on, both move.
    let later = 1000 + minute;
    s.observe(&[sighting_with(1, &[("arch", "arm64")], later + 31)], later)
        .await
        .unwrap();
    let m = s.get_machine(id).await.unwrap().unwrap();
    assert_eq!(m.last_seen, later);
    assert_eq!(m.facts.get("arch").map(|f| f.at), Some(later + 31));
}

pub async fn image_outcomes_are_the_latest_per_device<B: Backend>(b: &B) {
    let s = b.open().await;
    let (d1, d2, d3) = (
        machine_of(&s, 1, 1).await,
        machine_of(&s, 2, 1).await,
        machine_of(&s, 3, 1).await,
    );
    let outcome = |kind, version| {
        Some(ReportOutcome {
            kind,
            image_name: "edge".into(),
            image_version: version,
        })
    };
    let mut seq = 0;
    let mut put = |d: MachineId, kind, version, at| {
        seq += 1;
        Report {
            outcome: outcome(kind, version),
            slot: None,
            ..report(d, &format!("r{seq}"), at)
        }
    };
    for r in [
        put(d1, OutcomeKind::Failed, 2, 10),
        put(d1, OutcomeKind::Committed, 2, 10), // same second: the later report wins
        put(d2, OutcomeKind::Committed, 2, 11),
        put(d2, OutcomeKind::RolledBack, 2, 12),
        put(d3, OutcomeKind::Committed, 1, 13), // another version
    ] {
        s.insert_report(&r).await.unwrap();
    }
    s.insert_report(&report(d3, "status-only", 14))
        .await
        .unwrap();
    let v: Vec<_> = s
        .image_outcomes("edge", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|v| (v.device, v.kind, v.at))
        .collect();
    assert_eq!(
        v,
        [
            (d1, OutcomeKind::Committed, 10),
            (d2, OutcomeKind::RolledBack, 12)
        ]
    );
    assert!(s.image_outcomes("edge", 9).await.unwrap().is_empty());
    let r = s.get_report(d1, "r1").await.unwrap().unwrap();
    assert_eq!(r.slot, None);
    assert_eq!(r.outcome.unwrap().kind, OutcomeKind::Failed);
}

fn image(version: u64, fill: char) -> Image {
    Image {
        name: "edge-gw".into(),
        version,
        manifest_digest: digest(fill),
        manifest: format!("manifest {version} {fill}").into_bytes(),
        published: false,
        created_at: 50,
    }
}

pub async fn images_crud_and_immutability<B: Backend>(b: &B) {
    let s = b.open().await;
    assert_eq!(
        s.put_image(&image(2, 'a')).await.unwrap(),
        WriteOutcome::Inserted
    );
    assert_eq!(
        s.put_image(&image(2, 'a')).await.unwrap(),
        WriteOutcome::AlreadyPresent
    );
    assert!(matches!(
        s.put_image(&image(2, 'b')).await,
        Err(StoreError::ImageImmutable { version: 2, .. })
    ));
    assert_eq!(
        s.put_image(&image(1, 'c')).await.unwrap(),
        WriteOutcome::Inserted
    );
    assert_eq!(
        s.get_image("edge-gw", 2).await.unwrap(),
        Some(image(2, 'a'))
    );
    assert_eq!(s.get_image("edge-gw", 3).await.unwrap(), None);
    assert_eq!(s.get_image("edge-gw", u64::MAX).await.unwrap(), None);
    let versions: Vec<u64> = s
        .list_images(Some("edge-gw"))
        .await
        .unwrap()
        .iter()
        .map(|i| i.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert!(s.list_images(Some("other")).await.unwrap().is_empty());

    assert!(s.set_image_published("edge-gw", 2, true).await.unwrap());
    assert!(s.get_image("edge-gw", 2).await.unwrap().unwrap().published);
    assert!(!s.set_image_published("edge-gw", 9, true).await.unwrap());
    // Storing it again does not unpublish it.
    assert_eq!(
        s.put_image(&image(2, 'a')).await.unwrap(),
        WriteOutcome::AlreadyPresent
    );
    assert!(s.get_image("edge-gw", 2).await.unwrap().unwrap().published);

    let mut bad = image(5, 'a');
    bad.manifest_digest = "ABC".into();
    assert!(matches!(
        s.put_image(&bad).await,
        Err(StoreError::InvalidInput {
            field: "manifest_digest",
            ..
        })
    ));
    let mut big = image(5, 'a');
    big.manifest = vec![0; tugboot_store::MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        s.put_image(&big).await,
        Err(StoreError::InvalidInput {
            field: "manifest",
            ..
        })
    ));
    let mut too_new = image(5, 'a');
    too_new.version = u64::MAX;
    assert!(matches!(
        s.put_image(&too_new).await,
        Err(StoreError::InvalidInput { .. })
    ));
    assert_eq!(s.get_image("edge-gw", 5).await.unwrap(), None);
}

pub async fn rollouts_crud_and_compare_and_set<B: Backend>(b: &B) {
    let s = b.open().await;
    let new = NewRollout {
        image_name: "edge-gw".into(),
        image_version: 2,
        group_selector: "site=lab".into(),
        stages: vec![
            RolloutStage {
                percent: 5,
                soak_secs: 600,
            },
            RolloutStage {
                percent: 100,
                soak_secs: 0,
            },
        ],
        thresholds: RolloutThresholds {
            max_failure_permille: 20,
            min_reports: 5,
        },
    };
    assert!(matches!(
        s.create_rollout(&new, 10).await,
        Err(StoreError::NotFound {
            entity: "image",
            ..
        })
    ));
    s.put_image(&image(2, 'a')).await.unwrap();
    let r = s.create_rollout(&new, 10).await.unwrap();
    assert_eq!(
        (r.state, r.current_stage, r.created_at, r.updated_at),
        (RolloutState::Pending, 0, 10, 10)
    );
    assert_eq!(
        (r.stages.clone(), r.thresholds),
        (new.stages.clone(), new.thresholds)
    );
    assert_eq!(s.get_rollout(r.id).await.unwrap(), Some(r.clone()));

    let start = RolloutTransition {
        id: r.id,
        from_state: RolloutState::Pending,
        from_stage: 0,
        to_state: RolloutState::Running,
        to_stage: 0,
    };
    let running = s.transition_rollout(&start, 20).await.unwrap().unwrap();
    assert_eq!(
        (running.state, running.updated_at),
        (RolloutState::Running, 20)
    );
    // The same transition again (another server with a stale view) does nothing.
    assert_eq!(s.transition_rollout(&start, 21).await.unwrap(), None);
    let next = RolloutTransition {
        from_state: RolloutState::Running,
        to_state: RolloutState::Running,
        to_stage: 1,
        ..start
    };
    assert_eq!(
        s.transition_rollout(&next, 30)
            .await
            .unwrap()
            .unwrap()
            .current_stage,
        1
    );
    let beyond = RolloutTransition {
        from_stage: 1,
        to_stage: 2,
        ..next
    };
    assert!(matches!(
        s.transition_rollout(&beyond, 40).await,
        Err(StoreError::InvalidInput { .. })
    ));
    let missing = RolloutTransition {
        id: tugboot_store::RolloutId(r.id.0 + 1000),
        ..next
    };
    assert!(matches!(
        s.transition_rollout(&missing, 40).await,
        Err(StoreError::NotFound { .. })
    ));

    let second = s
        .create_rollout(
            &NewRollout {
                group_selector: "site=dc".into(),
                ..new.clone()
            },
            50,
        )
        .await
        .unwrap();
    let ids: Vec<_> = s
        .list_rollouts()
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, vec![r.id, second.id]);
    let bad = NewRollout {
        stages: vec![],
        ..new
    };
    assert!(matches!(
        s.create_rollout(&bad, 60).await,
        Err(StoreError::InvalidInput {
            field: "stages",
            ..
        })
    ));
}

async fn booted<S: Store>(s: &S, dev: MachineId) -> (Option<String>, i64) {
    let m = s.get_machine(dev).await.unwrap().unwrap();
    (m.last_booted_image, m.last_seen)
}

/// A committed (or installed) outcome records the boot with the report, in one transaction: the
/// API answered a retried report that a killed server had stored as a duplicate and never
/// recorded the boot (found by the API's kill -9 rollout test). A retry changes nothing, a
/// status report or a rollback records no boot, and `last_seen` never goes back.
pub async fn outcome_reports_record_the_boot<B: Backend>(b: &B) {
    let s = b.open().await;
    let dev = machine_of(&s, 1, 1).await;
    let outcome = |kind, version| ReportOutcome {
        kind,
        image_name: "edge".into(),
        image_version: version,
    };
    s.insert_report(&report(dev, "status", 50)).await.unwrap();
    assert_eq!(booted(&s, dev).await, (None, 1));
    let commit = Report {
        outcome: Some(outcome(OutcomeKind::Committed, 3)),
        ..report(dev, "commit-3", 100)
    };
    assert_eq!(
        s.insert_report(&commit).await.unwrap(),
        WriteOutcome::Inserted
    );
    assert_eq!(booted(&s, dev).await, (Some("edge@3".into()), 100));
    let rollback = Report {
        outcome: Some(outcome(OutcomeKind::RolledBack, 4)),
        ..report(dev, "rollback-4", 200)
    };
    s.insert_report(&rollback).await.unwrap();
    assert_eq!(booted(&s, dev).await, (Some("edge@3".into()), 100));
    let install = Report {
        outcome: Some(outcome(OutcomeKind::Installed, 5)),
        ..report(dev, "install-5", 90)
    };
    s.insert_report(&install).await.unwrap();
    assert_eq!(booted(&s, dev).await, (Some("edge@5".into()), 100));
    // A late retry of the first commit is a duplicate: it does not take the machine back.
    assert_eq!(
        s.insert_report(&Report {
            received_at: 300,
            ..commit.clone()
        })
        .await
        .unwrap(),
        WriteOutcome::AlreadyPresent
    );
    assert_eq!(booted(&s, dev).await, (Some("edge@5".into()), 100));
    let ghost = Report {
        outcome: Some(outcome(OutcomeKind::Committed, 3)),
        ..report(MachineId(dev.0 + 1000), "c", 1)
    };
    assert!(matches!(
        s.insert_report(&ghost).await,
        Err(StoreError::NotFound {
            entity: "device",
            ..
        })
    ));
}

pub async fn reports_are_idempotent<B: Backend>(b: &B) {
    let s = b.open().await;
    let dev = machine_of(&s, 1, 1).await;
    let first = report(dev, "r-1", 100);
    assert_eq!(
        s.insert_report(&first).await.unwrap(),
        WriteOutcome::Inserted
    );
    assert_eq!(
        s.insert_report(&first).await.unwrap(),
        WriteOutcome::AlreadyPresent
    );
    // A retry that differs (received later) is still the same report; the first copy stays.
    let retry = Report {
        received_at: 160,
        uptime_secs: 999,
        ..first.clone()
    };
    assert_eq!(
        s.insert_report(&retry).await.unwrap(),
        WriteOutcome::AlreadyPresent
    );
    assert_eq!(s.get_report(dev, "r-1").await.unwrap(), Some(first.clone()));
    assert_eq!(s.count_reports().await.unwrap(), 1);

    let second = Report {
        last_error: Some("health check net failed".into()),
        slot: Some(Slot::A),
        ..report(dev, "r-2", 200)
    };
    assert_eq!(
        s.insert_report(&second).await.unwrap(),
        WriteOutcome::Inserted
    );
    // The same report id from another device is another report.
    let other = machine_of(&s, 2, 1).await;
    assert_eq!(
        s.insert_report(&report(other, "r-1", 100)).await.unwrap(),
        WriteOutcome::Inserted
    );
    assert_eq!(s.count_reports().await.unwrap(), 3);
    assert_eq!(
        s.list_reports(dev, 10).await.unwrap(),
        vec![second.clone(), first.clone()]
    );
    assert_eq!(s.list_reports(dev, 1).await.unwrap(), vec![second]);

    let ghost = report(MachineId(dev.0 + 1000), "r-1", 1);
    assert!(matches!(
        s.insert_report(&ghost).await,
        Err(StoreError::NotFound {
            entity: "device",
            ..
        })
    ));
    let big = Report {
        checks: json!({ "log": "x".repeat(tugboot_store::MAX_CHECKS_BYTES) }),
        ..report(dev, "r-3", 1)
    };
    assert!(matches!(
        s.insert_report(&big).await,
        Err(StoreError::InvalidInput {
            field: "checks",
            ..
        })
    ));
    assert_eq!(s.count_reports().await.unwrap(), 3);

    // Deleting the machine deletes its reports.
    assert!(s.delete_machine(other).await.unwrap());
    assert_eq!(s.count_reports().await.unwrap(), 2);
}

/// The same report retried concurrently through two stores is counted once.
pub async fn report_retries_race_counted_once<B: Backend>(b: &B) {
    let (s1, s2) = (Arc::new(b.open().await), Arc::new(b.open().await));
    let dev = machine_of(&*s1, 1, 1).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.push(tokio::spawn(async move {
            s.insert_report(&report(dev, "once", 100)).await.unwrap()
        }));
    }
    let mut inserted = 0;
    for t in tasks {
        if t.await.unwrap() == WriteOutcome::Inserted {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
    assert_eq!(s2.count_reports().await.unwrap(), 1);
}

pub async fn device_certs_crud<B: Backend>(b: &B) {
    let s = b.open().await;
    let dev = machine_of(&s, 1, 1).await;
    let cert = DeviceCert {
        serial: "0a1b2c".into(),
        device: dev,
        issued_at: 100,
        not_after: 1000,
        revoked_at: None,
    };
    s.insert_device_cert(&cert).await.unwrap();
    assert!(matches!(
        s.insert_device_cert(&cert).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let ghost = DeviceCert {
        serial: "ff".into(),
        device: MachineId(dev.0 + 1000),
        ..cert.clone()
    };
    assert!(matches!(
        s.insert_device_cert(&ghost).await,
        Err(StoreError::NotFound {
            entity: "device",
            ..
        })
    ));
    let bad = DeviceCert {
        serial: "0A:1B".into(),
        ..cert.clone()
    };
    assert!(matches!(
        s.insert_device_cert(&bad).await,
        Err(StoreError::InvalidInput {
            field: "serial",
            ..
        })
    ));
    let renewed = DeviceCert {
        serial: "0a1b2d".into(),
        issued_at: 900,
        not_after: 2000,
        ..cert.clone()
    };
    s.insert_device_cert(&renewed).await.unwrap();

    assert_eq!(
        s.get_device_cert("0a1b2c").await.unwrap(),
        Some(cert.clone())
    );
    assert_eq!(s.get_device_cert("00").await.unwrap(), None);
    assert_eq!(
        s.list_device_certs(dev).await.unwrap(),
        vec![cert.clone(), renewed.clone()]
    );
    assert!(cert.is_valid_at(1000) && !cert.is_valid_at(1001));

    let revoked = s.revoke_device_cert("0a1b2c", 500).await.unwrap();
    assert_eq!(revoked.revoked_at, Some(500));
    assert!(!revoked.is_valid_at(600));
    assert_eq!(
        s.revoke_device_cert("0a1b2c", 700)
            .await
            .unwrap()
            .revoked_at,
        Some(500),
        "first revocation kept"
    );
    assert!(matches!(
        s.revoke_device_cert("00", 1).await,
        Err(StoreError::NotFound { .. })
    ));

    assert!(s.delete_machine(dev).await.unwrap());
    assert_eq!(
        s.get_device_cert("0a1b2d").await.unwrap(),
        None,
        "certificates go with their machine"
    );
}

/// Everything written through one store is there after it is closed and the database is
/// opened again (migrations are not re-applied destructively).
pub async fn data_survives_reopen<B: Backend>(b: &B) {
    let dev;
    {
        let s = b.open().await;
        dev = machine_of(&s, 1, 1).await;
        s.set_facts(dev, &[(key("label.site"), "lab".into())], OPERATOR, 2)
            .await
            .unwrap();
        s.insert_report(&report(dev, "r", 5)).await.unwrap();
        s.put_image(&image(1, 'a')).await.unwrap();
    }
    let s = b.open().await;
    let m = s.get_machine(dev).await.unwrap().unwrap();
    assert_eq!(m.facts.trusted_value("label.site"), Some("lab"));
    assert_eq!(s.count_reports().await.unwrap(), 1);
    assert_eq!(
        s.get_image("edge-gw", 1).await.unwrap(),
        Some(image(1, 'a'))
    );
}

/// Several servers starting at once on a fresh database: migrations are applied once and
/// every start succeeds.
pub async fn concurrent_first_open_migrates_once<B: Backend>(b: &B) {
    let mut opens = Vec::new();
    for _ in 0..4 {
        opens.push(async { b.open().await });
    }
    let stores = futures_util::future::join_all(opens).await;
    let id = machine_of(&stores[0], 1, 1).await;
    for s in &stores {
        assert_eq!(
            s.get_machine(id).await.unwrap().and_then(|m| m.mac),
            Some(mac(1))
        );
    }
}

/// A database migrated by a newer tugboot (a migration this binary does not know) is refused,
/// not silently used with a schema the code does not understand.
pub async fn newer_schema_is_refused<B: Backend>(b: &B) {
    drop(b.open().await);
    b.exec_raw(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         SELECT 9999, 'from the future', success, checksum, execution_time FROM _sqlx_migrations WHERE version = 1",
    )
    .await;
    match B::open_result(b).await {
        Err(StoreError::Migrate(_)) => {}
        other => panic!(
            "expected a migration error, got {:?}",
            other.map(|_| "a store")
        ),
    }
}
