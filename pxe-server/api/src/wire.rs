//! JSON shapes of the device API. The shapes the agent and the server exchange are defined
//! once, in `tugboot-wire` (`tugboot_wire::device`), and re-exported here; this module adds
//! only what is the server's own: the store's view of a report ([`DeviceReport`]) and the
//! operator's [`CreateRollout`].

use std::ops::Deref;

use serde::{Deserialize, Serialize};
use tugboot_store::Slot;

/// The slot as it appears in JSON (`"A"`/`"B"`, lowercase accepted).
pub use tugboot_wire::device::Slot as SlotText;
pub use tugboot_wire::device::{
    Assignment, CheckResult, Disk, EnrollRequest, EnrollResponse, Enrolled, ErrorBody, Interface,
    Inventory, MAX_ENROLL_BYTES, MAX_ID_LEN, MAX_REPORT_BYTES, Outcome, Rejection, RenewRequest,
    UpdateStatus, WireError, capped,
};

// Whatever the wire crate accepts, the store can hold (checked when compiling).
const _: () = assert!(MAX_REPORT_BYTES <= tugboot_store::MAX_CHECKS_BYTES);
const _: () = assert!(tugboot_wire::device::MAX_TEXT_LEN <= tugboot_store::MAX_ERROR_LEN);
const _: () = assert!(tugboot_wire::device::MAX_NAME_LEN <= tugboot_store::MAX_NAME_LEN);

/// A report POSTed by a device (outcome, status, inventory; see
/// [`tugboot_wire::DeviceReport`], to which it dereferences), with the store's view of the
/// slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeviceReport(pub tugboot_wire::DeviceReport);

impl Deref for DeviceReport {
    type Target = tugboot_wire::DeviceReport;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DeviceReport {
    /// Parses and checks a report body (size cap first).
    ///
    /// # Errors
    /// [`WireError`].
    pub fn parse(bytes: &[u8]) -> Result<Self, WireError> {
        tugboot_wire::DeviceReport::parse(bytes).map(Self)
    }

    /// The slot the device runs from: the status field, else the outcome's; `None` when the
    /// report names none (a failed, rejected or interrupted install).
    #[must_use]
    pub fn running_slot(&self) -> Option<Slot> {
        self.0.running_slot().map(|s| match s {
            SlotText::A => Slot::A,
            SlotText::B => Slot::B,
        })
    }
}

/// `POST /api/v1/admin/rollouts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRollout {
    /// Target image.
    pub image_name: String,
    /// Target version.
    pub image_version: u64,
    /// Group selector (see `docs/rollouts.md`).
    pub selector: String,
    /// Stages.
    pub stages: Vec<tugboot_store::RolloutStage>,
    /// Failure rate (‰) above which the rollout pauses.
    pub max_failure_permille: u16,
    /// Reports needed before the rate is judged.
    #[serde(default = "default_min_reports")]
    pub min_reports: u32,
}

const fn default_min_reports() -> u32 {
    1
}

/// Entry point shared with the fuzz target and the seed test: parse a body as every kind of
/// request. Must never panic.
pub fn fuzz_bodies(data: &[u8]) {
    tugboot_wire::device::fuzz_device_json(data);
    if let Ok(r) = DeviceReport::parse(data) {
        let _ = r.running_slot();
        let _ = r.running_version();
        let again = serde_json::to_vec(&r).expect("a parsed report serializes");
        assert_eq!(DeviceReport::parse(&again).ok().as_ref(), Some(&r));
    }
    let _ = capped::<CreateRollout>(data, MAX_ENROLL_BYTES);
    let _ = crate::ca::peer_identity(data);
    // Operator token requests (network) and the pre-v3 token file (disk).
    if let Ok(spec) = crate::tokens::TokenRequest::parse(data, 3600) {
        assert!((1..=crate::tokens::MAX_TOKEN_TTL_SECS).contains(&spec.ttl_secs));
    }
    if let Ok(hashes) = crate::tokens::parse_legacy(data) {
        assert!(hashes.iter().all(|(h, _)| h.len() == 64));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // The key an enrollment is recorded under (from the request's CSR).
        if let Ok(h) = crate::ca::csr_key_sha256(text) {
            assert_eq!(h.len(), 64);
        }
        let _ = crate::ca::parse_device_id(text);
        let _ = crate::server::Selector::parse(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_outcome_report_parses() {
        let body = br#"{"id":"b1-3","seq":3,"boot_id":"b1","agent":"0.1.0",
            "outcome":{"outcome":"committed","name":"edge","version":42,"slot":"B"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Some(Slot::B));
        assert_eq!(r.running_version(), 42);
        assert_eq!(r.outcome.as_ref().unwrap().kind(), "committed");
        let body = br#"{"id":"b1-4","seq":4,"boot_id":"b1","agent":"0.1.0",
            "outcome":{"outcome":"failed","name":"edge","version":43,"reason":"sha256 mismatch"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), None);
        assert_eq!(r.running_version(), 0);
        // Stored as the report itself.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["outcome"]["outcome"], "failed");
    }

    #[test]
    fn rejections_count_as_failures() {
        let body = br#"{"id":"b1-5","boot_id":"b1","outcome":{"outcome":"rejected","name":"edge",
            "version":43,"reason":"image is not for board","code":"wrong-board",
            "manifest_sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"}}"#;
        let r = DeviceReport::parse(body).unwrap();
        let o = r.outcome.clone().unwrap();
        assert!(matches!(o, Outcome::Failed { .. }));
        assert_eq!(o.kind(), "rejected");
        assert_eq!(o.image(), ("edge", 43));
    }

    #[test]
    fn status_report_parses() {
        let body = br#"{"id":"r1","boot_id":"b","slot":"a","image_version":7,
            "checks":{"nginx":"ok"},"uptime_secs":30,"last_error":null}"#;
        let r = DeviceReport::parse(body).unwrap();
        assert_eq!(r.running_slot(), Some(Slot::A));
        assert_eq!(r.running_version(), 7);
    }

    #[test]
    fn check_numbers_are_stored_as_sent() {
        // Found by the `bodies` fuzz target: a number with more digits than an f64 holds came
        // back from the store as a different number.
        let body = br#"{"id":"r1","boot_id":"b","slot":"a","image_version":7,
            "checks":{"disk":{"free":1234000000000000000000000000000000000000000000000000,
            "ratio":0.30000000000000004,"tiny":2.2250738585072014e-308}},"uptime_secs":30}"#;
        let r = DeviceReport::parse(body).unwrap();
        let again = serde_json::to_vec(&r).unwrap();
        assert_eq!(DeviceReport::parse(&again).unwrap(), r);
    }

    #[test]
    fn bad_reports_are_refused() {
        for body in [
            &br#"{"id":"","boot_id":"b","slot":"A"}"#[..],
            br#"{"id":"x","boot_id":"b"}"#,
            br#"{"id":"x","boot_id":"b","slot":"C"}"#,
            br#"{"id":"x","boot_id":"b","slot":"A","surprise":1}"#,
            br#"{"id":"x","boot_id":"b","slot":"A","image_version":18446744073709551615}"#,
            br#"{"id":"x\n","boot_id":"b","slot":"A"}"#,
            br#"{"id":"x","boot_id":"b","outcome":{"outcome":"committed","name":"e","version":1}}"#,
            b"[]",
            b"",
        ] {
            assert!(
                DeviceReport::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            DeviceReport::parse(&big),
            Err(WireError::TooLarge { .. })
        ));
    }
}
