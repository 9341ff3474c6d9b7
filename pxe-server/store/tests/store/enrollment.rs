//! Enrollment in the store (schema v3): tokens, the one active enrollment per machine, the cap
//! on pending requests, and races between requests and between servers (several stores on one
//! database). Every case runs on both backends.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use sha2::{Digest as _, Sha256};
use tugboot_fleet::facts::Observer;
use tugboot_fleet::observe::observed;
use tugboot_store::{
    EnrollAttempt, EnrollOutcome, EnrollRefusal, EnrolledCert, MachineId, MachineState,
    NewEnrollmentToken, Store,
};

use crate::backends::Backend;
use crate::cases::mac;

const NOW: i64 = 1_780_000_000;

fn sha(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn attempt(n: u32, key: &str, token: Option<&str>, now: i64) -> EnrollAttempt {
    EnrollAttempt {
        mac: mac(n),
        serial: Some(format!("SN{n}")),
        facts: observed(Observer::Http, now, &[("serial", &format!("SN{n}"))]),
        key_sha256: sha(key),
        token_hash: token.map(sha),
        max_pending: 1000,
        replay_window_secs: 3600,
        now,
    }
}

static SERIAL: AtomicU32 = AtomicU32::new(1);

/// What the CA would hand back: a fresh serial each time.
fn fake_ca(device: MachineId) -> Result<EnrolledCert, String> {
    let n = SERIAL.fetch_add(1, Ordering::Relaxed);
    Ok(EnrolledCert {
        serial: format!(
            "{:032x}",
            (u128::from(n) << 64) | u128::from(device.0.unsigned_abs())
        ),
        pem: format!("PEM for device {device} #{n}"),
        not_after: NOW + 90 * 86_400,
    })
}

fn never(_: MachineId) -> Result<EnrolledCert, String> {
    panic!("no certificate may be issued here")
}

async fn token<S: Store>(s: &S, text: &str, mac_n: Option<u32>, serial: Option<&str>) {
    s.create_enrollment_token(&NewEnrollmentToken {
        hash: sha(text),
        created_at: NOW,
        expires_at: NOW + 3600,
        bound_mac: mac_n.map(mac),
        bound_serial: serial.map(str::to_owned),
    })
    .await
    .unwrap();
}

fn refused(o: &EnrollOutcome) -> Option<EnrollRefusal> {
    match o {
        EnrollOutcome::Refused { reason, .. } => Some(*reason),
        _ => None,
    }
}

fn issued(o: &EnrollOutcome) -> (MachineId, String) {
    match o {
        EnrollOutcome::Issued { device, cert, .. } => (*device, cert.serial.clone()),
        other => panic!("expected a certificate, got {other:?}"),
    }
}

pub async fn tokens_are_single_use_bound_and_expire<B: Backend>(b: &B) {
    let s = b.open().await;
    token(&s, "plain", None, None).await;
    token(&s, "for-mac-7", Some(7), None).await;
    token(&s, "for-sn-8", None, Some("SN8")).await;
    assert!(matches!(
        s.create_enrollment_token(&NewEnrollmentToken {
            hash: sha("plain"),
            created_at: NOW,
            expires_at: NOW + 1,
            bound_mac: None,
            bound_serial: None,
        })
        .await,
        Err(tugboot_store::StoreError::AlreadyExists { .. })
    ));

    // Refusals write nothing: no machine is created for them.
    let o = s
        .enroll(&attempt(1, "k1", Some("nope"), NOW), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::UnknownToken));
    let o = s
        .enroll(&attempt(1, "k1", Some("for-mac-7"), NOW), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::TokenBound));
    let o = s
        .enroll(&attempt(1, "k1", Some("for-sn-8"), NOW), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::TokenBound));
    let o = s
        .enroll(&attempt(1, "k1", Some("plain"), NOW + 3600), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::TokenExpired));
    assert!(s.list_machines().await.unwrap().is_empty());

    let (d1, _) = issued(
        &s.enroll(&attempt(1, "k1", Some("plain"), NOW), fake_ca)
            .await
            .unwrap(),
    );
    let (d7, _) = issued(
        &s.enroll(&attempt(7, "k7", Some("for-mac-7"), NOW), fake_ca)
            .await
            .unwrap(),
    );
    let (d8, _) = issued(
        &s.enroll(&attempt(8, "k8", Some("for-sn-8"), NOW), fake_ca)
            .await
            .unwrap(),
    );
    for (id, state) in [
        (d1, MachineState::Approved),
        (d7, MachineState::Approved),
        (d8, MachineState::Approved),
    ] {
        assert_eq!(s.get_machine(id).await.unwrap().unwrap().state, state);
    }
    // Used: never again, for any machine.
    let o = s
        .enroll(&attempt(2, "k2", Some("plain"), NOW), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::TokenUsed));
    let tokens = s.list_enrollment_tokens().await.unwrap();
    assert_eq!(tokens.len(), 3);
    let plain = tokens.iter().find(|t| t.hash == sha("plain")).unwrap();
    assert_eq!((plain.used_at, plain.used_by), (Some(NOW), Some(d1)));
    let bound = tokens.iter().find(|t| t.hash == sha("for-mac-7")).unwrap();
    assert_eq!(bound.bound_mac, Some(mac(7)));
    assert_eq!(bound.used_by, Some(d7));
}

