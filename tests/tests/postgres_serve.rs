//! Two `serve` processes on one PostgreSQL database answer a federation at once, while
//! operator commands run on the database beside them; when one stops, its nodes go on
//! with the other, and the audit log both appended to is one log that verifies. Their
//! HTTPS fronts share sessions, sign-in counts, uploads and revocations.

use iryo_node::config::NodeConfig;
use iryo_tests::federation::*;
use iryo_tests::https::{
    activate, agent, agent_no_redirects, issue, kyokai, row, serve, set_cookie, with_ca_on,
};
use iryo_tests::pg::Cluster;
use iryo_tests::{write_enrollment, Backend, Directory};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn two_serve_processes_answer_one_federation_from_one_database() {
    let pg = Cluster::start();
    let mut fed = Federation::start_on_postgres(&pg.url(), 2, 2, 1);
    let (p, q) = (fed.patients[0], fed.patients[1]);
    let first = fed.directory_addr.clone();

    // A second process of the agency's directory on the same database and keys.
    let (_second, second) = fed.another_directory();
    assert_ne!(first, second);

    // Node 0 knows only the first process, node 1 only the second: both answer at once.
    fed.nodes[0].set_directory_addresses(vec![first.clone()]);
    fed.nodes[1].set_directory_addresses(vec![second.clone()]);
    std::thread::scope(|s| {
        for node in &fed.nodes {
            s.spawn(move || {
                for _ in 0..20 {
                    assert!(node.finds_eligible(p));
                    assert!(node.finds_eligible(q));
                }
            });
        }
        // An operator works on the database meanwhile: no "in use", no admin socket.
        let status = fed.registry.json(&["status"]);
        assert_eq!(status["persons"], 2, "{status}");
        fed.consent(p, fed.nodes[1].code);
        let more = fed.registry.path("more.csv");
        write_enrollment(&more, &[&patient_row(7, "追加 七郎", "東京都港区1-1")]);
        fed.registry.ok(&["enroll", more.to_str().unwrap()]);
    });
    assert_eq!(fed.registry.json(&["status"])["service_uses"], 80);
    // The second process recorded its node's checks in the intake, the first through
    // its group-commit writer; either moves them into the log, each once (below:
    // `audit verify`).
    assert_eq!(pg.sql("SELECT is_called FROM check_intake_seq_seq"), "t");

    // An exchange across the two: node 1 (on the second process) fetches what node 0
    // (on the first) holds; each reports its end to its own process.
    let doc = sample_bundle(2, 100);
    let (stored, body) = fed.nodes[0].put_records(p, &doc);
    assert!(stored == 200 || stored == 201, "{stored} {body}");
    let (status, bundle) = fed.nodes[1].fetch(p, fed.nodes[0].code, "treatment", None);
    assert_eq!(status, 200, "{bundle}");
    assert!(fed.nodes[0].drain_outbox(20) && fed.nodes[1].drain_outbox(20));
    let entries = fed.audit_show(p);
    let count = |kind: &str| entries.iter().filter(|e| e[1].get(kind).is_some()).count();
    assert_eq!(
        (count("GrantIssued"), count("Notification")),
        (1, 2),
        "one grant, and each end's report: {entries:?}"
    );

    // The first process stops; node 0, which now lists both, goes on with the second.
    fed.nodes[0].set_directory_addresses(vec![first, second]);
    assert!(fed.nodes[0].finds_eligible(p));
    fed.stop_directory();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !fed.nodes[0].finds_eligible(p) {
        assert!(
            Instant::now() < deadline,
            "node 0 never reached the second process"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(fed.nodes[1].finds_eligible(q));

    let verified = fed.operator(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
}

/// A check at `node` that must be answered within a minute: a hang fails it.
fn check_within_a_minute(node: &NodeProc, p: iryo_proto::MedicalId) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let resp = agent
        .post(&format!("{}/eligibility", node.api))
        .header("Authorization", &format!("Bearer {}", node.token))
        .send_json(json!({ "medical_id": p.to_string() }))
        .expect("an answer while the database is down, not a hang");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .read_json()
        .unwrap_or(serde_json::Value::Null);
    (status, body)
}

#[test]
fn serve_rides_out_the_database_going_away() {
    let mut pg = Cluster::start();
    let mut fed = Federation::start_on_postgres(&pg.url(), 2, 1, 60);
    let p = fed.patients[0];
    // Node 1's outbox waits long enough between rounds to be caught holding its report.
    fed.nodes[1].stop();
    let mut cfg = NodeConfig::load(&fed.nodes[1].config_path()).expect("node.toml");
    cfg.outbox.interval_ms = 4_000;
    std::fs::write(fed.nodes[1].config_path(), cfg.commented()).expect("node.toml");
    fed.nodes[1].start();
    fed.consent(p, fed.nodes[0].code);
    assert!(fed.nodes[0].finds_eligible(p));
    let (stored, _) = fed.nodes[1].put_records(p, &sample_bundle(1, 10));
    assert!(stored == 200 || stored == 201);

    // A fetch, then the database goes away before the source's outbox reports it.
    let (status, bundle) = fed.nodes[0].fetch(p, fed.nodes[1].code, "treatment", None);
    assert_eq!(status, 200, "{bundle}");
    pg.stop(true);

    // Every request gets a clear answer, not a hang: the node says the directory could
    // not answer, an operator's command names the database it cannot reach.
    let refused = check_within_a_minute(&fed.nodes[0], p);
    assert_eq!(refused.0, 502, "{}", refused.1);
    let out = fed.registry.run(&["status"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("PostgreSQL at postgresql://"), "{said}");
    // The source's report of the exchange waits in its outbox.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        fed.nodes[1].outbox_pending() > 0,
        "the report was lost or sent"
    );

    // The database comes back: serve answers again without a restart, and the report
    // reaches the audit log.
    pg.start_again();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fed.nodes[0].finds_eligible(p) {
        assert!(Instant::now() < deadline, "serve never reconnected");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(fed.nodes[1].drain_outbox(30), "the outbox never drained");
    let entries = fed.audit_show(p);
    let reports = entries
        .iter()
        .filter(|e| e[1].get("Notification").is_some())
        .count();
    assert!(reports >= 1, "{entries:?}");
    let verified = fed.operator(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
}

/// A second data directory for the same registry: the keys and the agency CA copied,
/// the database the same.
fn second_front(d: &Directory) -> Directory {
    let other = Directory::new();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let status = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(status.success());
    };
    copy(&d.data, &other.data);
    Directory {
        database: d.database.clone(),
        ..other
    }
}

#[test]
fn two_https_fronts_share_sessions_counts_uploads_and_revocations() {
    let d = with_ca_on(Backend::Postgres);
    let file = d.path("a.csv");
    write_enrollment(&file, &[&row(&kyokai(), "kyokai", 0)]);
    d.ok(&["enroll", &file.display().to_string()]);
    let letter = d.print_letters("letters", &[]).1.remove(0);
    let insurer = issue(&d, "--insurer", &kyokai(), "ins");
    let e = second_front(&d);
    let (_a, https_a) = serve(&d);
    let (_b, https_b) = serve(&e);
    let base = |https: &str| format!("https://localhost:{}", https.rsplit(':').next().unwrap());
    let (a, b) = (base(&https_a), base(&https_b));
    let ca = d.data.join("ca/ca.pem");
    let web = agent_no_redirects(&ca);

    // Signed in at one front, signed in at the other.
    let session = activate(&web, &a, &letter["medical_id"], &letter["activation_code"]);
    let home = |front: &str| {
        web.get(format!("{front}/portal/home"))
            .header("cookie", &session)
            .call()
            .unwrap()
    };
    assert_eq!(home(&a).status(), 200);
    let mut page = home(&b);
    assert_eq!(page.status(), 200, "the session is in the database");
    assert!(page
        .body_mut()
        .read_to_string()
        .unwrap()
        .contains(&letter["medical_id"]));

    // Failed sign-ins at one front count at the other.
    let wrong = |front: &str| {
        let page = web.get(format!("{front}/portal/")).call().unwrap();
        let form = set_cookie(&page, "iryo_form");
        web.post(format!("{front}/portal/login"))
            .header("cookie", &format!("iryo_form={form}"))
            .send_form([
                ("form", form.as_str()),
                ("medical_id", "not an id"),
                ("passphrase", "a wrong guess"),
            ])
            .unwrap()
            .status()
    };
    for _ in 0..5 {
        assert_eq!(wrong(&a), 401);
    }
    assert_eq!(
        wrong(&b),
        429,
        "the address's tries are counted across fronts"
    );

    // An upload received by one front is reported by the other.
    let upload = d.path("upload.csv");
    write_enrollment(&upload, &[&row(&kyokai(), "kyokai", 1)]);
    let client = agent(&ca, Some(&insurer));
    let mut res = client
        .post(format!("{a}/insurer/enrollments?name=upload.csv"))
        .send(std::fs::read(&upload).unwrap())
        .unwrap();
    assert_eq!(res.status(), 202);
    let accepted: serde_json::Value =
        serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
    let status_url = accepted["status_url"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut res = client.get(format!("{b}{status_url}")).call().unwrap();
        assert_eq!(res.status(), 200, "the other front knows the upload");
        let job: serde_json::Value =
            serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
        if job["state"] == "done" {
            assert_eq!(job["summary"]["new"], 1, "{job}");
            break;
        }
        assert_eq!(job["state"], "running", "{job}");
        assert!(
            Instant::now() < deadline,
            "the upload never finished: {job}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A certificate revoked where the CA is, is refused at the other front too.
    assert_eq!(
        client
            .get(format!("{b}/insurer/notices"))
            .call()
            .unwrap()
            .status(),
        200
    );
    let out = d.ok(&["ca", "revoke", &format!("insurer {}", kyokai())]);
    assert!(out.contains("published"), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent(&ca, Some(&insurer))
        .get(format!("{b}/insurer/notices"))
        .call()
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the other front still accepts a revoked certificate"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
