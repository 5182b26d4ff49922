//! The published test vectors (`proto/vectors/*.json`, described in docs/PROTOCOL.md):
//! this implementation must produce exactly what the files hold, and what the files
//! hold must verify on its own terms (signatures over domain ‖ 0x00 ‖ body, leaf and
//! node hashes, proofs against roots), so that an implementation in another language
//! can check itself against them.
//!
//! After a deliberate change of the wire format, regenerate with
//! `IRYO_WRITE_VECTORS=1 cargo test -p iryo-proto --test vectors` and say so in
//! docs/PROTOCOL.md: every other implementation breaks with it.

use ed25519_dalek::{Signature, SigningKey, Verifier, VerifyingKey};
use iryo_proto::eligibility::{CheckAnswer, CheckKey, CheckRequest, CoverageSummary, Reason};
use iryo_proto::federation::{
    self, Grant, GrantPosition, LoggedGrant, Membership, Notification, Purpose, Registration, Role,
    Side, TreeHead,
};
use iryo_proto::merkle::{self, from_hex, to_hex, Hash, MemoryTree};
use iryo_proto::signed::{canonical, Signed, Statement};
use iryo_proto::wire::*;
use iryo_proto::*;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::PathBuf;

fn hex(b: &[u8]) -> String {
    to_hex(b)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The keys of the vectors: fixed seeds, so anyone can derive them.
fn agency() -> SigningKey {
    SigningKey::from_bytes(&[0x11; 32])
}
fn hospital() -> SigningKey {
    SigningKey::from_bytes(&[0x22; 32])
}
fn clinic() -> SigningKey {
    SigningKey::from_bytes(&[0x33; 32])
}

fn hospital_code() -> InstitutionCode {
    InstitutionCode::from_parts(13, PointTableKind::Medical, 1).expect("code")
}
fn clinic_code() -> InstitutionCode {
    InstitutionCode::from_parts(27, PointTableKind::Medical, 42).expect("code")
}
fn patient() -> MedicalId {
    MedicalId::from_body(123_456_789_012_345)
}
fn insurer() -> InsurerNumber {
    InsurerNumber::from_body("0113001").expect("insurer")
}

fn keys() -> Value {
    let key = |name: &str, k: &SigningKey| {
        json!({
            "name": name,
            "seed": hex(&k.to_bytes()),
            "public_key": hex(k.verifying_key().as_bytes()),
        })
    };
    json!({
        "about": "Ed25519 keys (RFC 8032): the 32-byte seed and its public key. The agency signs memberships, grants and tree heads; nodes sign registrations and notifications.",
        "keys": [key("agency", &agency()), key("hospital", &hospital()), key("clinic", &clinic())],
    })
}

/// One signed statement: its value, body, the signed message and the envelope.
fn statement<T: Statement + Serialize>(kind: &str, value: &T, key: &SigningKey) -> Value {
    let signed = Signed::sign(value, key);
    let mut message = T::DOMAIN.as_bytes().to_vec();
    message.push(0);
    message.extend_from_slice(&signed.body);
    json!({
        "kind": kind,
        "domain": T::DOMAIN,
        "value": serde_json::to_value(value).expect("json"),
        "body_postcard": hex(&signed.body),
        "signed_message": hex(&message),
        "signer": hex(&signed.signer),
        "signature": hex(&signed.signature),
        "envelope_cbor": hex(&cbor4ii::serde::to_vec(Vec::new(), &signed).expect("cbor")),
    })
}

fn grant() -> Grant {
    Grant {
        id: federation::ordered_id(1_767_225_600_000_000, [7; 8]),
        requester: clinic_code(),
        requester_key: clinic().verifying_key().to_bytes(),
        source: hospital_code(),
        medical_id: patient(),
        purpose: Purpose::Treatment,
        reason: None,
        issued_at: 1_767_225_600,
        expires_at: 1_767_225_900,
    }
}

/// A registry's notice; signed in the vectors by a test key like any other.
fn registry_notice() -> iryo_proto::roles::RegistryNotice {
    iryo_proto::roles::RegistryNotice {
        seq: 1,
        at: 1_767_225_600,
        kind: iryo_proto::roles::NoticeKind::IdChanged {
            old: patient(),
            new: MedicalId::from_body(1_234_567),
        },
    }
}

fn position() -> GrantPosition {
    GrantPosition {
        grant_id: grant().id,
        index: 41,
    }
}

fn notification() -> Notification {
    Notification {
        id: federation::ordered_id(1_767_225_601_000_000, [9; 8]),
        side: Side::Disclosed,
        grant_id: grant().id,
        medical_id: patient(),
        source: hospital_code(),
        requester: clinic_code(),
        purpose: Purpose::Treatment,
        emergency: false,
        record_count: 3,
        resource_types: vec!["Condition".into(), "Observation".into()],
        at: 1_767_225_601,
    }
}

fn refusal_report() -> federation::RefusalReport {
    federation::RefusalReport {
        id: federation::ordered_id(1_767_225_602_000_000, [3; 8]),
        grant_id: grant().id,
        medical_id: patient(),
        source: hospital_code(),
        requester: Some(clinic_code()),
        requester_key: clinic().verifying_key().to_bytes(),
        purpose: Purpose::Treatment,
        reason: RefusalReason::Grant(federation::GrantRefusal::Replayed),
        at: 1_767_225_602,
    }
}

/// Entries of the example log: any bytes; the directory's are postcard-encoded audit
/// entries.
fn entries(n: u64) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
}

