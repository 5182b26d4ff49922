//! EMR retries: a check or a fetch sent again with the same `Idempotency-Key` gets the
//! same answer and is recorded once, whatever the first attempt got to.

use iryo_proto::federation::Purpose;
use iryo_proto::wire::*;
use iryo_tests::federation::*;
use iryo_tests::on_every_deployment;
use serde_json::{json, Value};

fn count(entries: &[Value], kind: &str) -> usize {
    entries
        .iter()
        .filter(|e| e.get(1).and_then(|e| e.get(kind)).is_some())
        .count()
}

on_every_deployment! {
    fn a_retry_with_the_same_key_is_answered_again_and_recorded_once(deployment) {
        let mut fed = Federation::deploy(deployment, 2, 2, 60);
        let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
        let p = fed.patients[0];
        assert_eq!(a.put_records(p, &sample_bundle(2, 10)).0, 201);
        fed.consent(p, b.code);
        let logged = |fed: &Federation, kind| count(&fed.audit_show(p), kind);

        // Checks: the retry gets the first answer; another key is another check.
        let check = json!({ "medical_id": p.to_string() });
        let first = b.eligibility_keyed(&check, "6f1c2a9e-1b7d-4c55-9a0e-3f2b8d7c1e44");
        assert_eq!(first.0, 200, "{first:?}");
        assert_eq!(
            b.eligibility_keyed(&check, "6f1c2a9e-1b7d-4c55-9a0e-3f2b8d7c1e44"),
            first
        );
        assert_eq!(b.eligibility_keyed(&check, "check-2").0, 200);
        // A hostile or oversized key is refused, naming the header; nothing is recorded.
        for bad in ["<svg/onload=alert(1)>", &"k".repeat(65), "a b"] {
            let (status, body) = b.eligibility_keyed(&check, bad);
            assert_eq!(
                (status, body["error"].as_str()),
                (400, Some("bad_idempotency_key")),
                "{bad}: {body}"
            );
            let (status, _) = b.fetch_keyed(p, a.code, bad);
            assert_eq!(status, 400);
        }

        // Fetches: the retry gets the same Bundle from what the node kept; one grant, one
        // disclosure, one receipt.
        let (status, bundle) = b.fetch_keyed(p, a.code, "fetch-1");
        assert_eq!(status, 200, "{bundle}");
        assert_eq!(b.fetch_keyed(p, a.code, "fetch-1"), (200, bundle.clone()));
        assert_eq!(b.metric("iryo_node_fetches_kept_total"), 1);
        assert!(a.drain_outbox(10) && b.drain_outbox(10));
        assert_eq!(logged(&fed, "GrantIssued"), 1);
        assert_eq!(logged(&fed, "Notification"), 2);

        // A first attempt that got its grant and never reached the source (the raw peer,
        // holding B's key, stands for it): the retry is served under that same grant.
        let b_raw = RawPeer::new(&node_key(b), &fed.directory_addr);
        let keyed_grant = |key: &str| match b_raw.directory(DirectoryRequest::Grant {
            medical_id: p,
            source: a.code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: Some(iryo_proto::IdempotencyKey::parse(key).unwrap()),
        }) {
            DirectoryResponse::Grant(g) => g.grant,
            other => panic!("{other:?}"),
        };
        keyed_grant("fetch-2");
        let (status, again) = b.fetch_keyed(p, a.code, "fetch-2");
        assert_eq!((status, &again), (200, &bundle));
        assert!(a.drain_outbox(10) && b.drain_outbox(10));
        assert_eq!(
            logged(&fed, "GrantIssued"),
            2,
            "the retry used the first grant"
        );
        assert_eq!(logged(&fed, "Notification"), 4);

        // A first attempt the source served whose answer never arrived: the source does
        // not serve the grant twice, and the EMR is told to ask anew.
        let g = keyed_grant("fetch-3");
        let served = b_raw.fetch(
            a,
            ExchangeRequest::Fetch {
                medical_id: p,
                purpose: Purpose::Treatment,
                grant: g,
                position: None,
            },
        );
        assert!(matches!(served, ExchangeResponse::Records { .. }));
        let (status, body) = b.fetch_keyed(p, a.code, "fetch-3");
        assert_eq!(
            (status, body["error"].as_str()),
            (409, Some("already_served")),
            "{body}"
        );
        assert!(body["detail"].as_str().unwrap_or("").contains("new key"));
        assert_eq!(logged(&fed, "GrantIssued"), 3);

        // Three checks were sent, one of them twice: two visits are recorded.
        drop(b_raw);
        fed.stop_directory();
        let shown = fed
            .registry
            .json(&["show", "--medical-id", &p.to_string(), "--json"]);
        assert_eq!(shown["service_use"].as_array().map_or(0, Vec::len), 2);
    }
}

/// One HTTP/1.1 connection to a node's API, as an EMR's client keeps it between calls.
struct Connection(std::io::BufReader<std::net::TcpStream>, String);

impl Connection {
    fn open(node: &NodeProc) -> Self {
        let addr = node.api.trim_start_matches("http://").to_string();
        let s = std::net::TcpStream::connect(&addr).expect("connect to the node's API");
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        Connection(std::io::BufReader::new(s), addr)
    }

    /// Sends a POST whose body follows its headers after `pause`, as a slow client on a
    /// busy network does, and reads the answer: its status line and body, or what went
    /// wrong.
    fn post(
        &mut self,
        path: &str,
        headers: &str,
        body: &str,
        pause: std::time::Duration,
    ) -> Result<(String, String), std::io::Error> {
        use std::io::{BufRead, Read, Write};
        let s = self.0.get_mut();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n{headers}\r\n",
            self.1,
            body.len()
        )?;
        std::thread::sleep(pause);
        s.write_all(body.as_bytes())?;
        let mut status = String::new();
        self.0.read_line(&mut status)?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.0.read_line(&mut line)?;
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut answer = vec![0; length];
        self.0.read_exact(&mut answer)?;
        Ok((
            status.trim().to_string(),
            String::from_utf8_lossy(&answer).into_owned(),
        ))
    }
}

/// A refusal decided from the headers alone (a bad key, a wrong token) leaves the EMR's
/// connection usable: the node reads the body before it answers, so the connection is
/// neither closed under a client that keeps it for its next call nor reset under one
/// still sending.
#[test]
fn a_refusal_from_the_headers_leaves_the_connection_usable() {
    let fed = Federation::start(1, 1, 60);
    let node = &fed.nodes[0];
    let body = json!({ "medical_id": fed.patients[0].to_string() }).to_string();
    let auth = format!("Authorization: Bearer {}\r\n", node.token);
    let late = std::time::Duration::from_millis(300);
    let mut c = Connection::open(node);
    let (status, answer) = c
        .post(
            "/eligibility",
            &format!("{auth}Idempotency-Key: a b\r\n"),
            &body,
            late,
        )
        .expect("the refusal");
    assert!(
        status.contains(" 400 ") && answer.contains("bad_idempotency_key"),
        "{status} {answer}"
    );
    let (status, answer) = c
        .post(
            "/eligibility",
            "Authorization: Bearer wrong\r\n",
            &body,
            late,
        )
        .expect("the same connection answers again");
    assert!(
        status.contains(" 401 ") && answer.contains("unauthorized"),
        "{status} {answer}"
    );
    let (status, answer) = c
        .post("/eligibility", &auth, &body, std::time::Duration::ZERO)
        .expect("the same connection serves the next call");
    assert!(status.contains(" 200 "), "{status} {answer}");
}
