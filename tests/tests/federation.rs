//! The federation end to end: a real directory and three real nodes on 127.0.0.1.

use iryo_proto::federation::*;
use iryo_proto::signed::Signed;
use iryo_proto::wire::*;
use iryo_tests::federation::*;
use iryo_tests::on_every_deployment;
use serde_json::{json, Value};

fn notifications(entries: &[Value]) -> Vec<Value> {
    entries
        .iter()
        .filter_map(|e| e.get(1).and_then(|e| e.get("Notification")).cloned())
        .collect()
}

fn grant_issued(entries: &[Value]) -> Vec<Value> {
    entries
        .iter()
        .filter_map(|e| e.get(1).and_then(|e| e.get("GrantIssued")).cloned())
        .collect()
}

on_every_deployment! {
    fn consent_gates_exchange_and_both_ends_report_to_a_verifiable_log(deployment) {
        let fed = Federation::deploy(deployment, 3, 3, 60);
        let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
        let p = fed.patients[0];

        // The EMR stores records; what is not FHIR, or comes without the token, is refused.
        assert_eq!(a.put_records(p, &sample_bundle(3, 100)).0, 201);
        assert_eq!(a.put_records(p, &json!({"not": "fhir"})).0, 422);
        // What is not valid FHIR R4 is refused with what is wrong where, and not stored.
        for (doc, wrong) in [
            (json!({"resourceType": "Foo"}), "Foo"),
            (
                json!({"resourceType": "Patient", "birthDate": "1984-13-45"}),
                "Patient.birthDate",
            ),
            (
                json!({"resourceType": "Bundle", "type": "nonsense"}),
                "Bundle.type",
            ),
            (
                json!({"resourceType": "Bundle", "type": "collection", "entry": [
                    {"resource": {"resourceType": "Observation", "code": {"text": "x"}}}]}),
                "Bundle.entry[0].resource.status",
            ),
        ] {
            let (status, body) = a.put_records(p, &doc);
            assert_eq!(status, 422, "{doc}: {body}");
            assert_eq!(body["error"], "not_fhir", "{body}");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(wrong), "{doc}: {detail}");
        }
        assert_eq!(a.records(p).1["total"], 3);

        // Without consent the directory grants nothing, so nothing leaves the source.
        let (status, body) = b.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["reason"], "no_consent");
        assert_eq!(a.outbox_pending(), 0, "the source disclosed nothing");

        fed.consent(p, b.code);
        let (status, bundle) = b.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["resourceType"], "Bundle");
        assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(3));
        assert!(
            a.drain_outbox(20) && b.drain_outbox(20),
            "both notifications delivered"
        );
        let entries = fed.audit_show(p);
        assert_eq!(notifications(&entries).len(), 2, "{entries:?}");

        // Emergency: refused without a written reason, served and flagged with one.
        let (status, body) = c.fetch(p, a.code, "emergency", None);
        assert_eq!(
            (status, body["reason"].as_str()),
            (403, Some("reason_required"))
        );
        let (status, _) = c.fetch(
            p,
            a.code,
            "emergency",
            Some("意識不明で搬送 / unconscious on arrival"),
        );
        assert_eq!(status, 200);
        assert!(a.drain_outbox(20) && c.drain_outbox(20));
        let shown = fed.operator(&["audit", "show", "--medical-id", &p.to_string()]);
        assert!(shown.contains("EMERGENCY: 意識不明で搬送"), "{shown}");

        // Consent given at reception during an eligibility check lets that institution fetch.
        let q = fed.patients[1];
        assert_eq!(a.put_records(q, &sample_bundle(1, 10)).0, 201);
        assert_eq!(c.fetch(q, a.code, "treatment", None).0, 403);
        let (status, answer) =
            c.eligibility(&json!({ "medical_id": q.to_string(), "visit_consent": true }));
        assert_eq!(
            (status, answer["eligible"].as_bool()),
            (200, Some(true)),
            "{answer}"
        );
        // Split, the registry tells the authority within a second or so.
        let started = std::time::Instant::now();
        while c.fetch(q, a.code, "treatment", None).0 != 200 {
            assert!(
                matches!(deployment, iryo_tests::Deployment::Split(_))
                    && started.elapsed() < std::time::Duration::from_secs(30),
                "consent at the desk did not let C fetch"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }

        // The log verifies, and an entry's inclusion proof checks out independently.
        let verified = fed.operator(&["audit", "verify"]);
        assert!(verified.contains("audit log verified"), "{verified}");
        let index = entries
            .last()
            .and_then(|e| e[0].as_u64())
            .expect("an entry");
        let proof: Value =
            serde_json::from_str(&fed.operator(&["audit", "proof", &index.to_string(), "--json"]))
                .expect("proof JSON");
        assert!(independent::verify(&proof), "{proof}");
        // The head is signed by the agency's key, over domain ‖ 0x00 ‖ body.
        assert_eq!(proof["tree_head"]["signer"], fed.agency_key, "{proof}");
        assert!(independent::head_signed(&proof["tree_head"]), "{proof}");
        let text = fed.operator(&["audit", "proof", &index.to_string()]);
        assert!(
            text.contains("signed by") && text.contains("leaf hash"),
            "{text}"
        );
        // And the log as it stood after three entries is a prefix of today's.
        let consistency: Value =
            serde_json::from_str(&fed.operator(&["audit", "consistency", "3"])).expect("JSON");
        assert_eq!(consistency["verified"], true, "{consistency}");

        // The records and the node's settings are its user's alone.
        use std::os::unix::fs::PermissionsExt;
        for f in [a.dir.join("node.redb"), a.dir.join("node.toml")] {
            let mode = std::fs::metadata(&f).expect("file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }

        // Both ends count what they did, in Prometheus text.
        let metrics = |n: &iryo_tests::federation::NodeProc| {
            ureq::get(format!("{}/metrics", n.api))
                .call()
                .expect("node /metrics")
                .body_mut()
                .read_to_string()
                .expect("text")
        };
        let requester = metrics(c);
        assert!(
            requester.contains("iryo_node_fetches_total{outcome=\"ok\"}"),
            "{requester}"
        );
        assert!(
            requester.contains("iryo_node_fetches_total{outcome=\"NoConsent\"}"),
            "{requester}"
        );
        // The grants showed the agency's clock: the same machine's, so within a second.
        let drift: i64 = requester
            .lines()
            .find_map(|l| l.strip_prefix("iryo_node_clock_drift_seconds "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the clock drift gauge");
        assert!(drift.abs() <= 1, "{drift}");
        let source = metrics(a);
        assert!(
            source.contains("iryo_node_served_total{outcome=\"served\"}"),
            "{source}"
        );
        assert!(source.contains("iryo_node_outbox_pending "), "{source}");
    }
}

on_every_deployment! {
    fn revoked_and_unregistered_peers_are_refused(deployment) {
        let fed = Federation::deploy(deployment, 3, 2, 1);
        let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
        let p = fed.patients[0];
        assert_eq!(a.put_records(p, &sample_bundle(2, 10)).0, 201);
        fed.consent(p, b.code);
        fed.consent(p, c.code);

        // C obtains a grant while still a member, then is revoked.
        let c_raw = RawPeer::new(&node_key(c), &fed.directory_addr);
        let ask = DirectoryRequest::Grant {
            medical_id: p,
            source: a.code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: None,
        };
        let DirectoryResponse::Grant(LoggedGrant { grant: held, .. }) = c_raw.directory(ask.clone()) else {
            panic!("C is granted")
        };
        fed.operator(&["institution", "revoke", &c.code.to_string()]);
        // The directory refuses C at once.
        match c_raw.directory(ask) {
            DirectoryResponse::Refused(r) => assert_eq!(r.reason, RefusalReason::Revoked),
            other => panic!("{other:?}"),
        }
        // And C's EMR is told so, as the README promises: 403 `revoked`.
        let (status, body) = c.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["reason"], "revoked", "{body}");
        // A refuses C's grant once its cached membership has been refreshed.
        std::thread::sleep(std::time::Duration::from_millis(1500));
        match c_raw.fetch(
            a,
            ExchangeRequest::Fetch {
                medical_id: p,
                purpose: Purpose::Treatment,
                grant: held,
                position: None,
            },
        ) {
            ExchangeResponse::Refused(r) => assert_eq!(r.reason, RefusalReason::NotMember, "{r}"),
            other => panic!("served a revoked institution: {other:?}"),
        }
        // Other members are unaffected.
        assert_eq!(b.fetch(p, a.code, "treatment", None).0, 200);

        // A key with no membership gets nothing from the directory or from a node.
        let stranger = RawPeer::new(
            &ed25519_dalek::SigningKey::from_bytes(&[77; 32]),
            &fed.directory_addr,
        );
        match stranger.directory(DirectoryRequest::Resolve { code: a.code }) {
            DirectoryResponse::Refused(r) => assert_eq!(r.reason, RefusalReason::NotMember),
            other => panic!("{other:?}"),
        }
        let b_raw = RawPeer::new(&node_key(b), &fed.directory_addr);
        // A member reads the log's signed head and proves an entry in it, as a third
        // party would: the agency's signature, the leaf's hash and its path to the root.
        let DirectoryResponse::TreeHead(head) = b_raw.directory(DirectoryRequest::TreeHead) else {
            panic!("a tree head")
        };
        let agency = ed25519_dalek::VerifyingKey::from_bytes(
            &iryo_proto::merkle::from_hex(&fed.agency_key).expect("agency key hex"),
        )
        .expect("agency key");
        let opened = head.verify(&agency).expect("signed by the agency");
        let last = opened.size - 1;
        match b_raw.directory(DirectoryRequest::AuditProof { index: last }) {
            DirectoryResponse::AuditProof {
                index,
                entry,
                proof,
                head,
            } => {
                let head = head.verify(&agency).expect("signed by the agency");
                assert!(iryo_proto::merkle::verify_inclusion(
                    &iryo_proto::merkle::leaf_hash(&entry),
                    index,
                    head.size,
                    &proof,
                    &head.root
                ));
            }
            other => panic!("{other:?}"),
        }
        match b_raw.directory(DirectoryRequest::AuditProof { index: 1 << 40 }) {
            DirectoryResponse::Refused(r) => assert_eq!(r.reason, RefusalReason::BadRequest),
            other => panic!("{other:?}"),
        }
        let DirectoryResponse::Grant(LoggedGrant { grant: g, .. }) = b_raw.directory(DirectoryRequest::Grant {
            medical_id: p,
            source: a.code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: None,
        }) else {
            panic!("B is granted")
        };
        match stranger.fetch(
            a,
            ExchangeRequest::Fetch {
                medical_id: p,
                purpose: Purpose::Treatment,
                grant: g,
                position: None,
            },
        ) {
            ExchangeResponse::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::Grant(GrantRefusal::OtherRequester));
            }
            other => panic!("{other:?}"),
        }
    }
}

