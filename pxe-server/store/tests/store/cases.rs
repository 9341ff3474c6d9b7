//! The shared cases: each is generic over the backend and asserts behaviour the `Store`
//! documentation promises.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use serde_json::json;
use tugboot_store::{
    DeviceCert, Image, LeaseClient, LeasePool, LeaseRequest, LeaseState, MacAddr, MachineId,
    MachineSighting, MachineState, NewRollout, Report, RolloutStage, RolloutState,
    RolloutThresholds, RolloutTransition, Slot, Store, StoreError, WriteOutcome,
};

use crate::backends::Backend;

pub fn mac(n: u32) -> MacAddr {
    let [a, b, c, d] = n.to_be_bytes();
    MacAddr([0x02, 0x00, a, b, c, d])
}

pub fn sighting(n: u32) -> MachineSighting {
    MachineSighting {
        mac: mac(n),
        smbios_uuid: None,
        serial: None,
        board: None,
    }
}

pub fn client(n: u32) -> LeaseClient {
    let m = mac(n);
    let mut client_id = vec![1];
    client_id.extend_from_slice(&m.0);
    LeaseClient {
        client_id,
        mac: m,
        hostname: Some(format!("host{n}")),
    }
}

pub fn request(pool: &str, n: u32, state: LeaseState, expires_at: i64) -> LeaseRequest {
    LeaseRequest {
        pool: pool.into(),
        client: client(n),
        requested: None,
        state,
        expires_at,
    }
}