pub async fn a_token_never_enrolls_an_enrolled_identity<B: Backend>(b: &B) {
    let s = b.open().await;
    token(&s, "first", None, None).await;
    token(&s, "second", None, None).await;
    let (d, _) = issued(
        &s.enroll(&attempt(3, "device-key", Some("first"), NOW), fake_ca)
            .await
            .unwrap(),
    );
    // Someone who learnt the MAC and holds a token gets no second identity ...
    let o = s
        .enroll(&attempt(3, "attacker-key", Some("second"), NOW), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::AlreadyEnrolled));
    // ... and the token stays unused.
    let second = s
        .list_enrollment_tokens()
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.hash == sha("second"))
        .unwrap();
    assert_eq!(second.used_at, None);
    assert_eq!(s.list_device_certs(d).await.unwrap().len(), 1);
}

pub async fn repeated_requests_get_the_same_certificate<B: Backend>(b: &B) {
    let s = b.open().await;
    let m = s.observe(&[crate::cases::sighting(4)], NOW).await.unwrap()[0];
    s.set_machine_state(m, MachineState::Approved)
        .await
        .unwrap();
    let first = s
        .enroll(&attempt(4, "k4", None, NOW), fake_ca)
        .await
        .unwrap();
    let (d, serial) = issued(&first);
    assert_eq!(d, m);
    // The answer was lost; the device asks again with the same key: the same certificate,
    // nothing new written.
    let again = s
        .enroll(&attempt(4, "k4", None, NOW + 60), never)
        .await
        .unwrap();
    assert!(
        matches!(&again, EnrollOutcome::Issued { repeated: true, cert, .. } if cert.serial == serial)
    );
    // The same CSR replayed for another machine: refused.
    let o = s
        .enroll(&attempt(5, "k4", None, NOW + 60), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::KeyInUse));
    // After the replay window: enrolled, renew over mutual TLS.
    let o = s
        .enroll(&attempt(4, "k4", None, NOW + 3601), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::AlreadyEnrolled));
    assert_eq!(s.list_device_certs(m).await.unwrap().len(), 1);
}

pub async fn revocation_needs_the_operator_to_enroll_again<B: Backend>(b: &B) {
    let s = b.open().await;
    let m = s.observe(&[crate::cases::sighting(6)], NOW).await.unwrap()[0];
    s.set_machine_state(m, MachineState::Approved)
        .await
        .unwrap();
    let (_, serial) = issued(
        &s.enroll(&attempt(6, "k6", None, NOW), fake_ca)
            .await
            .unwrap(),
    );
    // One certificate revoked: the machine is still approved, but its MAC alone buys no new
    // identity.
    s.revoke_device_cert(&serial, NOW + 1).await.unwrap();
    let o = s
        .enroll(&attempt(6, "new-key", None, NOW + 2), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::AlreadyEnrolled));
    // The operator approves it again: one enrollment, with the device's own key.
    s.set_machine_state(m, MachineState::Approved)
        .await
        .unwrap();
    let (_, serial2) = issued(
        &s.enroll(&attempt(6, "k6", None, NOW + 3), fake_ca)
            .await
            .unwrap(),
    );
    let o = s
        .enroll(&attempt(6, "new-key", None, NOW + 4), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::AlreadyEnrolled));
    // Approving again while a certificate is live changes nothing.
    s.set_machine_state(m, MachineState::Approved)
        .await
        .unwrap();
    let o = s
        .enroll(&attempt(6, "other-key", None, NOW + 5), never)
        .await
        .unwrap();
    assert_eq!(refused(&o), Some(EnrollRefusal::AlreadyEnrolled));
    // Revoking the machine: refused until approved again, also with a token.
    s.set_machine_state(m, MachineState::Revoked).await.unwrap();
    s.revoke_device_cert(&serial2, NOW + 6).await.unwrap();
    token(&s, "t6", None, None).await;
    for t in [None, Some("t6")] {
        let o = s
            .enroll(&attempt(6, "k6", t, NOW + 7), never)
            .await
            .unwrap();
        assert_eq!(refused(&o), Some(EnrollRefusal::MachineRevoked));
    }
    s.set_machine_state(m, MachineState::Approved)
        .await
        .unwrap();
    issued(
        &s.enroll(&attempt(6, "k6", Some("t6"), NOW + 8), fake_ca)
            .await
            .unwrap(),
    );
    assert_eq!(s.list_device_certs(m).await.unwrap().len(), 3);
}