on_every_deployment! {
    fn forged_expired_replayed_and_misbound_grants_are_refused(deployment) {
        let fed = Federation::deploy(deployment, 3, 2, 60);
        let (a, b, c) = (&fed.nodes[0], &fed.nodes[1], &fed.nodes[2]);
        let (p, q) = (fed.patients[0], fed.patients[1]);
        assert_eq!(a.put_records(p, &sample_bundle(2, 10)).0, 201);
        fed.consent(p, b.code);
        let b_raw = RawPeer::new(&node_key(b), &fed.directory_addr);
        let ask = || DirectoryRequest::Grant {
            medical_id: p,
            source: a.code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: None,
        };
        let fresh = || match b_raw.directory(ask()) {
            DirectoryResponse::Grant(g) => g.grant,
            other => panic!("{other:?}"),
        };
        let refusal = |resp: ExchangeResponse| match resp {
            ExchangeResponse::Refused(r) => r.reason,
            ExchangeResponse::Records { .. } => panic!("records were served"),
        };
        let fetch = |medical_id, purpose, grant| {
            b_raw.fetch(
                a,
                ExchangeRequest::Fetch {
                    medical_id,
                    purpose,
                    grant,
                    position: None,
                },
            )
        };

        let g = fresh();
        match fetch(p, Purpose::Treatment, g.clone()) {
            ExchangeResponse::Records { .. } => {}
            other => panic!("a fresh grant was not served: {other:?}"),
        }
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, g.clone())),
            RefusalReason::Grant(GrantRefusal::Replayed)
        );
        assert_eq!(
            refusal(fetch(q, Purpose::Treatment, fresh())),
            RefusalReason::Grant(GrantRefusal::OtherPatient)
        );
        assert_eq!(
            refusal(fetch(p, Purpose::Research, fresh())),
            RefusalReason::Grant(GrantRefusal::OtherPurpose)
        );

        let template = g.verify_any().expect("grant decodes");
        let agency = fed.agency_key();
        let sign = |f: &dyn Fn(&mut Grant)| {
            let mut x = template.clone();
            x.id[0] ^= 0x5a;
            f(&mut x);
            Signed::sign(&x, &agency)
        };
        let now = chrono::Utc::now().timestamp();
        let expired = sign(&|g| {
            g.issued_at = now - 1000;
            g.expires_at = now - 700;
        });
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, expired)),
            RefusalReason::Grant(GrantRefusal::Expired)
        );
        let other_source = sign(&|g| g.source = c.code);
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, other_source)),
            RefusalReason::Grant(GrantRefusal::OtherSource)
        );
        let other_requester = sign(&|g| g.requester_key = node_key(c).verifying_key().to_bytes());
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, other_requester)),
            RefusalReason::Grant(GrantRefusal::OtherRequester)
        );
        let forged = Signed::sign(&template, &ed25519_dalek::SigningKey::from_bytes(&[5; 32]));
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, forged)),
            RefusalReason::Grant(GrantRefusal::NotAgency)
        );
        let mut tampered = g.clone();
        let last = tampered.body.len() - 1;
        tampered.body[last] ^= 1;
        assert_eq!(
            refusal(fetch(p, Purpose::Treatment, tampered)),
            RefusalReason::Grant(GrantRefusal::BadSignature)
        );
        assert_eq!(
            grant_issued(&fed.audit_show(p)).len(),
            3,
            "each grant the directory gave is logged"
        );
        // The source reported each refusal, signed, through its outbox: the attempts are
        // in the patient's audit log (those naming patient q under q's).
        let refused_reports = |id| {
            fed.audit_show(id)
                .iter()
                .filter(|e| e[1].get("AccessRefused").is_some())
                .count()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while refused_reports(p) < 7 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        assert_eq!(
            refused_reports(p),
            7,
            "replayed, purpose, expired, source, requester, forged, tampered"
        );
        assert_eq!(refused_reports(q), 1, "the grant for another patient");
        let text = fed.operator(&["audit", "show", "--medical-id", &p.to_string()]);
        assert!(text.contains("ACCESS REFUSED by"), "{text}");
    }
}

