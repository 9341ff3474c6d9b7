//! The router in-process: scripts, artifacts (Range, ETag, HEAD), publishing rules, paths.

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use tower::ServiceExt as _;
use tugboot_firmware::{Role, SecretKey, Sha256Digest};

use crate::common::{Fixture, NOW, artifact, manifest};

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_else(|| panic!("no {name} header"))
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }
}

async fn call(
    router: &axum::Router,
    method: Method,
    uri: &str,
    headers: &[(header::HeaderName, &str)],
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(k, *v);
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 64 << 20)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(router: &axum::Router, uri: &str) -> Reply {
    call(router, Method::GET, uri, &[]).await
}

#[tokio::test]
async fn machine_script_is_exact() {
    let f = Fixture::new(300_000);
    let router = f.server().router();
    let r = get(
        &router,
        "/ipxe?mac=52-54-00-00-00-01&uuid=&serial=&arch=x86_64",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CACHE_CONTROL), "no-store");
    let base = "http://192.0.2.1:8080";
    let chain = format!(
        "{base}/ipxe?mac=${{mac:hexhyp}}&uuid=${{uuid}}&serial=${{serial:uristring}}&arch=${{buildarch}}&platform=${{platform}}"
    );
    let expected = format!(
        "#!ipxe\n\
         echo tugboot: machine gw-1 profile edge image edge-gw v42\n\
         kernel {base}/artifacts/sha256/{k} initrd=initrd console=tty0 console=ttyS0,115200n8 \
         console=ttyS0,115200n8 quiet tugboot.host=gw-1 || goto failed\n\
         initrd --name initrd {base}/artifacts/sha256/{i} || goto failed\n\
         boot || goto failed\n\
         :failed\n\
         echo tugboot: loading the image failed, asking again in 10 seconds\n\
         sleep 10\n\
         chain --autofree --replace {chain} || exit 1\n",
        k = f.kernel_digest,
        i = f.initrd_digest,
    );
    assert_eq!(r.text(), expected);
}

#[tokio::test]
async fn bootstrap_uses_host_when_no_base_url() {
    let f = Fixture::new(1000);
    let router = f.server_with(None).router();
    let r = call(
        &router,
        Method::GET,
        "/boot.ipxe",
        &[(header::HOST, "10.0.0.5:8080")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text()
            .starts_with("#!ipxe\nisset ${ip} || dhcp || goto failed\n")
    );
    assert!(r.text().contains(
        "chain --autofree --replace http://10.0.0.5:8080/ipxe?mac=${mac:hexhyp}&uuid=${uuid}&serial=${serial:uristring}&arch=${buildarch}&platform=${platform} || goto failed\n"
    ));
    // A Host header that would smuggle script syntax is refused.
    for host in ["evil.example/${x}", "a b", "x;y"] {
        let r = call(&router, Method::GET, "/boot.ipxe", &[(header::HOST, host)]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{host}");
    }
}

#[tokio::test]
async fn scripts_explain_why_a_machine_cannot_boot() {
    let f = Fixture::new(1000);
    let server = f.server();
    let router = server.router();
    // Unknown machine, no default profile.
    let r = get(&router, "/ipxe?mac=02-00-00-00-00-09&arch=x86_64").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text()
            .contains("echo tugboot: no profile for machine 02:00:00:00:00:09\n")
    );
    assert!(r.text().contains("sleep 60\n"), "{}", r.text());
    // Profile whose image is not published.
    let r = get(&router, "/ipxe?mac=52:54:00:00:00:02").await;
    assert!(
        r.text()
            .contains("image never-published (latest) of profile ghost is not published\n"),
        "{}",
        r.text()
    );
    assert!(!r.text().contains("\nboot"));
    // Malformed facts.
    let r = get(&router, "/ipxe?mac=52:54:00:00:00").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("is not a MAC address"), "{}", r.text());
    // A serial that would inject iPXE commands through the cmdline placeholder.
    let r = get(&router, "/ipxe?arch=arm64&serial=%3B").await;
    assert!(!r.text().contains("\nboot"), "{}", r.text());
    assert!(r.text().contains("command line"), "{}", r.text());
    let r = get(&router, "/ipxe?arch=arm64&serial=SN1").await;
    assert!(
        r.text().contains(" sn=SN1 SN1 || goto failed\n"),
        "{}",
        r.text()
    );
    let r = get(&router, "/ipxe?arch=arm64&serial=a%0Ashell").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(!r.text().contains("\nshell"), "{}", r.text());
    let c = server.counters();
    assert_eq!(c.scripts, 6);
    assert_eq!(c.error_scripts, 5);
}

