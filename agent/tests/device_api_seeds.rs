//! Every seed of the `device_api` fuzz target goes through its entry in a plain test run, and
//! the seeds that are real documents parse as what they are: the server's assignment and
//! answers, the agent's reports (old and new status forms, the `rejected` outcome), a P-256
//! certificate and key made by OpenSSL, `/proc` texts.

use std::fs;
use std::path::Path;

use rustls::pki_types::pem::PemObject as _;
use tugboot_agent::net::enroll::{DeviceKey, cert_info};
use tugboot_agent::net::{fuzz_device_api, inventory};
use tugboot_wire::{Assignment, DeviceReport, EnrollResponse, Enrolled, ErrorBody};

#[test]
fn device_api_seeds() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/agent-device-api");
    let mut seen = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = fs::read(&path).unwrap();
        fuzz_device_api(&bytes);
        let text = String::from_utf8_lossy(&bytes);
        if name.starts_with("report-") {
            DeviceReport::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("assignment-") {
            Assignment::parse(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name.starts_with("enroll-pending") {
            assert_eq!(
                EnrollResponse::parse(&bytes),
                Ok(Enrolled::Pending { device_id: 17 })
            );
        } else if name.starts_with("enroll-issued") {
            assert!(matches!(
                EnrollResponse::parse(&bytes),
                Ok(Enrolled::Issued { .. })
            ));
        } else if name.starts_with("error-") {
            assert!(ErrorBody::reason(&bytes).unwrap().contains("revoked"));
        } else if name.ends_with(".der") {
            let info = cert_info(&bytes).unwrap_or_else(|| panic!("{name}"));
            assert!(info.not_after > info.not_before);
            assert_eq!(info.public_key.len(), 65, "{name}");
        } else if name.starts_with("cert-") {
            let der = rustls::pki_types::CertificateDer::from_pem_slice(&bytes).unwrap();
            assert!(cert_info(der.as_ref()).is_some(), "{name}");
        } else if name.starts_with("key-") {
            DeviceKey::from_pem(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        } else if name == "proc-meminfo.txt" {
            assert_eq!(inventory::mem_total(&text), Some(3_930_568 * 1024));
        } else if name == "proc-uptime.txt" {
            assert_eq!(inventory::uptime_secs(&text), Some(12345));
        } else if name == "sys-cpu-online.txt" {
            assert_eq!(inventory::cpu_count(&text), Some(5));
        }
        seen += 1;
    }
    assert!(seen >= 15, "seeds missing in {}", dir.display());
}