on_every_deployment! {
    fn notifications_wait_in_the_outbox_and_arrive_exactly_once(deployment) {
        let mut fed = Federation::deploy(deployment, 2, 1, 600);
        let p = fed.patients[0];
        let (a_code, b_code) = (fed.nodes[0].code, fed.nodes[1].code);
        assert_eq!(fed.nodes[0].put_records(p, &sample_bundle(2, 10)).0, 201);
        fed.consent(p, b_code);
        // A first exchange while all is up teaches A who B is (cached for 600 s).
        assert_eq!(fed.nodes[1].fetch(p, a_code, "treatment", None).0, 200);
        assert!(fed.nodes[0].drain_outbox(20) && fed.nodes[1].drain_outbox(20));
        let b_raw = RawPeer::new(&node_key(&fed.nodes[1]), &fed.directory_addr);
        let DirectoryResponse::Grant(LoggedGrant { grant: g, .. }) = b_raw.directory(DirectoryRequest::Grant {
            medical_id: p,
            source: a_code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: None,
        }) else {
            panic!("granted")
        };
        let grant_id = g.verify_any().expect("grant").id;

        fed.stop_directory();
        // The source verifies the grant offline and serves; its disclosure waits.
        assert!(matches!(
            b_raw.fetch(
                &fed.nodes[0],
                ExchangeRequest::Fetch {
                    medical_id: p,
                    purpose: Purpose::Treatment,
                    grant: g,
                    position: None,
                }
            ),
            ExchangeResponse::Records { .. }
        ));
        std::thread::sleep(std::time::Duration::from_millis(500));
        assert_eq!(fed.nodes[0].outbox_pending(), 1);
        // Killed and restarted while the directory is away, the node still holds it.
        fed.nodes[0].stop();
        fed.nodes[0].start();
        assert_eq!(fed.nodes[0].outbox_pending(), 1);
        fed.start_directory();
        assert!(
            fed.nodes[0].drain_outbox(60),
            "delivered after the directory came back"
        );
        let for_grant: Vec<Value> = notifications(&fed.audit_show(p))
            .into_iter()
            .filter(|n| {
                let signed: Signed<Notification> =
                    serde_json::from_value(n["notification"].clone()).expect("signed");
                signed
                    .open_unverified()
                    .is_ok_and(|x| x.grant_id == grant_id)
            })
            .collect();
        assert_eq!(for_grant.len(), 1, "exactly once");
    }
}

