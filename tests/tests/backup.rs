//! Online backup under load and restore: every check acknowledged before a backup began
//! is in it, the restored store verifies, and a partial or changed backup is refused.

use iryo_tests::https::{kyokai, row, serve, with_ca};
use iryo_tests::rows::medical_id_of;
use iryo_tests::{write_enrollment, Directory};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn backups_taken_while_serving_restore_with_every_acknowledged_check() {
    let d = Arc::new(with_ca());
    let file = d.path("a.csv");
    write_enrollment(&file, &[&row(&kyokai(), "kyokai", 0)]);
    d.ok(&["enroll", &file.display().to_string()]);
    let me = iryo_proto::MyNumber::from_body(77_700_000_000).to_string();
    let id = medical_id_of(&d, &me).to_string();
    let (_serve, _https) = serve(&d);

    // Load: checks one after another, each counted once it is answered.
    let (acked, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let load = {
        let (d, id, acked, stop) = (d.clone(), id.clone(), acked.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if d.check_by_id(&id)["eligible"] == true {
                    acked.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    let mut backups = Vec::new();
    for n in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        let before = acked.load(Ordering::SeqCst);
        let out = d.path(&format!("backup-{n}"));
        let said = d.ok(&["backup", "--out", &out.display().to_string()]);
        assert!(said.contains("backup written"), "{said}");
        backups.push((out, before, acked.load(Ordering::SeqCst)));
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    assert!(acked.load(Ordering::SeqCst) > 10, "the load ran");

    for (out, before, after) in &backups {
        let r = Directory::new();
        let said = r.ok(&["restore", "--from", &out.display().to_string()]);
        assert!(said.contains("restored into"), "{said}");
        assert!(r.ok(&["audit", "verify"]).contains("audit log verified"));
        assert!(r.ok(&["verify-store"]).contains("nothing wrong"));
        let shown = r.json(&["show", "--medical-id", &id, "--json"]);
        let recorded = shown["service_use"].as_array().map_or(0, Vec::len) as u64;
        assert!(
            (*before..=*after).contains(&recorded),
            "{}: {recorded} checks recorded; {before} were acknowledged before the backup began, {after} when it ended",
            out.display()
        );
        // The restored directory serves.
        assert_eq!(r.check_by_id(&id)["eligible"], true);
    }

    // Into a data directory that holds a database: refused.
    let (first, _, _) = &backups[0];
    let err = d.fails(&["restore", "--from", &first.display().to_string()]);
    assert!(err.contains("exists"), "{err}");
    // A changed file, or no manifest (an interrupted backup): refused, saying which.
    let changed = Directory::new();
    std::fs::create_dir_all(changed.path("b")).unwrap();
    for entry in std::fs::read_dir(first).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), changed.path("b").join(entry.file_name())).unwrap();
        }
    }
    let main = changed.path("b").join("directory.redb");
    let mut bytes = std::fs::read(&main).unwrap();
    bytes[5000] ^= 0xFF;
    std::fs::write(&main, bytes).unwrap();
    let b = changed.path("b").display().to_string();
    let err = changed.fails(&["restore", "--from", &b]);
    assert!(
        err.contains("directory.redb") && err.contains("SHA-256"),
        "{err}"
    );
    std::fs::remove_file(changed.path("b").join("manifest.json")).unwrap();
    let err = changed.fails(&["restore", "--from", &b]);
    assert!(err.contains("partial"), "{err}");
    assert!(!changed.db().exists(), "nothing restored from a bad backup");
}

#[test]
fn a_node_is_backed_up_while_it_runs_and_restored_with_its_records() {
    use iryo_tests::federation::{sample_bundle, Federation};
    let mut fed = Federation::start(1, 1, 60);
    let p = fed.patients[0];
    let node = &mut fed.nodes[0];
    assert_eq!(node.put_records(p, &sample_bundle(3, 50)).0, 201);
    let records = node.records(p).1;
    let config = node.config_path();
    let backup = |out: &std::path::Path| {
        iryo_tests::node_ok([
            "backup".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
    };
    let tmp = tempfile::tempdir().unwrap();
    assert!(backup(&tmp.path().join("b1")).contains("3 records"));

    // Lose the data directory; restore it from the backup; the node serves as before.
    node.stop();
    assert!(
        backup(&tmp.path().join("b2")).contains("3 records"),
        "a stopped node is backed up too"
    );
    std::fs::rename(node.dir.join("node.redb"), tmp.path().join("lost.redb")).unwrap();
    std::fs::rename(node.dir.join("node.key"), tmp.path().join("lost.key")).unwrap();
    iryo_tests::node_ok([
        "restore".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--from".as_ref(),
        tmp.path().join("b1").as_os_str(),
    ]);
    node.start();
    assert_eq!(node.records(p).1, records);
}