fn tree(n: u64) -> MemoryTree {
    let mut t = MemoryTree::default();
    for e in entries(n) {
        t.push(&e);
    }
    t
}

fn root_at(t: &MemoryTree, size: u64) -> Hash {
    merkle::root(t, size).unwrap_or_else(|e| match e {})
}

fn statements() -> Value {
    let membership = Membership {
        code: hospital_code(),
        name: "東京中央病院".into(),
        kind: PointTableKind::Medical,
        public_key: hospital().verifying_key().to_bytes(),
        addresses: vec!["/ip4/192.0.2.10/tcp/4711".into()],
        roles: vec![Role::Source, Role::Requester],
        serial: 1,
        not_before: 1_767_225_000,
        not_after: 1_798_761_000,
    };
    let registration = Registration {
        code: hospital_code(),
        name: "東京中央病院".into(),
        public_key: hospital().verifying_key().to_bytes(),
        addresses: vec!["/ip4/192.0.2.10/tcp/4711".into()],
        at: 1_767_225_000,
    };
    let head = TreeHead {
        size: 7,
        root: root_at(&tree(7), 7),
        at: 1_767_225_602,
    };
    json!({
        "about": "Signed statements: signature = Ed25519(signer, domain ‖ 0x00 ‖ body), body = the postcard encoding of the value. The envelope is what travels inside CBOR messages.",
        "statements": [
            statement("registration", &registration, &hospital()),
            statement("membership", &membership, &agency()),
            statement("grant", &grant(), &agency()),
            statement("grant_position", &position(), &agency()),
            statement("registry_notice", &registry_notice(), &hospital()),
            statement("notification", &notification(), &hospital()),
            statement("tree_head", &head, &agency()),
            statement("refusal_report", &refusal_report(), &hospital()),
        ],
    })
}

/// A frame as it goes on the stream: 4-byte big-endian length, 8-byte request id, CBOR.
fn frame<T: Serialize>(name: &str, id: u64, message: &T, max: u64) -> Value {
    let body = encode_frame(id, message, max).expect("fits");
    let mut on_wire = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    on_wire.extend_from_slice(&body);
    json!({
        "name": name,
        "request_id": id,
        "message": serde_json::to_value(message).expect("json"),
        "cbor": hex(&body[FRAME_ID_BYTES..]),
        "frame": hex(&on_wire),
    })
}

fn card() -> eligibility::Card {
    eligibility::Card {
        insurer: insurer(),
        symbol: CardSymbol::parse("10000001").expect("symbol"),
        number: CardNumber::parse("101").expect("number"),
        branch: Branch::new(0).expect("branch"),
    }
}