#[test]
fn checks_answered_before_the_directory_is_killed_are_recorded_once() {
    let mut fed = Federation::start(1, 1, 600);
    let p = fed.patients[0];
    let service_uses = |fed: &Federation| {
        let shown = fed
            .registry
            .json(&["show", "--medical-id", &p.to_string(), "--json"]);
        shown["service_use"].as_array().map_or(0, Vec::len)
    };
    fed.stop_directory();
    let before = service_uses(&fed);
    fed.start_directory();
    // Answered over the network, then the directory is killed at once: some of these
    // are still in its intake files, to be moved into the logs when it next opens.
    let node = &fed.nodes[0];
    let (threads, each) = (4, 10);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for _ in 0..each {
                    let (status, a) = node.eligibility(&json!({ "medical_id": p.to_string() }));
                    assert_eq!((status, a["eligible"].as_bool()), (200, Some(true)), "{a}");
                }
            });
        }
    });
    fed.stop_directory();
    // Without its intake files the killed directory refuses to open, naming them:
    // they may hold answered checks.
    let intake = fed.registry.db().with_file_name("intake-0.redb");
    let aside = fed.registry.path("intake-0.aside");
    std::fs::rename(&intake, &aside).unwrap();
    let refused = fed.registry.fails(&["status"]);
    assert!(
        refused.contains("intake-0.redb") && refused.contains("put the file back"),
        "{refused}"
    );
    std::fs::rename(&aside, &intake).unwrap();
    assert_eq!(
        service_uses(&fed),
        before + threads * each,
        "every answered check"
    );
    assert_eq!(
        service_uses(&fed),
        before + threads * each,
        "and none twice"
    );
    let verified = fed.registry.ok(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
}

