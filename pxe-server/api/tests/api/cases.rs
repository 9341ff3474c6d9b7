//! The cases, each an async fn over a store location, run once per backend by `main.rs`.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, SanType,
};
use tugboot_api::client::ApiClient;
use tugboot_store::{DeviceCert, MachineId, Store};

use crate::harness::{Device, Fleet, SERVER_NAME, outcome_report, real_now, status_report};

fn text(r: &tugboot_api::client::HttpResponse) -> String {
    format!("{} {}", r.status, String::from_utf8_lossy(&r.body))
}

pub async fn no_client_certificate_is_refused(url: &str) {
    let f = Fleet::start(url).await;
    let c = f.anonymous();
    for path in ["/api/v1/device/assignment", "/api/v1/devices/1/assignment"] {
        let r = c.get(path).await.unwrap();
        assert_eq!(r.status, 401, "{path}: {}", text(&r));
    }
    let r = c
        .post_json("/api/v1/device/reports", &status_report("r"))
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(f.store.count_reports().await.unwrap(), 0);
}

/// A device certificate from another CA (same URI SAN): the handshake fails.
pub async fn certificate_of_another_ca_is_refused(url: &str) {
    let f = Fleet::start(url).await;
    let d = f.enrolled(1).await;
    let other = tugboot_api::CertAuthority::generate("rogue CA", real_now(), 86_400).unwrap();
    let forged = other
        .issue_device(&d.csr_pem, MachineId(d.id), real_now(), 3600)
        .unwrap();
    let c = ApiClient::new(
        f.handle.addr,
        SERVER_NAME,
        &f.ca_pem,
        Some((&forged.pem, &d.key_pem)),
    )
    .unwrap();
    let r = c.get("/api/v1/device/assignment").await;
    assert!(r.is_err(), "forged certificate accepted: {r:?}");
    // A self-signed CA certificate with the device URI, presented directly: refused too.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "device-1");
    p.subject_alt_names = vec![SanType::URI(
        format!("urn:tugboot:device:{}", d.id).try_into().unwrap(),
    )];
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let selfsigned = p.self_signed(&key).unwrap();
    let c = ApiClient::new(
        f.handle.addr,
        SERVER_NAME,
        &f.ca_pem,
        Some((&selfsigned.pem(), &key.serialize_pem())),
    )
    .unwrap();
    assert!(c.get("/api/v1/device/assignment").await.is_err());
    // The genuine one works.
    let r = f.client(&d).get("/api/v1/device/assignment").await.unwrap();
    assert_eq!(r.status, 204, "{}", text(&r));
}

/// A certificate of the right CA, on record, but expired: the TLS verifier refuses it.
pub async fn expired_certificate_is_refused(url: &str) {
    let f = Fleet::start(url).await;
    let mut d = f.enrolled(1).await;
    let now = real_now();
    let old =
        f.ca.issue_device_between(&d.csr_pem, MachineId(d.id), now - 10 * 86_400, now - 86_400)
            .unwrap();
    f.store
        .insert_device_cert(&DeviceCert {
            serial: old.serial.clone(),
            device: MachineId(d.id),
            issued_at: now - 10 * 86_400,
            not_after: old.not_after,
            revoked_at: None,
        })
        .await
        .unwrap();
    d.cert_pem = Some(old.pem);
    assert!(f.client(&d).get("/api/v1/device/assignment").await.is_err());
}

/// Revocation is checked on every request, against the store.
pub async fn revoked_certificate_is_refused(url: &str) {
    let f = Fleet::start(url).await;
    let d = f.enrolled(1).await;
    let other = f.enrolled(2).await;
    let c = f.client(&d);
    assert_eq!(
        c.get("/api/v1/device/assignment").await.unwrap().status,
        204
    );
    let serial = f.store.list_device_certs(MachineId(d.id)).await.unwrap()[0]
        .serial
        .clone();
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/certificates/{serial}/revoke"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = c.get("/api/v1/device/assignment").await.unwrap();
    assert_eq!(r.status, 403, "{}", text(&r));
    let r = c
        .post_json("/api/v1/device/reports", &status_report("after-revoke"))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // Revoking the machine refuses its other certificates and re-enrollment.
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/machines/{}/revoke", other.id),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(
        f.client(&other)
            .get("/api/v1/device/assignment")
            .await
            .unwrap()
            .status,
        403
    );
    let token = f.new_token().await;
    let mut again = other.clone();
    assert_eq!(f.enroll(&mut again, Some(&token)).await.status, 403);
    // A CA-signed certificate that is not on record (never issued through enrollment).
    let mut ghost = Device::new(99);
    let unrecorded =
        f.ca.issue_device(&ghost.csr_pem, MachineId(d.id), real_now(), 3600)
            .unwrap();
    ghost.cert_pem = Some(unrecorded.pem);
    assert_eq!(
        f.client(&ghost)
            .get("/api/v1/device/assignment")
            .await
            .unwrap()
            .status,
        403
    );
}