fn frames() -> Value {
    let check = CheckRequest {
        institution: clinic_code(),
        key: CheckKey::for_card(&card(), None),
        date: chrono::NaiveDate::from_ymd_opt(2026, 1, 5).expect("date"),
        visit_consent: false,
        idempotency_key: None,
    };
    let answer = CheckAnswer {
        eligible: true,
        reason: Reason::Active,
        medical_id: Some(patient()),
        coverage: Some(CoverageSummary {
            kind: InsurerKind::Kyokai,
            card: card(),
            from: chrono::NaiveDate::from_ymd_opt(2020, 4, 1).expect("date"),
            until: None,
        }),
        mismatch: None,
    };
    let (d, r) = (MAX_DIRECTORY_REQUEST, MAX_DIRECTORY_RESPONSE);
    let emergency = DirectoryRequest::Grant {
        medical_id: patient(),
        source: hospital_code(),
        purpose: Purpose::Emergency,
        reason: Some("意識不明で搬送".into()),
        idempotency_key: None,
    };
    let key = || {
        Some(
            iryo_proto::IdempotencyKey::parse("6f1c2a9e-1b7d-4c55-9a0e-3f2b8d7c1e44").expect("key"),
        )
    };
    let keyed_check = CheckRequest {
        idempotency_key: key(),
        ..check.clone()
    };
    let keyed_grant = DirectoryRequest::Grant {
        medical_id: patient(),
        source: hospital_code(),
        purpose: Purpose::Treatment,
        reason: None,
        idempotency_key: key(),
    };
    let logged = LoggedGrant {
        grant: Signed::sign(&grant(), &agency()),
        position: Some(Signed::sign(&position(), &agency())),
    };
    let fetch = ExchangeRequest::Fetch {
        medical_id: patient(),
        purpose: Purpose::Treatment,
        grant: logged.grant.clone(),
        position: logged.position.clone(),
    };
    let records = ExchangeResponse::Records {
        bundle: br#"{"resourceType":"Bundle","type":"collection","entry":[]}"#.to_vec(),
    };
    let replayed = ExchangeResponse::Refused(Refusal::new(
        RefusalReason::Grant(federation::GrantRefusal::Replayed),
        "the grant was used before",
    ));
    json!({
        "about": "Frames of /iryo/directory/1 and /iryo/exchange/1: a 4-byte big-endian length, then an 8-byte big-endian request id and the CBOR message. The answering side's first frame on a stream is the welcome: length 0.",
        "welcome": "00000000",
        "frames": [
            frame("resolve", 1, &DirectoryRequest::Resolve { code: hospital_code() }, d),
            frame("eligibility_batch", 2, &DirectoryRequest::EligibilityBatch { requests: vec![check] }, d),
            frame("eligibility_answers", 2, &DirectoryResponse::EligibilityBatch(vec![answer]), r),
            frame("grant_request", 3, &emergency, d),
            frame("eligibility_keyed", 6, &DirectoryRequest::Eligibility { request: keyed_check }, d),
            frame("grant_request_keyed", 7, &keyed_grant, d),
            frame("grant", 3, &DirectoryResponse::Grant(logged.clone()), r),
            frame("notify", 4, &DirectoryRequest::Notify { notifications: vec![Signed::sign(&notification(), &hospital())] }, d),
            frame("acknowledged", 4, &DirectoryResponse::Acknowledged { ids: vec![notification().id] }, r),
            frame("refused", 5, &DirectoryResponse::Refused(Refusal::new(RefusalReason::NoConsent, "no consent for this purpose")), r),
            frame("fetch", 1, &fetch, MAX_EXCHANGE_REQUEST),
            frame("records", 1, &records, MAX_EXCHANGE_RESPONSE),
            frame("fetch_refused", 2, &replayed, MAX_EXCHANGE_RESPONSE),
        ],
    })
}