/// An RFC 6962 / RFC 9162 inclusion check written here from the RFC, sharing no code
/// with the directory's.
mod independent {
    use serde_json::Value;
    use sha2::{Digest, Sha256};

    fn h(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = Sha256::new();
        parts.iter().for_each(|p| d.update(p));
        d.finalize().to_vec()
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0))
            .collect()
    }

    /// The tree head's signature, from the published fields alone.
    pub(crate) fn head_signed(head: &Value) -> bool {
        use ed25519_dalek::{Signature, Verifier, VerifyingKey};
        let field = |k: &str| unhex(head[k].as_str().unwrap_or(""));
        let Ok(key) = <[u8; 32]>::try_from(field("signer").as_slice()) else {
            return false;
        };
        let Ok(sig) = <[u8; 64]>::try_from(field("signature").as_slice()) else {
            return false;
        };
        let mut message = head["domain"].as_str().unwrap_or("").as_bytes().to_vec();
        message.push(0);
        message.extend_from_slice(&field("body"));
        VerifyingKey::from_bytes(&key)
            .is_ok_and(|k| k.verify(&message, &Signature::from_bytes(&sig)).is_ok())
    }

    pub(crate) fn verify(proof: &Value) -> bool {
        let index = proof["index"].as_u64().unwrap_or(u64::MAX);
        let size = proof["tree_head"]["size"].as_u64().unwrap_or(0);
        let root = unhex(proof["tree_head"]["root"].as_str().unwrap_or(""));
        let path: Vec<Vec<u8>> = proof["proof"]
            .as_array()
            .map(|a| a.iter().map(|x| unhex(x.as_str().unwrap_or(""))).collect())
            .unwrap_or_default();
        let leaf = h(&[&[0], &unhex(proof["entry_hex"].as_str().unwrap_or(""))]);
        if index >= size {
            return false;
        }
        let (mut f, mut s) = (index, size - 1);
        let mut r = leaf;
        for p in &path {
            if s == 0 {
                return false;
            }
            if f % 2 == 1 || f == s {
                r = h(&[&[1], p, &r]);
                while f % 2 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            } else {
                r = h(&[&[1], &r, p]);
            }
            f >>= 1;
            s >>= 1;
        }
        s == 0 && r == root
    }
}

on_every_deployment! {
    fn records_too_large_to_fetch_are_refused_when_stored_and_nothing_false_is_logged(deployment) {
        let fed = Federation::deploy(deployment, 2, 1, 1);
        let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
        let p = fed.patients[0];
        fed.consent(p, b.code);
        let big = || {
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"text": "scan"}, "note": [{"text": "x".repeat(7 << 20)}]})
        };
        assert_eq!(a.put_records(p, &big()).0, 201);
        assert_eq!(a.put_records(p, &big()).0, 201);
        let (status, body) = a.put_records(p, &big());
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["error"], "too_large", "{body}");
        // What was stored can still be fetched whole, and both ends report it once.
        let (status, bundle) = b.fetch(p, a.code, "treatment", None);
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(bundle["entry"].as_array().map(Vec::len), Some(2));
        assert!(bundle.get("total").is_none(), "bdl-1: {}", bundle["type"]);
    }
}
