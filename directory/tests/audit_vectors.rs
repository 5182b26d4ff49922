//! The audit log's leaf encoding, published as `proto/vectors/audit.json` (see
//! docs/PROTOCOL.md, section 6): one entry of each kind, its postcard bytes and its
//! RFC 6962 leaf hash. Regenerate after a deliberate change with
//! `IRYO_WRITE_VECTORS=1 cargo test -p iryo-directory --test audit_vectors`.

use ed25519_dalek::SigningKey;
use iryo_directory::audit::LogEntry;
use iryo_proto::eligibility::Reason;
use iryo_proto::federation::{ordered_id, Notification, Purpose, Side};
use iryo_proto::merkle::{leaf_hash, to_hex};
use iryo_proto::signed::Signed;
use iryo_proto::wire::RefusalReason;
use iryo_proto::{InstitutionCode, MedicalId, PointTableKind};
use serde_json::{json, Value};

fn entries() -> Vec<(&'static str, LogEntry)> {
    let hospital = InstitutionCode::from_parts(13, PointTableKind::Medical, 1).expect("code");
    let clinic = InstitutionCode::from_parts(27, PointTableKind::Medical, 42).expect("code");
    let patient = MedicalId::from_body(123_456_789_012_345);
    let grant_id = ordered_id(1_767_225_600_000_000, [7; 8]);
    let notification = Notification {
        id: ordered_id(1_767_225_601_000_000, [9; 8]),
        side: Side::Disclosed,
        grant_id,
        medical_id: patient,
        source: hospital,
        requester: clinic,
        purpose: Purpose::Treatment,
        emergency: false,
        record_count: 3,
        resource_types: vec!["Condition".into(), "Observation".into()],
        at: 1_767_225_601,
    };
    vec![
        (
            "notification",
            LogEntry::Notification {
                from: hospital,
                notification: Signed::sign(&notification, &SigningKey::from_bytes(&[0x22; 32])),
            },
        ),
        (
            "grant_issued",
            LogEntry::GrantIssued {
                grant_id,
                requester: clinic,
                source: hospital,
                medical_id: patient,
                purpose: Purpose::Emergency,
                emergency_reason: Some("意識不明で搬送".into()),
                at: 1_767_225_600,
            },
        ),
        (
            "grant_refused",
            LogEntry::GrantRefused {
                requester: clinic,
                source: hospital,
                medical_id: patient,
                purpose: Purpose::Research,
                reason: RefusalReason::NoConsent,
                at: 1_767_225_600,
            },
        ),
        (
            "eligibility",
            LogEntry::Eligibility {
                institution: clinic,
                medical_id: Some(patient),
                reason: Reason::Active,
                at: 1_767_225_599,
            },
        ),
        (
            "operator",
            LogEntry::Operator {
                operator: "sato".into(),
                action: "institution 1310000011 revoked".into(),
                at: 1_767_225_700,
            },
        ),
        (
            "access_refused",
            LogEntry::AccessRefused {
                from: hospital,
                report: Signed::sign(
                    &iryo_proto::federation::RefusalReport {
                        id: ordered_id(1_767_225_602_000_000, [3; 8]),
                        grant_id,
                        medical_id: patient,
                        source: hospital,
                        requester: Some(clinic),
                        requester_key: SigningKey::from_bytes(&[0x33; 32])
                            .verifying_key()
                            .to_bytes(),
                        purpose: Purpose::Treatment,
                        reason: RefusalReason::Grant(
                            iryo_proto::federation::GrantRefusal::Replayed,
                        ),
                        at: 1_767_225_602,
                    },
                    &SigningKey::from_bytes(&[0x22; 32]),
                ),
            },
        ),
        (
            "operator_read",
            LogEntry::OperatorRead {
                operator: "sato".into(),
                medical_id: patient,
                what: "the registry record".into(),
                at: 1_767_225_800,
            },
        ),
    ]
}

fn vectors() -> Value {
    let list: Vec<Value> = entries()
        .into_iter()
        .map(|(kind, e)| {
            let bytes = e.canonical();
            json!({
                "kind": kind,
                "value": serde_json::to_value(&e).expect("json"),
                "entry_postcard": to_hex(&bytes),
                "leaf_hash": to_hex(&leaf_hash(&bytes)),
            })
        })
        .collect();
    json!({
        "about": "Audit log entries: entry = postcard(LogEntry), variant index first (0 notification, 1 grant issued, 2 grant refused, 3 eligibility, 4 operator, 5 operator read, 6 access refused); leaf hash = SHA-256(0x00 ‖ entry).",
        "entries": list,
    })
}

#[test]
fn the_audit_leaves_are_the_published_ones() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/vectors/audit.json");
    let value = vectors();
    if std::env::var_os("IRYO_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
        std::fs::write(&path, text).expect("write vectors");
        return;
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("JSON");
    assert_eq!(stored, value);
    // Each leaf hash follows from the published bytes alone.
    for e in stored["entries"].as_array().expect("list") {
        let hex = e["entry_postcard"].as_str().expect("hex");
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(e["leaf_hash"], to_hex(&leaf_hash(&bytes)));
        assert_eq!(
            bytes[0],
            [
                "notification",
                "grant_issued",
                "grant_refused",
                "eligibility",
                "operator",
                "operator_read",
                "access_refused"
            ]
            .iter()
            .position(|k| e["kind"] == *k)
            .expect("kind") as u8
        );
    }
}