#[tokio::test]
async fn artifact_full_head_and_etag() {
    let f = Fixture::new(300_000);
    let server = f.server();
    let router = server.router();
    let uri = format!("/artifacts/sha256/{}", f.kernel_digest);
    let r = get(&router, &uri).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, f.kernel);
    assert_eq!(r.header(header::CONTENT_LENGTH), "300000");
    assert_eq!(r.header(header::CONTENT_TYPE), "application/octet-stream");
    assert_eq!(r.header(header::ACCEPT_RANGES), "bytes");
    let etag = format!("\"{}\"", f.kernel_digest);
    assert_eq!(r.header(header::ETAG), etag);
    assert!(r.header(header::CACHE_CONTROL).contains("immutable"));

    let r = call(&router, Method::HEAD, &uri, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header(header::CONTENT_LENGTH), "300000");
    assert!(r.body.is_empty());

    for inm in [etag.as_str(), "W/\"x\", W/\"y\"", "*"] {
        let r = call(&router, Method::GET, &uri, &[(header::IF_NONE_MATCH, inm)]).await;
        let want = if inm.contains('y') {
            StatusCode::OK
        } else {
            StatusCode::NOT_MODIFIED
        };
        assert_eq!(r.status, want, "{inm}");
        if want == StatusCode::NOT_MODIFIED {
            assert!(r.body.is_empty());
            assert_eq!(r.header(header::ETAG), etag);
        }
    }
    let c = server.counters();
    assert_eq!(c.not_modified, 2);
    assert_eq!(c.body_bytes, 600_000);
}