fn merkle_vectors() -> Value {
    let n = 7;
    let t = tree(n);
    let roots: Vec<Value> = (0..=n)
        .map(|size| json!({"size": size, "root": hex(&root_at(&t, size))}))
        .collect();
    let hexes = |v: Vec<Hash>| v.iter().map(|h| hex(h)).collect::<Vec<_>>();
    let inclusion: Vec<Value> = [(0, 1), (0, 7), (3, 7), (6, 7), (4, 5)]
        .iter()
        .map(|&(index, size)| {
            let proof = merkle::inclusion_proof(&t, index, size).unwrap_or_else(|e| match e {});
            json!({"index": index, "size": size, "proof": hexes(proof)})
        })
        .collect();
    let consistency: Vec<Value> = [(1, 7), (3, 7), (4, 7), (6, 7), (7, 7)]
        .iter()
        .map(|&(old, new)| {
            let proof = merkle::consistency_proof(&t, old, new).unwrap_or_else(|e| match e {});
            json!({"old": old, "new": new, "proof": hexes(proof)})
        })
        .collect();
    json!({
        "about": "RFC 6962: leaf = SHA-256(0x00 ‖ entry), node = SHA-256(0x01 ‖ left ‖ right), the empty tree's root SHA-256 of nothing. Entries here are the UTF-8 bytes given in hex; proofs in the order of RFC 6962 sections 2.1.1 and 2.1.2.",
        "entries": entries(n).iter().map(|e| hex(e)).collect::<Vec<_>>(),
        "leaf_hashes": entries(n).iter().map(|e| hex(&merkle::leaf_hash(e))).collect::<Vec<_>>(),
        "roots": roots,
        "inclusion": inclusion,
        "consistency": consistency,
    })
}

fn ids() -> Value {
    let case = |s: &str, valid: bool| json!({"text": s, "valid": valid});
    let one = MedicalId::from_body(1);
    json!({
        "about": "Identifiers with check digits. Medical ID: a 15-digit body and a Damm check digit, printed 4-4-4-4. My Number: 11 digits and the official check digit. Institution code: prefecture (2), point-table kind (1), number and a check digit. Insurer number: 6 digits (National Health Insurance) or 8 with a check digit.",
        "medical_ids": [
            {"body": patient().body(), "id": patient().plain(), "grouped": patient().grouped()},
            {"body": 1, "id": one.plain(), "grouped": one.grouped()},
        ],
        "my_numbers": [MyNumber::from_body(12_345_000_001).to_string(), MyNumber::from_body(98_320_567_321).to_string()],
        "institution_codes": [hospital_code().to_string(), clinic_code().to_string()],
        "insurer_numbers": [insurer().to_string(), InsurerNumber::from_body("0627014").expect("insurer").to_string()],
        "medical_id_checks": [
            case("1234-5678-9012-3456", MedicalId::parse("1234-5678-9012-3456").is_ok()),
            case(&patient().grouped(), MedicalId::parse(&patient().grouped()).is_ok()),
        ],
        "my_number_checks": [case("123456789012", MyNumber::parse("123456789012").is_ok())],
        "institution_code_checks": [
            case("1310000011", InstitutionCode::parse("1310000011").is_ok()),
            case("1310000012", InstitutionCode::parse("1310000012").is_ok()),
        ],
    })
}

