//! Witnesses of the audit log, as real processes: `iryo-witness` cosigns the
//! directory's checkpoints as the log grows, refuses a second history of the same log
//! (a split view: the same key and origin, other entries), and after kill -9 still
//! holds the checkpoint it cosigned last.

use iryo_proto::note::{Note, VerifierKey};
use iryo_tests::witnesses::Witness;
use iryo_tests::{on_both_backends, on_every_deployment, Directory};
use std::path::Path;

/// A directory with a few persons enrolled; their medical IDs.
fn enrolled(d: &Directory) -> Vec<String> {
    d.ok(&["init"]);
    let sample = d.path("sample");
    d.ok(&[
        "sample",
        "--persons",
        "20",
        "--out",
        &sample.display().to_string(),
    ]);
    let mut args = vec!["enroll".to_string()];
    for e in std::fs::read_dir(&sample).unwrap() {
        args.push(e.unwrap().path().display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.ok(&args);
    d.persons()
        .iter()
        .map(|p| p.medical_id.to_string())
        .collect()
}

/// Eligibility checks of `ids` at `institution`: each appends to the audit log.
fn checks(d: &Directory, ids: &[String], institution: &str) {
    for id in ids {
        d.ok(&["check", "--institution", institution, "--medical-id", id]);
    }
}

/// Asks the witness to cosign the directory's latest checkpoint; the cosigned note.
fn cosign(d: &Directory, w: &Witness) -> std::process::Output {
    d.run(&["audit", "witness", "--url", &w.url, "--key", &w.key])
}

fn cosigned_size(out: &std::process::Output, log: &str, w: &Witness) -> u64 {
    assert!(out.status.success(), "{out:?}");
    let note = Note::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
    let keys = [
        VerifierKey::parse(log).unwrap(),
        VerifierKey::parse(&w.key).unwrap(),
    ];
    let signed = note.verify(&keys).unwrap();
    assert_eq!(signed.len(), 2, "the log's signature and the witness's");
    iryo_proto::checkpoint::Checkpoint::from_text(&note.text)
        .unwrap()
        .size
}

/// A second directory holding the same log (the same keys, so the same origin and
/// signer) as `d` now: what a log shows when it forks its history.
fn fork(d: &Directory) -> Directory {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else if e.file_name() != "admin.sock" {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
    match &d.cluster {
        None => {
            let f = Directory::new();
            copy(&d.data, &f.data);
            f
        }
        Some(cluster) => {
            iryo_tests::stores::query(&cluster.url(), async |c| {
                c.batch_execute("CREATE DATABASE fork TEMPLATE iryo")
                    .await
                    .unwrap();
            });
            let url = cluster.url().replace("/iryo?", "/fork?");
            let f = Directory::on_postgres(&url);
            copy(&d.data, &f.data);
            f
        }
    }
}

on_both_backends! {
fn a_witness_cosigns_the_log_as_it_grows_and_refuses_a_forked_history(backend) {
    let d = Directory::on(backend);
    let ids = enrolled(&d);
    let log = d.ok(&["audit", "checkpoint-key"]).trim().to_string();
    let mut w = Witness::new(&d.path("witness"), &log);

    checks(&d, &ids[..3], "1310000011");
    let first = cosigned_size(&cosign(&d, &w), &log, &w);
    assert!(first >= 3, "{first}");
    // A witness named by an https:// URL is refused with what to do.
    let out = d.run(&["audit", "witness", "--url", "https://127.0.0.1:9", "--key", &w.key]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must begin with http://"));
    // The printed checkpoint is the log's own.
    let printed = Note::parse(&d.ok(&["audit", "checkpoint"])).unwrap();
    assert!(printed.verify(&[VerifierKey::parse(&log).unwrap()]).is_ok());

    // A second history of the same log, from here.
    let forked = fork(&d);
    checks(&d, &ids[3..6], "1310000011");
    let second = cosigned_size(&cosign(&d, &w), &log, &w);
    assert!(second > first, "{first} then {second}");
    // What was cosigned is kept.
    let kept = Note::parse(&d.ok(&["audit", "witnessed"])).unwrap();
    let kept = iryo_proto::checkpoint::Checkpoint::from_text(&kept.text).unwrap();
    assert_eq!(kept.size, second);

    // The fork grows past the cosigned size with other entries: no consistency
    // proof from the witness's checkpoint verifies, and it is refused.
    checks(&forked, &ids[6..12], "1310000029");
    let out = cosign(&forked, &w);
    assert!(!out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("422"), "{err}");

    // Killed and started again, the witness still holds the honest log's checkpoint:
    // the fork is refused again, the honest log goes on.
    w.kill_and_restart();
    assert!(!cosign(&forked, &w).status.success());
    checks(&d, &ids[12..14], "1310000011");
    let third = cosigned_size(&cosign(&d, &w), &log, &w);
    assert!(third > second);
}
}

/// A witness of `d`'s log, and a configuration file (its path) that has `serve` ask
/// it to cosign every second; with the log's verifier key.
fn witnessed_every_second(d: &Directory) -> (Witness, String, String) {
    let log = d.ok(&["audit", "checkpoint-key"]).trim().to_string();
    let w = Witness::new(&d.path("witness"), &log);
    let config = d.path("directory.toml");
    std::fs::write(
        &config,
        format!(
            "[audit]\nwitness_every_seconds = 1\n[[audit.witness]]\nurl = \"{}\"\nkey = \"{}\"\n",
            w.url, w.key
        ),
    )
    .unwrap();
    (w, log, config.display().to_string())
}

on_both_backends! {
fn serve_has_its_checkpoints_cosigned_and_keeps_them(backend) {
    let d = Directory::on(backend);
    let ids = enrolled(&d);
    let (w, log, config) = witnessed_every_second(&d);
    let (_serving, _) = iryo_tests::federation::start_ready(
        d.command(&["--config", &config, "serve", "--listen", "/ip4/127.0.0.1/tcp/0"]),
        "iryo-directory serve",
    );
    // Checks while serving (through its admin socket on redb).
    checks(&d, &ids[..4], "1310000011");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let keys = [VerifierKey::parse(&log).unwrap(), VerifierKey::parse(&w.key).unwrap()];
    loop {
        let out = d.run(&["audit", "witnessed"]);
        if out.status.success() {
            let note = Note::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
            assert_eq!(note.verify(&keys).unwrap().len(), 2);
            let cp = iryo_proto::checkpoint::Checkpoint::from_text(&note.text).unwrap();
            if cp.size >= 4 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve had no checkpoint of the four checks cosigned: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
}

on_every_deployment! {
fn my_portal_names_the_witnessed_checkpoint_its_access_log_is_proved_against(deployment) {
    use iryo_tests::federation::Federation;
    use iryo_tests::https::{activate, agent_no_redirects};
    let mut fed = Federation::deploy(deployment, 0, 1, 60);
    let letter = fed.registry.print_letters("letters", &[]).1.remove(0);
    let id = letter["medical_id"].replace('-', "");
    // The directory (split, the exchange authority, where My Portal is) has its
    // checkpoints cosigned every second.
    let (_w, _, config) = witnessed_every_second(fed.exchange_dir());
    fed.stop_directory();
    fed.configure_directory(&std::fs::read_to_string(&config).unwrap());
    fed.start_directory();
    // An operator reads the person's record: a line of their access log.
    fed.at_registry(&["show", "--medical-id", &id]);
    fed.until_told();

    let base = format!("https://localhost:{}", fed.https.rsplit(':').next().unwrap());
    let a = agent_no_redirects(&fed.exchange_dir().data.join("ca/ca.pem"));
    let session = activate(&a, &base, &letter["medical_id"], &letter["activation_code"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut page = a
            .get(format!("{base}/portal/access"))
            .header("cookie", &session)
            .call()
            .unwrap();
        let body = page.body_mut().read_to_string().unwrap();
        // Once every line is in a witnessed checkpoint, each says so, and the page
        // names how many witnesses confirmed it.
        if body.contains("立会人が確かめた木です") && !body.contains("確認待ちです。</p></details>")
        {
            assert!(body.contains("独立した立会人 1 者が確かめています"), "{body}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the access log never came to be proved against a witnessed checkpoint: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
}

/// Fetches `p` from node 0 by node 1 until `done` says the answer is the one awaited,
/// or fails after 30 s with the last answer.
fn fetch_until(
    fed: &iryo_tests::federation::Federation,
    p: iryo_proto::MedicalId,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, body) = fed.nodes[1].fetch(p, fed.nodes[0].code, "treatment", None);
        if done(status, &body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: last answer {status} {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

on_every_deployment! {
fn a_source_serves_records_only_while_witnesses_vouch_for_the_log(deployment) {
    use iryo_tests::federation::{sample_bundle, Federation};
    let mut fed = Federation::deploy(deployment, 2, 1, 60);
    let p = fed.patients[0];
    assert_eq!(fed.nodes[0].put_records(p, &sample_bundle(2, 10)).0, 201);
    fed.consent(p, fed.nodes[1].code);

    // The directory (split, the exchange authority) asks a witness every second.
    let (mut w, _, config) = witnessed_every_second(fed.exchange_dir());
    fed.stop_directory();
    fed.configure_directory(&std::fs::read_to_string(&config).unwrap());
    fed.start_directory();

    // The source requires that witness, confirming the log within 3 s.
    let source = &mut fed.nodes[0];
    source.stop();
    let mut cfg = iryo_node::config::NodeConfig::load(&source.config_path()).unwrap();
    cfg.witnesses.keys = vec![w.key.clone()];
    cfg.witnesses.grace_seconds = 3;
    cfg.witnesses.check_every_seconds = 1;
    std::fs::write(source.config_path(), cfg.commented()).unwrap();
    source.start();

    // Served once the source has a witnessed checkpoint (the first grant may be
    // refused before the log has anything to witness).
    fetch_until(&fed, p, "served under witnessed checkpoints", |s, _| s == 200);

    // The witness goes down: its confirmations age, and after the grace the source
    // refuses, naming why.
    w.kill();
    let refused = fetch_until(&fed, p, "refused once unwitnessed", |s, b| {
        s == 502 && b["reason"] == "unwitnessed"
    });
    assert!(
        refused["detail"].as_str().unwrap_or("").contains("longer than the 3 s allowed"),
        "{refused}"
    );

    // Back, it confirms the log again and records are served again.
    w.start();
    fetch_until(&fed, p, "served again", |s, _| s == 200);
}
}

/// The size of the latest checkpoint `d` kept with cosignatures, 0 for none.
fn witnessed_size(d: &Directory) -> u64 {
    let out = d.run(&["audit", "witnessed"]);
    if !out.status.success() {
        return 0;
    }
    Note::parse(&String::from_utf8_lossy(&out.stdout))
        .ok()
        .and_then(|n| iryo_proto::checkpoint::Checkpoint::from_text(&n.text).ok())
        .map_or(0, |c| c.size)
}

/// The agency forks its log and shows the fork to a node that kept a checkpoint of the
/// other history, the fork cosigned by a second witness the node also trusts (one that
/// never saw the first history): the node raises the alarm and serves no records. On
/// the embedded store, whose files copy into a fork while the directory is stopped;
/// split, the log forked is the exchange authority's.
fn a_node_shown_a_forked_log_raises_the_alarm_and_serves_nothing(
    deployment: iryo_tests::Deployment,
) {
    use iryo_proto::federation::Purpose;
    use iryo_proto::wire::{DirectoryRequest, DirectoryResponse};
    use iryo_tests::federation::{node_key, sample_bundle, start_ready, Federation, RawPeer};
    let mut fed = Federation::deploy(deployment, 2, 1, 60);
    let p = fed.patients[0];
    assert_eq!(fed.nodes[0].put_records(p, &sample_bundle(2, 10)).0, 201);
    fed.consent(p, fed.nodes[1].code);

    // The fork point: a copy of the stopped directory, keys and all.
    fed.stop_directory();
    let forked = fork(fed.exchange_dir());
    let (w1, _, config) = witnessed_every_second(fed.exchange_dir());
    fed.configure_directory(&std::fs::read_to_string(&config).unwrap());
    fed.start_directory();
    let (w2, _, fork_config) = witnessed_every_second(&forked);
    if fed.split.is_some() {
        // The forked authority hears the same registry.
        let mut text = std::fs::read_to_string(&fork_config).unwrap();
        text.push_str(&iryo_tests::split::authority_roles(&fed.registry));
        std::fs::write(&fork_config, text).unwrap();
    }

    // The source trusts either witness, one being enough.
    let source = &mut fed.nodes[0];
    source.stop();
    let mut cfg = iryo_node::config::NodeConfig::load(&source.config_path()).unwrap();
    cfg.witnesses.keys = vec![w1.key.clone(), w2.key.clone()];
    cfg.witnesses.check_every_seconds = 1;
    std::fs::write(source.config_path(), cfg.commented()).unwrap();
    source.start();
    fetch_until(&fed, p, "served under the honest log", |s, _| s == 200);
    let honest_dir = fed.exchange_dir();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while witnessed_size(honest_dir) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the honest log was never witnessed"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Let the source keep the honest checkpoint of that size or a later one.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let honest = witnessed_size(honest_dir);

    // The fork grows past it with other entries (grants the requester's key asks of
    // it), cosigned by the second witness.
    let (_fork_serve, line) = start_ready(
        forked.command(&[
            "--config",
            &fork_config,
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--https",
            "127.0.0.1:0",
        ]),
        "the forked iryo-directory serve",
    );
    let fork_addr = iryo_tests::federation::first_p2p(&line);
    let requester = RawPeer::new(&node_key(&fed.nodes[1]), &fork_addr);
    for _ in 0..honest + 3 {
        let answer = requester.directory(DirectoryRequest::Grant {
            medical_id: p,
            source: fed.nodes[0].code,
            purpose: Purpose::Treatment,
            reason: None,
            idempotency_key: None,
        });
        assert!(matches!(answer, DirectoryResponse::Grant(_)), "{answer:?}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while witnessed_size(&forked) <= honest {
        assert!(
            std::time::Instant::now() < deadline,
            "the fork was never cosigned"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // The source is shown the fork: the alarm, and nothing served.
    fed.nodes[0].set_directory_addresses(vec![fork_addr]);
    let refused = fetch_until(&fed, p, "refused once shown the fork", |s, b| {
        s == 502 && b["reason"] == "unwitnessed"
    });
    assert!(
        refused["detail"]
            .as_str()
            .unwrap_or("")
            .contains("does not extend"),
        "{refused}"
    );
    assert!(fed.nodes[0].metric("iryo_node_witness_alarms_total") >= 1);
}

mod a_node_shown_a_forked_log {
    use iryo_tests::{Backend, Deployment};

    #[test]
    fn raises_the_alarm_and_serves_nothing() {
        super::a_node_shown_a_forked_log_raises_the_alarm_and_serves_nothing(Deployment::Whole(
            Backend::Redb,
        ));
    }

    #[test]
    fn raises_the_alarm_and_serves_nothing_split() {
        super::a_node_shown_a_forked_log_raises_the_alarm_and_serves_nothing(Deployment::Split(
            Backend::Redb,
        ));
    }
}