pub async fn pending_requests_are_capped_and_written_once<B: Backend>(b: &B) {
    let s = b.open().await;
    let with_cap = |n: u32, key: &str| EnrollAttempt {
        max_pending: 3,
        ..attempt(n, key, None, NOW)
    };
    for n in 10..13 {
        let o = s
            .enroll(&with_cap(n, &format!("k{n}")), never)
            .await
            .unwrap();
        assert!(
            matches!(o, EnrollOutcome::Pending { recorded: true, .. }),
            "{o:?}"
        );
    }
    for n in 13..20 {
        let o = s
            .enroll(&with_cap(n, &format!("k{n}")), never)
            .await
            .unwrap();
        assert_eq!(refused(&o), Some(EnrollRefusal::PendingFull));
    }
    assert_eq!(s.list_machines().await.unwrap().len(), 3);
    // A waiting device polls: nothing is written (not even last_seen).
    let o = s
        .enroll(
            &EnrollAttempt {
                now: NOW + 30,
                ..with_cap(10, "k10")
            },
            never,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            o,
            EnrollOutcome::Pending {
                recorded: false,
                ..
            }
        ),
        "{o:?}"
    );
    let m10 = s.find_machine_by_mac(mac(10)).await.unwrap().unwrap();
    assert_eq!(m10.last_seen, NOW);
    assert_eq!(
        m10.facts.get("serial").map(|f| f.value.as_str()),
        Some("SN10")
    );
    // Approving one makes room and lets it enroll.
    s.set_machine_state(m10.id, MachineState::Approved)
        .await
        .unwrap();
    issued(&s.enroll(&with_cap(10, "k10"), fake_ca).await.unwrap());
    let o = s.enroll(&with_cap(13, "k13"), never).await.unwrap();
    assert!(
        matches!(o, EnrollOutcome::Pending { recorded: true, .. }),
        "{o:?}"
    );
    // A machine seen by DHCP asks: its request is recorded whatever the cap (it exists anyway).
    s.observe(&[crate::cases::sighting(30)], NOW).await.unwrap();
    let o = s.enroll(&with_cap(30, "k30"), never).await.unwrap();
    assert!(
        matches!(o, EnrollOutcome::Pending { recorded: true, .. }),
        "{o:?}"
    );
}

/// Issue #11 item 4: many requests at once for one approved machine, spread over several stores
/// on one database (several servers): exactly one certificate, every round.
pub async fn concurrent_enrollments_issue_one_certificate<B: Backend>(b: &B) {
    let stores: Vec<Arc<B::S>> = vec![
        Arc::new(b.open().await),
        Arc::new(b.open().await),
        Arc::new(b.open().await),
    ];
    for round in 0..5u32 {
        let n = 100 + round;
        let m = stores[0]
            .observe(&[crate::cases::sighting(n)], NOW)
            .await
            .unwrap()[0];
        stores[0]
            .set_machine_state(m, MachineState::Approved)
            .await
            .unwrap();
        // Half the requests carry a token of their own (for the same MAC), half none.
        for i in 0..20 {
            token(&*stores[0], &format!("r{round}-t{i}"), None, None).await;
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(40));
        let mut tasks = Vec::new();
        for i in 0..40u32 {
            let s = Arc::clone(&stores[usize::try_from(i).unwrap() % stores.len()]);
            let barrier = Arc::clone(&barrier);
            tasks.push(tokio::spawn(async move {
                let t = (i < 20).then(|| format!("r{round}-t{i}"));
                let a = attempt(n, &format!("r{round}-k{i}"), t.as_deref(), NOW);
                barrier.wait().await;
                s.enroll(&a, fake_ca).await.unwrap()
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let o = t.await.unwrap();
            match &o {
                EnrollOutcome::Issued { device, .. } => winners.push(*device),
                EnrollOutcome::Refused {
                    reason: EnrollRefusal::AlreadyEnrolled,
                    ..
                } => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
        assert_eq!(winners, vec![m], "round {round}: exactly one certificate");
        assert_eq!(
            stores[0].list_device_certs(m).await.unwrap().len(),
            1,
            "round {round}"
        );
        let used: Vec<_> = stores[0]
            .list_enrollment_tokens()
            .await
            .unwrap()
            .into_iter()
            .filter(|t| t.used_at.is_some())
            .filter(|t| (0..20).any(|i| t.hash == sha(&format!("r{round}-t{i}"))))
            .collect();
        assert!(
            used.len() <= 1,
            "round {round}: {} tokens spent for one certificate",
            used.len()
        );
    }
    // Forty new machines with one token each at once: forty certificates, all distinct.
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        token(&*stores[0], &format!("many-{i}"), None, None).await;
        let s = Arc::clone(&stores[usize::try_from(i).unwrap() % stores.len()]);
        tasks.push(tokio::spawn(async move {
            s.enroll(
                &attempt(
                    200 + i,
                    &format!("many-k{i}"),
                    Some(&format!("many-{i}")),
                    NOW,
                ),
                fake_ca,
            )
            .await
            .unwrap()
        }));
    }
    let mut devices = BTreeSet::new();
    for t in tasks {
        devices.insert(issued(&t.await.unwrap()).0);
    }
    assert_eq!(devices.len(), 40);
}