fn vectors() -> Vec<(&'static str, Value)> {
    vec![
        ("keys.json", keys()),
        ("statements.json", statements()),
        ("frames.json", frames()),
        ("merkle.json", merkle_vectors()),
        ("ids.json", ids()),
    ]
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

#[test]
fn the_implementation_produces_the_published_vectors() {
    let write = std::env::var_os("IRYO_WRITE_VECTORS").is_some();
    for (name, value) in vectors() {
        let path = dir().join(name);
        if write {
            let text = serde_json::to_string_pretty(&value).expect("json") + "\n";
            std::fs::write(&path, text).expect("write vectors");
            continue;
        }
        let stored =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let stored: Value = serde_json::from_str(&stored).expect("vectors are JSON");
        assert_eq!(
            stored, value,
            "{name} differs from what this implementation produces"
        );
    }
}

fn load(name: &str) -> Value {
    let path = dir().join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("vectors")).expect("json")
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

fn hashes(v: &Value) -> Vec<Hash> {
    v.as_array()
        .expect("list")
        .iter()
        .map(|h| from_hex(h.as_str().expect("hex")).expect("hash"))
        .collect()
}

#[test]
fn the_published_signatures_verify_from_the_files_alone() {
    let v = load("statements.json");
    for st in v["statements"].as_array().expect("list") {
        let mut message = s(st, "domain").as_bytes().to_vec();
        message.push(0);
        message.extend_from_slice(&unhex(s(st, "body_postcard")));
        assert_eq!(hex(&message), s(st, "signed_message"));
        let key: [u8; 32] = unhex(s(st, "signer")).try_into().expect("32 bytes");
        let sig: [u8; 64] = unhex(s(st, "signature")).try_into().expect("64 bytes");
        VerifyingKey::from_bytes(&key)
            .expect("key")
            .verify(&message, &Signature::from_bytes(&sig))
            .unwrap_or_else(|_| panic!("{} does not verify", s(st, "kind")));
    }
    let k = load("keys.json");
    for key in k["keys"].as_array().expect("list") {
        let seed: [u8; 32] = unhex(s(key, "seed")).try_into().expect("32 bytes");
        assert_eq!(
            hex(SigningKey::from_bytes(&seed).verifying_key().as_bytes()),
            s(key, "public_key")
        );
    }
}

#[test]
fn the_published_proofs_verify_from_the_files_alone() {
    let v = load("merkle.json");
    let leaves: Vec<Hash> = v["entries"]
        .as_array()
        .expect("list")
        .iter()
        .map(|e| merkle::leaf_hash(&unhex(e.as_str().expect("hex"))))
        .collect();
    assert_eq!(leaves, hashes(&v["leaf_hashes"]));
    let root =
        |size: u64| -> Hash { from_hex(s(&v["roots"][size as usize], "root")).expect("hash") };
    for p in v["inclusion"].as_array().expect("list") {
        let (index, size) = (
            p["index"].as_u64().expect("n"),
            p["size"].as_u64().expect("n"),
        );
        let leaf = &leaves[usize::try_from(index).expect("small")];
        assert!(merkle::verify_inclusion(
            leaf,
            index,
            size,
            &hashes(&p["proof"]),
            &root(size)
        ));
    }
    for p in v["consistency"].as_array().expect("list") {
        let (old, new) = (p["old"].as_u64().expect("n"), p["new"].as_u64().expect("n"));
        let proof = hashes(&p["proof"]);
        assert!(merkle::verify_consistency(
            old,
            new,
            &root(old),
            &root(new),
            &proof
        ));
    }
    assert_eq!(root(0), merkle::empty_root());
}

#[test]
fn the_published_frames_decode() {
    let v = load("frames.json");
    assert_eq!(s(&v, "welcome"), "00000000");
    for f in v["frames"].as_array().expect("list") {
        let wire = unhex(s(f, "frame"));
        let len = u32::from_be_bytes(wire[..4].try_into().expect("length")) as usize;
        assert_eq!(len, wire.len() - 4);
        let body = &wire[4..];
        assert_eq!(
            frame_id(body).expect("id"),
            f["request_id"].as_u64().expect("id")
        );
        let name = s(f, "name");
        let json = |m: Result<Value, serde_json::Error>| m.expect("json");
        let decoded =
            match name {
                "resolve"
                | "eligibility_batch"
                | "eligibility_keyed"
                | "grant_request"
                | "grant_request_keyed"
                | "notify" => decode_frame::<DirectoryRequest>(body)
                    .map(|(_, m)| json(serde_json::to_value(m))),
                "fetch" => decode_frame::<ExchangeRequest>(body)
                    .map(|(_, m)| json(serde_json::to_value(m))),
                "records" | "fetch_refused" => decode_frame::<ExchangeResponse>(body)
                    .map(|(_, m)| json(serde_json::to_value(m))),
                _ => decode_frame::<DirectoryResponse>(body)
                    .map(|(_, m)| json(serde_json::to_value(m))),
            };
        assert_eq!(
            decoded.unwrap_or_else(|e| panic!("{name}: {e}")),
            f["message"],
            "{name}"
        );
    }
}

#[test]
fn canonical_bodies_are_postcard() {
    // A tree head by hand: size and time as varints (the signed time zigzag-encoded),
    // the root's 32 bytes in a row.
    let head = TreeHead {
        size: 1,
        root: [0xab; 32],
        at: 1,
    };
    let mut by_hand = vec![1u8];
    by_hand.extend_from_slice(&[0xab; 32]);
    by_hand.push(2);
    assert_eq!(canonical(&head), by_hand);
}