#[tokio::test]
async fn artifact_ranges() {
    let f = Fixture::new(300_000);
    let router = f.server().router();
    let uri = format!("/artifacts/sha256/{}", f.kernel_digest);
    let k = &f.kernel;
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=0-99", 0, 99),                     // first
        ("bytes=150000-150099", 150_000, 150_099), // middle
        ("bytes=-1000", 299_000, 299_999),         // suffix
        ("bytes=299990-", 299_990, 299_999),       // open end
        ("bytes=100-999999", 100, 299_999),        // last beyond the end
    ];
    for (range, start, end) in cases {
        let r = call(&router, Method::GET, &uri, &[(header::RANGE, range)]).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.header(header::CONTENT_RANGE),
            format!("bytes {start}-{end}/300000")
        );
        assert_eq!(
            r.header(header::CONTENT_LENGTH),
            (end - start + 1).to_string()
        );
        assert_eq!(r.body, k[start..=end], "{range}");
    }
    // Invalid or multiple ranges: the whole artifact.
    for range in ["bytes=5-2", "bytes=0-1,3-4", "lines=1-2", "bytes=x-"] {
        let r = call(&router, Method::GET, &uri, &[(header::RANGE, range)]).await;
        assert_eq!(r.status, StatusCode::OK, "{range}");
        assert_eq!(r.body.len(), k.len());
    }
    // Beyond the end.
    for range in ["bytes=300000-", "bytes=-0"] {
        let r = call(&router, Method::GET, &uri, &[(header::RANGE, range)]).await;
        assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(r.header(header::CONTENT_RANGE), "bytes */300000");
        assert!(r.body.is_empty());
    }
    // If-Range with our tag honours the range; with another tag (or a date) sends everything.
    let tag = format!("\"{}\"", f.kernel_digest);
    let r = call(
        &router,
        Method::GET,
        &uri,
        &[(header::RANGE, "bytes=0-9"), (header::IF_RANGE, &tag)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    let r = call(
        &router,
        Method::GET,
        &uri,
        &[
            (header::RANGE, "bytes=0-9"),
            (header::IF_RANGE, "\"other\""),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), k.len());
    // HEAD with a range.
    let r = call(
        &router,
        Method::HEAD,
        &uri,
        &[(header::RANGE, "bytes=10-19")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header(header::CONTENT_LENGTH), "10");
    assert!(r.body.is_empty());
}

#[tokio::test]
async fn only_published_artifacts_and_no_path_tricks() {
    let f = Fixture::new(1000);
    let server = f.server();
    let router = server.router();
    // In the store, but in no published manifest.
    assert!(f.store.contains(&f.stray_digest));
    let r = get(&router, &format!("/artifacts/sha256/{}", f.stray_digest)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let upper = f.kernel_digest.to_hex().to_uppercase();
    let secret_rel = "..%2F..%2Fsecret";
    for uri in [
        format!("/artifacts/sha256/{upper}"),
        format!("/artifacts/sha256/{}x", f.kernel_digest),
        format!("/artifacts/sha256/{}/", f.kernel_digest),
        format!("/artifacts/sha256/{secret_rel}"),
        String::from("/artifacts/sha256/../../secret"),
        String::from("/artifacts/sha256/%2e%2e/secret"),
        String::from("/artifacts/sha256/"),
        String::from("/artifacts/tmp/x"),
        String::from("/boot/..%2Fsecret"),
        String::from("/boot/../secret"),
        String::from("/boot/.hidden"),
        String::from("/boot/%2e%2e"),
        String::from("/boot/missing.efi"),
        String::from("/boot/"),
        String::from("/secret"),
    ] {
        let r = get(&router, &uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!r.text().contains("secret"), "{uri}");
    }
    // The boot-files directory itself works, with ranges.
    let r = get(&router, "/boot/snponly.efi").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 70_000);
    assert!(r.headers.get(header::ETAG).is_none());
    let r = call(
        &router,
        Method::GET,
        "/boot/snponly.efi",
        &[(header::RANGE, "bytes=-10")],
    )
    .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.len(), 10);
}

#[tokio::test]
async fn damaged_blob_is_not_served() {
    let f = Fixture::new(1000);
    let router = f.server().router();
    // Someone truncates the stored kernel after publishing.
    std::fs::write(f.store.path(&f.kernel_digest), b"short").unwrap();
    let r = get(&router, &format!("/artifacts/sha256/{}", f.kernel_digest)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(r.body.len() < 100);
}

#[tokio::test]
async fn publishing_rules() {
    let f = Fixture::new(1000);
    let server = f.server();
    // Same manifest again: fine. Same name and version, other content: refused.
    f.publish(&server, &f.envelope(42), NOW).unwrap();
    let other = manifest(
        "edge-gw",
        42,
        vec![artifact(Role::Kernel, "vmlinuz", b"not published")],
        &f.key,
    );
    let e = f.publish(&server, &other, NOW).unwrap_err();
    assert!(e.contains("already published with another manifest"), "{e}");
    // Signed by a key the root does not know.
    let rogue = SecretKey::from_seed(&[9; 32]);
    let forged = manifest(
        "edge-gw",
        43,
        vec![artifact(Role::Kernel, "vmlinuz", b"not published")],
        &rogue,
    );
    let e = f.publish(&server, &forged, NOW).unwrap_err();
    assert!(e.contains("manifest not trusted"), "{e}");
    let router = server.router();
    let r = get(&router, &format!("/artifacts/sha256/{}", f.stray_digest)).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a refused manifest publishes nothing"
    );
    // Expired at publish time.
    let late = tugboot_firmware::Timestamp::from_unix(1_860_000_000);
    assert!(f.publish(&server, &f.envelope(44), late).is_err());
    // An artifact missing from the store.
    let missing = manifest(
        "edge-gw",
        45,
        vec![artifact(Role::Kernel, "vmlinuz", b"nowhere")],
        &f.key,
    );
    let e = f.publish(&server, &missing, NOW).unwrap_err();
    assert!(e.contains("artifact \"vmlinuz\""), "{e}");
    // A cmdline artifact with iPXE syntax in it.
    let evil = b"quiet\nshell\n";
    f.store.put(&evil[..], None).unwrap();
    let bad = manifest(
        "edge-gw",
        46,
        vec![
            artifact(Role::Kernel, "vmlinuz", &f.kernel),
            artifact(Role::Cmdline, "cmdline", evil),
        ],
        &f.key,
    );
    let e = f.publish(&server, &bad, NOW).unwrap_err();
    assert!(e.contains("cmdline artifact"), "{e}");
    // Latest version wins for `image = "edge-gw"` without a version.
    f.store.put(&b"kernel v47"[..], None).unwrap();
    let v47 = manifest(
        "edge-gw",
        47,
        vec![artifact(Role::Kernel, "vmlinuz", b"kernel v47")],
        &f.key,
    );
    f.publish(&server, &v47, NOW).unwrap();
    let r = get(&router, "/ipxe?mac=52:54:00:00:00:01").await;
    assert!(
        r.text().contains(&Sha256Digest::of(b"kernel v47").to_hex()),
        "{}",
        r.text()
    );
    assert!(r.text().contains("image edge-gw v47"));
    assert!(!r.text().contains("initrd"), "v47 has no initrd");
}

#[tokio::test]
async fn metrics_text() {
    let f = Fixture::new(1000);
    let router = f.server().router();
    let _ = get(&router, "/nothing").await;
    let r = get(&router, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains("tugboot_http_requests_total 2\n"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("tugboot_http_not_found_total 1\n"));
    assert!(r.text().contains("tugboot_fleet_published_images 1\n"));
}