/// Certificate of device X, URL or body naming device Y: 403, nothing stored.
pub async fn impersonation_is_refused(url: &str) {
    let f = Fleet::start(url).await;
    let x = f.enrolled(1).await;
    let y = f.enrolled(2).await;
    let c = f.client(&x);
    let r = c
        .get(&format!("/api/v1/devices/{}/assignment", y.id))
        .await
        .unwrap();
    assert_eq!(r.status, 403, "{}", text(&r));
    let r = c
        .post_json(
            &format!("/api/v1/devices/{}/reports", y.id),
            &status_report("i1"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    let mut body = status_report("i2");
    body["device_id"] = y.id.into();
    let r = c.post_json("/api/v1/device/reports", &body).await.unwrap();
    assert_eq!(r.status, 403);
    // Other spellings of an id are not the id.
    let r = c
        .get(&format!("/api/v1/devices/0{}/assignment", x.id))
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(f.store.count_reports().await.unwrap(), 0);
    // Its own id works.
    let r = c
        .post_json(
            &format!("/api/v1/devices/{}/reports", x.id),
            &status_report("i3"),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let metrics = String::from_utf8(f.anonymous().get("/metrics").await.unwrap().body).unwrap();
    assert!(
        metrics.contains("tugboot_api_refusals_total{reason=\"impersonation\"} 4"),
        "{metrics}"
    );
}

pub async fn enrollment_tokens_are_single_use(url: &str) {
    let f = Fleet::start(url).await;
    let token = f.new_token().await;
    let mut a = Device::new(1);
    let r = f.enroll(&mut a, Some("not-a-token")).await;
    assert_eq!(r.status, 403, "{}", text(&r));
    assert!(a.cert_pem.is_none());
    let r = f.enroll(&mut a, Some(&token)).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    assert!(a.cert_pem.is_some());
    let mut b = Device::new(2);
    let r = f.enroll(&mut b, Some(&token)).await;
    assert_eq!(r.status, 403, "used token accepted: {}", text(&r));
    assert!(b.cert_pem.is_none());
    // A bad CSR is refused before the token is spent.
    let t2 = f.new_token().await;
    let mut c = Device::new(3);
    c.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    assert_eq!(f.enroll(&mut c, Some(&t2)).await.status, 400);
    let mut c = Device::new(3);
    assert_eq!(f.enroll(&mut c, Some(&t2)).await.status, 200);
    // Operator endpoints need the bearer token.
    let r = f.anonymous().get("/api/v1/admin/machines").await.unwrap();
    assert_eq!(r.status, 401);
    let r = f
        .anonymous()
        .request(
            "GET",
            "/api/v1/admin/machines",
            &[("Authorization", "Bearer wrong")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
}

/// Issue #11 item 3: a token expires, and one bound to a MAC or serial is refused for any
/// other (and stays unused for its own device); a token never enrolls an enrolled identity.
pub async fn enrollment_tokens_expire_and_bind(url: &str) {
    let f = Fleet::start(url).await;
    let mut a = Device::new(11);
    let mut b = Device::new(12);
    let bound = f.new_token_with(&serde_json::json!({"mac": a.mac})).await;
    let r = f.enroll(&mut b, Some(&bound)).await;
    assert_eq!(r.status, 403, "token bound to another MAC: {}", text(&r));
    assert!(text(&r).contains("bound"), "{}", text(&r));
    assert!(b.cert_pem.is_none());
    let r = f.enroll(&mut a, Some(&bound)).await;
    assert_eq!(r.status, 200, "its own MAC: {}", text(&r));

    let by_serial = f
        .new_token_with(&serde_json::json!({"serial": "SN-12"}))
        .await;
    let r = f.enroll_with(&mut b, Some(&by_serial), Some("SN-99")).await;
    assert_eq!(r.status, 403, "other serial: {}", text(&r));
    let r = f.enroll(&mut b, Some(&by_serial)).await;
    assert_eq!(r.status, 403, "no serial: {}", text(&r));
    let r = f.enroll_with(&mut b, Some(&by_serial), Some("SN-12")).await;
    assert_eq!(r.status, 200, "{}", text(&r));

    let short = f
        .new_token_with(&serde_json::json!({"expires_in_secs": 60}))
        .await;
    f.advance(61);
    let mut c = Device::new(13);
    let r = f.enroll(&mut c, Some(&short)).await;
    assert_eq!(r.status, 403, "expired token: {}", text(&r));
    assert!(text(&r).contains("expired"), "{}", text(&r));
    assert!(c.cert_pem.is_none());

    // Item 3 as reported: a fresh token and the MAC of an enrolled device, new key.
    let fresh = f.new_token().await;
    let mut thief = Device::new(11);
    let r = f.enroll(&mut thief, Some(&fresh)).await;
    assert_eq!(
        r.status,
        409,
        "token must not clone an identity: {}",
        text(&r)
    );
    assert!(thief.cert_pem.is_none());
    assert_eq!(
        f.store
            .list_device_certs(MachineId(a.id))
            .await
            .unwrap()
            .len(),
        1
    );

    // The operator's view: hashes only, states, bindings; bad requests refused.
    let r = f.op("GET", "/api/v1/admin/enrollment-tokens", b"").await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let list = r.json().unwrap();
    // Oldest first; tokens made in the same second in any order.
    let mut states: Vec<(&str, &str)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["state"].as_str().unwrap(),
                t["mac"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(states.pop(), Some(("unused", "-")), "{list}");
    states.sort_unstable();
    assert_eq!(
        states,
        [("expired", "-"), ("used", "-"), ("used", a.mac.as_str())],
        "{list}"
    );
    assert!(!String::from_utf8_lossy(&r.body).contains(&fresh));
    for bad in [
        serde_json::json!({"expires_in_secs": 0}),
        serde_json::json!({"mac": "nope"}),
        serde_json::json!({"unknown": 1}),
    ] {
        let r = f
            .op(
                "POST",
                "/api/v1/admin/enrollment-tokens",
                &serde_json::to_vec(&bad).unwrap(),
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", text(&r));
    }
}

/// Issue #11 item 9: a replayed request (same MAC, same CSR) gets the certificate issued
/// for it, not a new one, and only within the replay window; the same CSR under another MAC
/// gets nothing.
pub async fn enrollment_replays_get_one_certificate(url: &str) {
    let f = Fleet::start(url).await;
    let token = f.new_token().await;
    let mut d = Device::new(21);
    let first = f.enroll(&mut d, Some(&token)).await;
    assert_eq!(first.status, 200, "{}", text(&first));
    let cert = d.cert_pem.clone().unwrap();
    for _ in 0..5 {
        let r = f.enroll(&mut d, Some(&token)).await;
        assert_eq!(r.status, 200, "replay within the window: {}", text(&r));
        assert_eq!(
            d.cert_pem.as_deref(),
            Some(cert.as_str()),
            "same certificate"
        );
    }
    let mut other_mac = d.clone();
    other_mac.mac = Device::new(22).mac;
    other_mac.cert_pem = None;
    let r = f.enroll(&mut other_mac, None).await;
    assert_eq!(r.status, 403, "key in use: {}", text(&r));
    f.advance(i64::try_from(tugboot_api::server::DEFAULT_ENROLL_REPLAY_WINDOW_SECS).unwrap() + 1);
    let r = f.enroll(&mut d, Some(&token)).await;
    assert_eq!(r.status, 409, "replay after the window: {}", text(&r));
    assert_eq!(
        f.store
            .list_device_certs(MachineId(d.id))
            .await
            .unwrap()
            .len(),
        1
    );
    let metrics = String::from_utf8(f.anonymous().get("/metrics").await.unwrap().body).unwrap();
    assert!(
        metrics.contains("tugboot_api_enrollments_total{result=\"repeated\"} 5"),
        "{metrics}"
    );
}

/// Issue #11 item 10: after the operator revokes a machine, neither a token-less request with
/// its MAC and a new key nor a token enrolls it; approving it again is the operator action
/// that lets it enroll once more.
pub async fn revoked_machine_cannot_enroll_again(url: &str) {
    let f = Fleet::start(url).await;
    let mut d = f.enrolled(31).await;
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/machines/{}/revoke", d.id),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let mut clone = Device::new(31);
    let r = f.enroll(&mut clone, None).await;
    assert_eq!(r.status, 403, "token-less re-enrollment: {}", text(&r));
    assert!(text(&r).contains("revoked"), "{}", text(&r));
    let token = f.new_token().await;
    let r = f.enroll(&mut clone, Some(&token)).await;
    assert_eq!(r.status, 403, "token re-enrollment: {}", text(&r));
    assert!(clone.cert_pem.is_none());
    // The old certificate no longer opens anything.
    let r = f.client(&d).get("/api/v1/device/assignment").await.unwrap();
    assert_eq!(r.status, 403, "{}", text(&r));
    // Revoking only the certificate keeps the machine enrolled: still no second identity.
    let mut e = f.enrolled(32).await;
    let serial = f.store.list_device_certs(MachineId(e.id)).await.unwrap()[0]
        .serial
        .clone();
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/certificates/{serial}/revoke"),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let mut e2 = Device::new(32);
    assert_eq!(f.enroll(&mut e2, None).await.status, 409);
    // The operator approves again: one more enrollment, once.
    for id in [d.id, e.id] {
        let r = f
            .op("POST", &format!("/api/v1/admin/machines/{id}/approve"), b"")
            .await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    let r = f.enroll(&mut clone, None).await;
    assert_eq!(r.status, 200, "after approval: {}", text(&r));
    let r = f.enroll(&mut e2, None).await;
    assert_eq!(r.status, 200, "after approval: {}", text(&r));
    let mut third = Device::new(32);
    assert_eq!(f.enroll(&mut third, None).await.status, 409);
    d.cert_pem = None;
    e.cert_pem = None;
}

/// Issue #11 item 4: 40 concurrent requests for one approved MAC (each its own key, half with
/// a token of their own): exactly one certificate, the others 409, at most one token spent.
pub async fn concurrent_enrollments_for_one_mac_issue_one_certificate(url: &str) {
    let f = Fleet::start(url).await;
    for round in 0..2u32 {
        let n = 40 + round;
        let mut d = Device::new(n);
        assert_eq!(f.enroll(&mut d, None).await.status, 202);
        let r = f
            .op(
                "POST",
                &format!("/api/v1/admin/machines/{}/approve", d.id),
                b"",
            )
            .await;
        assert_eq!(r.status, 200);
        let mut tokens = Vec::new();
        for _ in 0..20 {
            tokens.push(f.new_token().await);
        }
        let f = &f;
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(40));
        let results = futures_join(40, |i| {
            let barrier = barrier.clone();
            let token = tokens.get(i).cloned();
            async move {
                let mut dev = Device::new(n);
                barrier.wait().await;
                f.enroll(&mut dev, token.as_deref()).await.status
            }
        })
        .await;
        let ok = results.iter().filter(|s| **s == 200).count();
        assert_eq!(ok, 1, "round {round}: {results:?}");
        assert!(
            results.iter().all(|s| *s == 200 || *s == 409),
            "{results:?}"
        );
        assert_eq!(
            f.store
                .list_device_certs(MachineId(d.id))
                .await
                .unwrap()
                .len(),
            1,
            "round {round}"
        );
        let spent = f
            .store
            .list_enrollment_tokens()
            .await
            .unwrap()
            .iter()
            .filter(|t| t.used_at.is_some())
            .count();
        assert!(
            spent <= usize::try_from(round).unwrap() + 1,
            "{spent} tokens spent"
        );
    }
}

/// Runs `n` futures made by `make` at once (on this task) and returns their results in order.
async fn futures_join<F, Fut, T>(n: usize, make: F) -> Vec<T>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut set = Vec::new();
    for i in 0..n {
        set.push(Box::pin(make(i)));
    }
    let mut out = Vec::new();
    for r in join_all(set).await {
        out.push(r);
    }
    out
}

/// A minimal join-all (the tests do not depend on `futures`).
async fn join_all<Fut: std::future::Future + Unpin>(mut futs: Vec<Fut>) -> Vec<Fut::Output> {
    let mut results: Vec<Option<Fut::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if results[i].is_none() {
                match std::future::Future::poll(std::pin::Pin::new(f), cx) {
                    std::task::Poll::Ready(v) => results[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().map(Option::unwrap).collect()
}

/// Issue #11 item 9: token-less requests from new MACs create at most `max_pending` waiting
/// machines (then 503, nothing written); a machine polling while it waits writes nothing.
pub async fn pending_enrollments_are_capped_and_polls_write_nothing(url: &str) {
    let config = tugboot_api::ApiConfig {
        max_pending_enrollments: 3,
        ..Default::default()
    };
    let f = Fleet::start_with(url, config).await;
    let mut waiting = Vec::new();
    for n in 0..3 {
        let mut d = Device::new(50 + n);
        assert_eq!(f.enroll(&mut d, None).await.status, 202);
        waiting.push(d);
    }
    let before = f.store.list_machines().await.unwrap();
    for n in 3..10 {
        let mut d = Device::new(50 + n);
        let r = f.enroll(&mut d, None).await;
        assert_eq!(r.status, 503, "{}", text(&r));
    }
    f.advance(30);
    for d in &mut waiting {
        for _ in 0..3 {
            assert_eq!(f.enroll(d, None).await.status, 202);
        }
    }
    let after = f.store.list_machines().await.unwrap();
    assert_eq!(
        before, after,
        "refusals and polls wrote nothing (not even last_seen)"
    );
    // A token still enrolls a new machine when the queue is full.
    let token = f.new_token().await;
    let mut t = Device::new(70);
    assert_eq!(f.enroll(&mut t, Some(&token)).await.status, 200);
    // Approving one frees a place.
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/machines/{}/approve", waiting[0].id),
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    let mut next = Device::new(60);
    assert_eq!(f.enroll(&mut next, None).await.status, 202);
}

/// No token: 202 until the operator approves, then the certificate; MAC pre-authorisation
/// works once only; renewal over mTLS.
pub async fn enrollment_waits_for_approval_then_renews(url: &str) {
    let config = tugboot_api::ApiConfig {
        device_cert_validity_secs: 10 * 86_400,
        renew_before_secs: 3 * 86_400,
        ..Default::default()
    };
    let f = Fleet::start_with(url, config).await;
    let mut d = Device::new(7);
    let r = f.enroll(&mut d, None).await;
    assert_eq!(r.status, 202, "{}", text(&r));
    assert_eq!(r.json().unwrap()["status"], "pending");
    let r = f.enroll(&mut d, None).await;
    assert_eq!(r.status, 202);
    let r = f
        .op(
            "POST",
            &format!("/api/v1/admin/machines/{}/approve", d.id),
            b"",
        )
        .await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = f.enroll(&mut d, None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let v = r.json().unwrap();
    assert_eq!(v["ca"].as_str().unwrap(), f.ca_pem);
    // Someone else claiming the same MAC now gets nothing.
    let mut thief = Device::new(7);
    assert_eq!(f.enroll(&mut thief, None).await.status, 409);
    let c = f.client(&d);
    let renew = serde_json::json!({"csr": d.csr_pem});
    let r = c.post_json("/api/v1/device/renew", &renew).await.unwrap();
    assert_eq!(r.status, 409, "too early: {}", text(&r));
    f.advance(8 * 86_400);
    let r = c.post_json("/api/v1/device/renew", &renew).await.unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let certs = f.store.list_device_certs(MachineId(d.id)).await.unwrap();
    assert_eq!(certs.len(), 2);
    // The new certificate names the same device and runs from the (simulated) renewal time;
    // it cannot be used over TLS here because the TLS layer checks validity on the real clock.
    let pem = r.json().unwrap()["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
        .unwrap();
    let id = tugboot_api::ca::peer_identity(&der).unwrap();
    assert_eq!(id.device, MachineId(d.id));
    assert_eq!(
        id.not_after,
        f.clock.load(std::sync::atomic::Ordering::SeqCst) + 10 * 86_400
    );
    assert!(certs.iter().any(|c| c.serial == id.serial));
}

/// enroll → approve → rollout → fetch assignment, manifest, artifact (Range) → report →
/// the rollout advances, then completes; retried reports count once.
pub async fn happy_path_rollout_advances(url: &str) {
    let f = Fleet::start(url).await;
    let mut devices = Vec::new();
    for n in 1..=4 {
        let mut d = Device::new(n);
        assert_eq!(f.enroll(&mut d, None).await.status, 202);
        let r = f
            .op(
                "POST",
                &format!("/api/v1/admin/machines/{}/approve", d.id),
                b"",
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(f.enroll(&mut d, None).await.status, 200);
        devices.push(d);
    }
    f.publish().await;
    let r = f.op("GET", "/api/v1/admin/images?name=edge", b"").await;
    assert_eq!(r.json().unwrap()[0]["version"], 2);
    let body = serde_json::json!({
        "image_name": "edge", "image_version": 2, "selector": "*",
        "stages": [{"percent": 25, "soak_secs": 0}, {"percent": 100, "soak_secs": 0}],
        "max_failure_permille": 500, "min_reports": 1
    });
    let r = f
        .op(
            "POST",
            "/api/v1/admin/rollouts",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let rollout = r.json().unwrap();
    assert_eq!(rollout["state"], "running");
    assert_eq!(rollout["devices"]["admitted"], 1);
    let id = rollout["id"].as_i64().unwrap();

    // Exactly one device is assigned in stage 0.
    let mut assigned = Vec::new();
    for d in &devices {
        let r = f.client(d).get("/api/v1/device/assignment").await.unwrap();
        match r.status {
            200 => assigned.push((d.clone(), r.json().unwrap())),
            204 => {}
            s => panic!("assignment status {s}"),
        }
    }
    assert_eq!(assigned.len(), 1);
    let (first, a) = &assigned[0];
    let c = f.client(first);
    let manifest = c.get(a["manifest_url"].as_str().unwrap()).await.unwrap();
    assert_eq!(manifest.status, 200);
    assert_eq!(manifest.body, f.manifest);
    let art_url = a["artifacts"][&f.artifact_sha256]
        .as_str()
        .unwrap()
        .to_owned();
    let whole = c.get(&art_url).await.unwrap();
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, f.artifact);
    let part = c
        .request("GET", &art_url, &[("Range", "bytes=1000-")], b"")
        .await
        .unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &f.artifact[1000..]);
    let missing = c
        .get(&format!("/api/v1/device/artifacts/{}", "0".repeat(64)))
        .await
        .unwrap();
    assert_eq!(missing.status, 404);

    // A health report before the update, then the commit report (retried once).
    let r = c
        .post_json("/api/v1/device/reports", &status_report("s1"))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let commit = outcome_report("c1", "committed", 2);
    let r = c
        .post_json("/api/v1/device/reports", &commit)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    assert_eq!(r.json().unwrap()["duplicate"], false);
    let r = c
        .post_json("/api/v1/device/reports", &commit)
        .await
        .unwrap();
    assert_eq!(r.json().unwrap()["duplicate"], true);
    assert_eq!(f.store.count_reports().await.unwrap(), 2);

    let r = f
        .op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
        .await;
    let v = r.json().unwrap();
    assert_eq!(v["stage"], 1, "{v}");
    assert_eq!(v["devices"]["admitted"], 4);
    assert_eq!(v["devices"]["committed"], 1);

    // Every device is assigned now; they all commit; the rollout completes.
    for (i, d) in devices.iter().enumerate() {
        let r = f.client(d).get("/api/v1/device/assignment").await.unwrap();
        assert_eq!(r.status, 200, "device {i}");
        if d.id != first.id {
            let r = f
                .client(d)
                .post_json(
                    "/api/v1/device/reports",
                    &outcome_report(&format!("c{i}"), "committed", 2),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
    }
    let r = f
        .op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
        .await;
    assert_eq!(r.json().unwrap()["state"], "completed", "{}", text(&r));
    let m = f
        .op("GET", &format!("/api/v1/admin/machines/{}", first.id), b"")
        .await;
    assert_eq!(m.json().unwrap()["machine"]["last_booted_image"], "edge@2");
    let metrics = String::from_utf8(f.anonymous().get("/metrics").await.unwrap().body).unwrap();
    assert!(
        metrics.contains("tugboot_api_reports_total{result=\"duplicate\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "tugboot_rollout_stage{{rollout=\"{id}\",state=\"completed\"}} 1"
        )),
        "{metrics}"
    );
}

/// Rollbacks past the threshold pause the rollout; resume after the device recovers; abort
/// takes the image away from devices not yet updated.
pub async fn rollout_pauses_resumes_aborts(url: &str) {
    let f = Fleet::start(url).await;
    let mut devices = Vec::new();
    for n in 1..=4 {
        devices.push(f.enrolled(n).await);
    }
    f.publish().await;
    let body = serde_json::json!({
        "image_name": "edge", "image_version": 2, "selector": "",
        "stages": [{"percent": 50, "soak_secs": 0}, {"percent": 100, "soak_secs": 0}],
        "max_failure_permille": 100, "min_reports": 2
    });
    let r = f
        .op(
            "POST",
            "/api/v1/admin/rollouts",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let id = r.json().unwrap()["id"].as_i64().unwrap();
    let mut admitted = Vec::new();
    for d in &devices {
        if f.client(d)
            .get("/api/v1/device/assignment")
            .await
            .unwrap()
            .status
            == 200
        {
            admitted.push(d.clone());
        }
    }
    assert_eq!(admitted.len(), 2);
    let c0 = f.client(&admitted[0]);
    let c1 = f.client(&admitted[1]);
    c0.post_json(
        "/api/v1/device/reports",
        &outcome_report("rb", "rolled-back", 2),
    )
    .await
    .unwrap();
    let status = |r: tugboot_api::client::HttpResponse| r.json().unwrap()["state"].clone();
    // One report is below min_reports: still running.
    assert_eq!(
        status(
            f.op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
                .await
        ),
        "running"
    );
    c1.post_json(
        "/api/v1/device/reports",
        &outcome_report("ok", "committed", 2),
    )
    .await
    .unwrap();
    assert_eq!(
        status(
            f.op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
                .await
        ),
        "paused"
    );
    // Resuming without a change pauses again at once.
    let r = f
        .op("POST", &format!("/api/v1/admin/rollouts/{id}/resume"), b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(status(r), "paused");
    // The failed device retries and commits: resume advances.
    c0.post_json(
        "/api/v1/device/reports",
        &outcome_report("retry", "committed", 2),
    )
    .await
    .unwrap();
    assert_eq!(
        status(
            f.op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
                .await
        ),
        "paused"
    );
    let r = f
        .op("POST", &format!("/api/v1/admin/rollouts/{id}/resume"), b"")
        .await;
    let v = r.json().unwrap();
    assert_eq!(
        (v["state"].clone(), v["stage"].clone()),
        ("running".into(), 1.into()),
        "{v}"
    );
    // Abort: devices that have not committed lose the assignment.
    let r = f
        .op("POST", &format!("/api/v1/admin/rollouts/{id}/abort"), b"")
        .await;
    assert_eq!(status(r), "aborted");
    for d in &devices {
        assert_eq!(
            f.client(d)
                .get("/api/v1/device/assignment")
                .await
                .unwrap()
                .status,
            204
        );
    }
    let r = f
        .op("POST", &format!("/api/v1/admin/rollouts/{id}/resume"), b"")
        .await;
    assert_eq!(r.status, 409);
}

/// Devices that never report time out and count as failures.
pub async fn silent_devices_time_out(url: &str) {
    let f = Fleet::start(url).await;
    let mut devices = Vec::new();
    for n in 1..=2 {
        devices.push(f.enrolled(n).await);
    }
    f.publish().await;
    let body = serde_json::json!({
        "image_name": "edge", "image_version": 2, "selector": "*",
        "stages": [{"percent": 100, "soak_secs": 0}],
        "max_failure_permille": 0, "min_reports": 1
    });
    let r = f
        .op(
            "POST",
            "/api/v1/admin/rollouts",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    let id = r.json().unwrap()["id"].as_i64().unwrap();
    f.client(&devices[0])
        .post_json(
            "/api/v1/device/reports",
            &outcome_report("c", "committed", 2),
        )
        .await
        .unwrap();
    f.state.evaluate_rollouts().await.unwrap();
    let v = f
        .op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
        .await
        .json()
        .unwrap();
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["devices"]["pending"], 1, "{v}");
    f.advance(i64::try_from(tugboot_api::server::DEFAULT_OUTCOME_TIMEOUT).unwrap());
    f.state.evaluate_rollouts().await.unwrap();
    let v = f
        .op("GET", &format!("/api/v1/admin/rollouts/{id}"), b"")
        .await
        .json()
        .unwrap();
    assert_eq!(v["state"], "paused", "{v}");
    // Paused, the silent device's clock starts again (from the pause): it is pending again.
    assert_eq!(v["devices"]["committed"], 1, "{v}");
}

/// Publishing refuses manifests that do not verify or whose artifacts are missing.
pub async fn publish_checks_signature_and_blobs(url: &str) {
    let f = Fleet::start(url).await;
    let mut tampered = f.manifest.clone();
    let pos = tampered.iter().position(|&b| b == b'2').unwrap();
    tampered[pos] = b'3';
    let r = f.op("POST", "/api/v1/admin/images", &tampered).await;
    assert_eq!(r.status, 422, "{}", text(&r));
    let missing = crate::harness::manifest_for(b"not in the blob store", 5, real_now());
    let r = f.op("POST", "/api/v1/admin/images", &missing).await;
    assert_eq!(r.status, 409, "{}", text(&r));
    let r = f.op("POST", "/api/v1/admin/images", &f.manifest).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let r = f.op("POST", "/api/v1/admin/images", &f.manifest).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let body = serde_json::json!({
        "image_name": "edge", "image_version": 9, "selector": "*",
        "stages": [{"percent": 100, "soak_secs": 0}], "max_failure_permille": 0
    });
    let r = f
        .op(
            "POST",
            "/api/v1/admin/rollouts",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 404);
}

/// What a device reports over mutual TLS (its inventory, what it runs) becomes attested facts:
/// shown by the admin API with their source, and usable by rollout selectors (which ignore
/// anything merely observed on the network).
pub async fn reports_attest_facts_that_rollouts_select_by(url: &str) {
    let f = Fleet::start(url).await;
    let gw = f.enrolled(1).await;
    let other = f.enrolled(2).await;
    for d in [&gw, &other] {
        let r = f
            .op(
                "POST",
                &format!("/api/v1/admin/machines/{}/approve", d.id),
                b"",
            )
            .await;
        assert_eq!(r.status, 200, "{}", text(&r));
    }
    let mut status = status_report("inv1");
    status["image_name"] = "edge".into();
    status["inventory"] = serde_json::json!({
        "board": "x86_64-uefi", "arch": "aarch64", "kernel": "6.1.0-57-arm64",
        "model": "QEMU Virtual Machine ü", "cpus": 2, "memory_bytes": 1_073_741_824u64,
        "disks": [], "interfaces": []
    });
    let r = f
        .client(&gw)
        .post_json("/api/v1/device/reports", &status)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let m = f
        .op("GET", &format!("/api/v1/admin/machines/{}", gw.id), b"")
        .await
        .json()
        .unwrap();
    let facts = &m["machine"]["facts"];
    for (key, value) in [
        ("board", "x86_64-uefi"),
        ("arch", "arm64"),
        ("kernel", "6.1.0-57-arm64"),
        ("memory_mib", "1024"),
        ("cpus", "2"),
        ("image", "edge@1"),
        ("slot", "A"),
    ] {
        assert_eq!(facts[key]["value"], value, "{key}: {m}");
        assert_eq!(facts[key]["source"], "attested", "{key}: {m}");
    }
    // Made printable, not refused.
    assert_eq!(facts["model"]["value"], "QEMU Virtual Machine ??", "{m}");
    // The latest status and inventory, with their age; not silent.
    assert_eq!(m["status"]["slot"], "A", "{m}");
    assert_eq!(m["status"]["image"], "edge@1", "{m}");
    assert_eq!(m["status"]["age_secs"], 0, "{m}");
    assert_eq!(m["inventory"]["kernel"], "6.1.0-57-arm64", "{m}");
    assert_eq!(m["silent"]["silent"], false, "{m}");
    // An hour and a bit later without a report: silent. The other device never reported.
    f.advance(3601);
    let m = f
        .op("GET", &format!("/api/v1/admin/machines/{}", gw.id), b"")
        .await
        .json()
        .unwrap();
    assert_eq!(m["silent"]["silent"], true, "{m}");
    assert_eq!(m["silent"]["last_report_age_secs"], 3601, "{m}");
    assert_eq!(m["status"]["age_secs"], 3601, "{m}");
    let o = f
        .op("GET", &format!("/api/v1/admin/machines/{}", other.id), b"")
        .await
        .json()
        .unwrap();
    assert_eq!(o["silent"]["silent"], true, "{o}");
    assert!(o["silent"]["last_report_age_secs"].is_null(), "{o}");
    assert!(o["status"].is_null(), "{o}");

    f.publish().await;
    let body = serde_json::json!({
        "image_name": "edge", "image_version": 2, "selector": "board=x86_64-uefi",
        "stages": [{"percent": 100, "soak_secs": 0}],
        "max_failure_permille": 500, "min_reports": 1
    });
    let r = f
        .op(
            "POST",
            "/api/v1/admin/rollouts",
            &serde_json::to_vec(&body).unwrap(),
        )
        .await;
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(r.json().unwrap()["devices"]["admitted"], 1, "{}", text(&r));
    let r = f
        .client(&gw)
        .get("/api/v1/device/assignment")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = f
        .client(&other)
        .get("/api/v1/device/assignment")
        .await
        .unwrap();
    assert_eq!(r.status, 204, "no board attested: not in the rollout");
}