pub fn report(device: MachineId, id: &str, received_at: i64) -> Report {
    Report {
        device,
        report_id: id.into(),
        boot_id: "6c1f0e8e-boot".into(),
        slot: Slot::B,
        image_version: 7,
        checks: json!({"disk": "ok", "net": {"ok": true, "rtt_ms": 3}}),
        uptime_secs: 120,
        last_error: None,
        received_at,
    }
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

fn digest(fill: char) -> String {
    std::iter::repeat_n(fill, 64).collect()
}

pub async fn machines_crud<B: Backend>(b: &B) {
    let s = b.open().await;
    let m = s.record_sighting(&sighting(1), 100).await.unwrap();
    assert_eq!(m.mac, mac(1));
    assert_eq!(m.state, MachineState::Unknown);
    assert_eq!((m.first_seen, m.last_seen), (100, 100));
    assert!(m.labels.is_empty() && m.serial.is_none() && m.last_booted_image.is_none());

    // A later sighting fills in what it adds, keeps the rest, and moves last_seen.
    let with_ids = MachineSighting {
        smbios_uuid: Some("4c4c4544-0042".into()),
        serial: Some("SN-1".into()),
        board: Some("rpi4".into()),
        ..sighting(1)
    };
    let m2 = s.record_sighting(&with_ids, 200).await.unwrap();
    assert_eq!(m2.id, m.id);
    assert_eq!((m2.first_seen, m2.last_seen), (100, 200));
    assert_eq!(m2.serial.as_deref(), Some("SN-1"));
    let m3 = s.record_sighting(&sighting(1), 150).await.unwrap();
    assert_eq!(
        m3.last_seen, 200,
        "an older sighting does not move last_seen back"
    );
    assert_eq!(
        m3.smbios_uuid.as_deref(),
        Some("4c4c4544-0042"),
        "absent ids keep the stored ones"
    );
    assert_eq!(m3.board.as_deref(), Some("rpi4"));

    let other = s.record_sighting(&sighting(2), 300).await.unwrap();
    assert_ne!(other.id, m.id);

    assert_eq!(s.get_machine(m.id).await.unwrap(), Some(m3.clone()));
    assert_eq!(
        s.find_machine_by_mac(mac(1)).await.unwrap(),
        Some(m3.clone())
    );
    assert_eq!(s.find_machine_by_mac(mac(3)).await.unwrap(), None);
    assert_eq!(
        s.find_machine_by_serial("SN-1")
            .await
            .unwrap()
            .map(|m| m.id),
        Some(m.id)
    );
    assert_eq!(s.find_machine_by_serial("SN-2").await.unwrap(), None);

    let approved = s
        .set_machine_state(m.id, MachineState::Approved)
        .await
        .unwrap();
    assert_eq!(approved.state, MachineState::Approved);
    let labels: BTreeMap<String, String> = [
        ("rack".to_owned(), "r12".to_owned()),
        ("site".to_owned(), "lab".to_owned()),
    ]
    .into();
    let assigned = s
        .assign_machine(m.id, Some("rpi5"), Some("edge"), &labels)
        .await
        .unwrap();
    assert_eq!(assigned.board.as_deref(), Some("rpi5"));
    assert_eq!(assigned.profile.as_deref(), Some("edge"));
    assert_eq!(assigned.labels, labels);
    let booted = s.record_boot(m.id, "edge-gw@7", 400).await.unwrap();
    assert_eq!(booted.last_booted_image.as_deref(), Some("edge-gw@7"));
    assert_eq!(booted.last_seen, 400);
    assert_eq!(booted.state, MachineState::Approved);

    let all = s.list_machines().await.unwrap();
    assert_eq!(
        all.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![m.id, other.id]
    );
    assert_eq!(all[0], booted);

    assert!(s.delete_machine(other.id).await.unwrap());
    assert!(!s.delete_machine(other.id).await.unwrap());
    assert_eq!(s.get_machine(other.id).await.unwrap(), None);
    assert!(matches!(
        s.set_machine_state(other.id, MachineState::Revoked).await,
        Err(StoreError::NotFound {
            entity: "machine",
            ..
        })
    ));
    assert!(matches!(
        s.record_boot(other.id, "x@1", 1).await,
        Err(StoreError::NotFound { .. })
    ));
}

pub async fn machines_reject_bad_input<B: Backend>(b: &B) {
    let s = b.open().await;
    let long = MachineSighting {
        serial: Some("x".repeat(256)),
        ..sighting(9)
    };
    assert!(matches!(
        s.record_sighting(&long, 1).await,
        Err(StoreError::InvalidInput {
            field: "serial",
            ..
        })
    ));
    let control = MachineSighting {
        board: Some("rpi\n4".into()),
        ..sighting(9)
    };
    assert!(matches!(
        s.record_sighting(&control, 1).await,
        Err(StoreError::InvalidInput { field: "board", .. })
    ));
    assert_eq!(
        s.list_machines().await.unwrap(),
        vec![],
        "rejected input writes nothing"
    );

    let m = s.record_sighting(&sighting(9), 1).await.unwrap();
    let huge: BTreeMap<String, String> = (0..200)
        .map(|i| (format!("label-{i:03}"), "v".repeat(200)))
        .collect();
    assert!(matches!(
        s.assign_machine(m.id, None, None, &huge).await,
        Err(StoreError::InvalidInput {
            field: "labels",
            ..
        })
    ));
    assert!(
        s.get_machine(m.id)
            .await
            .unwrap()
            .unwrap()
            .labels
            .is_empty()
    );
}

pub async fn corrupt_rows_are_errors<B: Backend>(b: &B) {
    let s = b.open().await;
    let m = s.record_sighting(&sighting(5), 1).await.unwrap();
    b.exec_raw("UPDATE machines SET labels = 'not json', mac = 'zz'")
        .await;
    assert!(matches!(
        s.get_machine(m.id).await,
        Err(StoreError::CorruptRow {
            table: "machines",
            ..
        })
    ));
    assert!(matches!(
        s.list_machines().await,
        Err(StoreError::CorruptRow { .. })
    ));
}

pub async fn leases_lifecycle<B: Backend>(b: &B) {
    let s = b.open().await;
    let pool = LeasePool {
        name: "lab".into(),
        first: ip(10),
        last: ip(13),
    };
    assert_eq!(s.add_pool(&pool, 0).await.unwrap(), 4);
    assert_eq!(
        s.add_pool(&pool, 0).await.unwrap(),
        0,
        "adding the same pool again is a no-op"
    );
    let moved = LeasePool {
        last: ip(20),
        ..pool.clone()
    };
    assert!(matches!(
        s.add_pool(&moved, 0).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    let huge = LeasePool {
        name: "big".into(),
        first: Ipv4Addr::new(10, 0, 0, 0),
        last: Ipv4Addr::new(10, 2, 0, 0),
    };
    assert!(matches!(
        s.add_pool(&huge, 0).await,
        Err(StoreError::InvalidInput { .. })
    ));

    // Offer, then bind: the same address both times.
    let offer = s
        .allocate_lease(&request("lab", 1, LeaseState::Offered, 1060), 1000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(offer.addr, ip(10));
    assert_eq!(offer.state, LeaseState::Offered);
    assert_eq!(offer.mac, Some(mac(1)));
    assert_eq!(offer.hostname.as_deref(), Some("host1"));
    let bound = s
        .allocate_lease(&request("lab", 1, LeaseState::Bound, 4600), 1001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (bound.addr, bound.state, bound.expires_at),
        (ip(10), LeaseState::Bound, 4600)
    );
    assert_eq!(
        s.get_lease("lab", ip(10)).await.unwrap(),
        Some(bound.clone())
    );

    let b2 = s
        .allocate_lease(&request("lab", 2, LeaseState::Bound, 4600), 1002)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b2.addr, ip(11));
    // A requested address is honoured when free...
    let mut wants_13 = request("lab", 3, LeaseState::Bound, 4600);
    wants_13.requested = Some(ip(13));
    assert_eq!(
        s.allocate_lease(&wants_13, 1003)
            .await
            .unwrap()
            .unwrap()
            .addr,
        ip(13)
    );
    // ...but never taken from its holder.
    let mut wants_10 = request("lab", 4, LeaseState::Offered, 1100);
    wants_10.requested = Some(ip(10));
    assert_eq!(
        s.allocate_lease(&wants_10, 1004)
            .await
            .unwrap()
            .unwrap()
            .addr,
        ip(12)
    );
    assert_eq!(
        s.claim_lease("lab", ip(10), &client(5), LeaseState::Bound, 4600, 1005)
            .await
            .unwrap(),
        None
    );
    // Exhausted.
    assert_eq!(
        s.allocate_lease(&request("lab", 5, LeaseState::Offered, 1100), 1005)
            .await
            .unwrap(),
        None
    );
    // Out of the pool.
    assert_eq!(
        s.claim_lease("lab", ip(99), &client(5), LeaseState::Bound, 4600, 1005)
            .await
            .unwrap(),
        None
    );

    let active = s.list_active_leases("lab", 1005).await.unwrap();
    assert_eq!(
        active.iter().map(|l| l.addr).collect::<Vec<_>>(),
        vec![ip(10), ip(11), ip(12), ip(13)]
    );

    // Release: only by the holder, only once.
    assert!(
        !s.release_lease("lab", ip(10), &client(2).client_id, 1010)
            .await
            .unwrap()
    );
    assert!(
        s.release_lease("lab", ip(10), &client(1).client_id, 1010)
            .await
            .unwrap()
    );
    assert!(
        !s.release_lease("lab", ip(10), &client(1).client_id, 1011)
            .await
            .unwrap()
    );
    assert_eq!(
        s.get_lease("lab", ip(10)).await.unwrap().unwrap().state,
        LeaseState::Released
    );
    // The released address goes to the next client.
    assert_eq!(
        s.allocate_lease(&request("lab", 5, LeaseState::Bound, 4600), 1012)
            .await
            .unwrap()
            .unwrap()
            .addr,
        ip(10)
    );

    // The offer to client 4 expires at 1100: after that its address can be taken.
    assert_eq!(
        s.allocate_lease(&request("lab", 6, LeaseState::Offered, 1200), 1099)
            .await
            .unwrap(),
        None
    );
    let late = s
        .allocate_lease(&request("lab", 6, LeaseState::Offered, 5000), 1100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late.addr, ip(12));
    assert_eq!(late.client_id, Some(client(6).client_id));

    // Decline: quarantined until `until`, then reusable.
    assert!(
        s.decline_lease("lab", ip(11), &client(2).client_id, 2000, 1101)
            .await
            .unwrap()
    );
    let declined = s.get_lease("lab", ip(11)).await.unwrap().unwrap();
    assert_eq!(
        (declined.state, declined.client_id, declined.expires_at),
        (LeaseState::Declined, None, 2000)
    );
    assert_eq!(
        s.allocate_lease(&request("lab", 7, LeaseState::Bound, 9000), 1999)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        s.allocate_lease(&request("lab", 7, LeaseState::Bound, 9000), 2000)
            .await
            .unwrap()
            .unwrap()
            .addr,
        ip(11)
    );

    // A client asking for another free address moves there and frees its old one.
    assert!(
        s.release_lease("lab", ip(13), &client(3).client_id, 2001)
            .await
            .unwrap()
    );
    let moved = s
        .claim_lease("lab", ip(13), &client(7), LeaseState::Bound, 9000, 2002)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.addr, ip(13));
    let old = s.get_lease("lab", ip(11)).await.unwrap().unwrap();
    assert_eq!((old.state, old.client_id), (LeaseState::Free, None));

    // Renewal by the holder.
    let renewed = s
        .claim_lease("lab", ip(13), &client(7), LeaseState::Bound, 12_000, 8000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(renewed.expires_at, 12_000);

    // Unknown pool: nothing to allocate; bad requests rejected before the database.
    assert_eq!(
        s.allocate_lease(&request("nope", 1, LeaseState::Offered, 10), 1)
            .await
            .unwrap(),
        None
    );
    let mut bad = request("lab", 8, LeaseState::Free, 10);
    assert!(matches!(
        s.allocate_lease(&bad, 1).await,
        Err(StoreError::InvalidInput { .. })
    ));
    bad.state = LeaseState::Offered;
    bad.client.client_id.clear();
    assert!(matches!(
        s.allocate_lease(&bad, 1).await,
        Err(StoreError::InvalidInput {
            field: "client_id",
            ..
        })
    ));
}

/// Two independent stores (two connection pools: two servers) race many clients for a pool
/// with fewer addresses than clients, all released at once by a barrier, over several rounds.
/// Every address goes to exactly one client, and the database agrees with what callers were
/// told.
pub async fn lease_allocation_is_atomic_across_stores<B: Backend>(b: &B) {
    const ROUNDS: u32 = 6;
    const ADDRESSES: u32 = 32;
    const CLIENTS_PER_STORE: u32 = 48;
    let (s1, s2) = (Arc::new(b.open().await), Arc::new(b.open().await));
    for round in 0..ROUNDS {
        let name = format!("race{round}");
        let first = Ipv4Addr::new(10, 9, u8::try_from(round).unwrap(), 1);
        let last = Ipv4Addr::from(u32::from(first) + ADDRESSES - 1);
        s1.add_pool(
            &LeasePool {
                name: name.clone(),
                first,
                last,
            },
            0,
        )
        .await
        .unwrap();

        let clients = 2 * CLIENTS_PER_STORE;
        let barrier = Arc::new(tokio::sync::Barrier::new(clients as usize));
        let mut tasks = Vec::new();
        for i in 0..clients {
            let n = round * 1000 + i;
            let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
            let (barrier, name) = (barrier.clone(), name.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let got = s
                    .allocate_lease(&request(&name, n, LeaseState::Bound, 10_000), 100)
                    .await
                    .unwrap();
                (n, got)
            }));
        }
        let mut winners = BTreeMap::new();
        for t in tasks {
            let (n, got) = t.await.unwrap();
            if let Some(lease) = got {
                assert_eq!(lease.client_id, Some(client(n).client_id));
                if let Some(other) = winners.insert(lease.addr, n) {
                    panic!(
                        "round {round}: address {} handed out to clients {other} and {n}",
                        lease.addr
                    );
                }
            }
        }
        assert_eq!(
            winners.len(),
            ADDRESSES as usize,
            "round {round}: every address handed out exactly once"
        );

        let active = s1.list_active_leases(&name, 100).await.unwrap();
        assert_eq!(active.len(), ADDRESSES as usize);
        for lease in active {
            assert_eq!(
                lease.client_id,
                Some(client(winners[&lease.addr]).client_id),
                "round {round}: {}",
                lease.addr
            );
        }
    }
}

/// The same client asking through both stores at once (DHCP retransmissions reaching two
/// servers) gets one address, not two.
pub async fn lease_same_client_races_get_one_address<B: Backend>(b: &B) {
    let (s1, s2) = (Arc::new(b.open().await), Arc::new(b.open().await));
    s1.add_pool(
        &LeasePool {
            name: "dup".into(),
            first: ip(100),
            last: ip(131),
        },
        0,
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { s1.clone() } else { s2.clone() };
        tasks.push(tokio::spawn(async move {
            s.allocate_lease(&request("dup", 42, LeaseState::Offered, 500), 100)
                .await
                .unwrap()
                .unwrap()
                .addr
        }));
    }
    let mut addrs = BTreeSet::new();
    for t in tasks {
        addrs.insert(t.await.unwrap());
    }
    assert_eq!(addrs.len(), 1, "one client, one address: {addrs:?}");
    assert_eq!(s2.list_active_leases("dup", 100).await.unwrap().len(), 1);
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
        .list_images("edge-gw")
        .await
        .unwrap()
        .iter()
        .map(|i| i.version)
        .collect();
    assert_eq!(versions, vec![1, 2]);
    assert!(s.list_images("other").await.unwrap().is_empty());

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

pub async fn reports_are_idempotent<B: Backend>(b: &B) {
    let s = b.open().await;
    let dev = s.record_sighting(&sighting(1), 1).await.unwrap().id;
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
        slot: Slot::A,
        ..report(dev, "r-2", 200)
    };
    assert_eq!(
        s.insert_report(&second).await.unwrap(),
        WriteOutcome::Inserted
    );
    // The same report id from another device is another report.
    let other = s.record_sighting(&sighting(2), 1).await.unwrap().id;
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
    let dev = s1.record_sighting(&sighting(1), 1).await.unwrap().id;
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
    let dev = s.record_sighting(&sighting(1), 1).await.unwrap().id;
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
        dev = s.record_sighting(&sighting(1), 1).await.unwrap().id;
        s.add_pool(
            &LeasePool {
                name: "p".into(),
                first: ip(1),
                last: ip(2),
            },
            0,
        )
        .await
        .unwrap();
        s.allocate_lease(&request("p", 1, LeaseState::Bound, 100), 1)
            .await
            .unwrap()
            .unwrap();
        s.insert_report(&report(dev, "r", 5)).await.unwrap();
        s.put_image(&image(1, 'a')).await.unwrap();
    }
    let s = b.open().await;
    assert!(s.get_machine(dev).await.unwrap().is_some());
    assert_eq!(
        s.get_lease("p", ip(1)).await.unwrap().unwrap().client_id,
        Some(client(1).client_id)
    );
    assert_eq!(s.count_reports().await.unwrap(), 1);
    assert_eq!(
        s.get_image("edge-gw", 1).await.unwrap(),
        Some(image(1, 'a'))
    );
    assert_eq!(
        s.add_pool(
            &LeasePool {
                name: "p".into(),
                first: ip(1),
                last: ip(2)
            },
            0
        )
        .await
        .unwrap(),
        0
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
    let m = stores[0].record_sighting(&sighting(1), 1).await.unwrap();
    for s in &stores {
        assert_eq!(
            s.get_machine(m.id).await.unwrap().map(|m| m.mac),
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
