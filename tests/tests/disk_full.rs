//! A full disk under a serving directory: the storage fails, `/health` and the exit
//! code say so (75, for the supervisor to start it again), nothing acknowledged is lost,
//! and once space is freed the directory starts and serves again. On a tmpfs of its own,
//! mounted by the test; skipped, saying why, where the test may not mount.

use iryo_tests::federation::{field, start_ready};
use iryo_tests::rows::{file, medical_id_of, my, Row};
use iryo_tests::Directory;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Mount(std::path::PathBuf);

impl Mount {
    fn new(at: &Path, size_mib: u32) -> Option<Self> {
        std::fs::create_dir_all(at).ok()?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size_mib}m,mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .output()
            .ok()?;
        out.status.success().then(|| Self(at.to_path_buf()))
    }
}

impl Mount {
    /// Fills the filesystem to the last byte with a file `filler`; its path.
    fn fill(&self) -> std::path::PathBuf {
        let filler = self.0.join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        filler
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_stops_the_directory_for_a_restart_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::new(&tmp.path().join("small"), 40) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let d = Directory {
        tmp: tempfile::tempdir().unwrap(),
        data: mount.0.join("data"),
        database: None,
        cluster: None,
    };
    d.ok(&["init"]);
    d.ok(&["ca", "init"]);
    d.ok(&["enroll", &file(&d, "a.csv", &[Row::person(1)])]);
    let id = medical_id_of(&d, &my(1)).to_string();

    let serve = || {
        let mut cmd = d.command(&[
            "serve",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--https",
            "127.0.0.1:0",
        ]);
        cmd.env_remove("SSLKEYLOGFILE");
        start_ready(cmd, "iryo-directory serve")
    };
    let (mut proc_, line) = serve();
    let https = field(&line, "https").to_string();
    let agent = iryo_tests::https::agent(&d.data.join("ca/ca.pem"), None);
    let health = || {
        agent
            .get(format!(
                "https://localhost:{}/health",
                https.rsplit(':').next().unwrap()
            ))
            .call()
            .map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(health(), 200);
    let check = || {
        d.command(&[
            "check",
            "--institution",
            "1310000011",
            "--medical-id",
            &id,
            "--json",
        ])
        .output()
        .unwrap()
        .status
        .success()
    };
    let mut acknowledged = 0;
    for _ in 0..3 {
        assert!(check());
        acknowledged += 1;
    }

    let filler = mount.fill();

    // Checks fail (or succeed and count) until the directory stops with 75.
    let started = Instant::now();
    let status = loop {
        if let Some(s) = proc_.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the directory went on after its storage failed"
        );
        if check() {
            acknowledged += 1;
        }
    };
    assert_eq!(status.code(), Some(75), "exit code for the supervisor");

    // Once space is freed it starts again, with every acknowledged check.
    std::fs::remove_file(&filler).unwrap();
    let (mut again, _) = serve();
    let shown = d.json(&["show", "--medical-id", &id, "--json"]);
    let recorded = shown["service_use"].as_array().map_or(0, Vec::len);
    assert!(
        recorded >= acknowledged,
        "{acknowledged} checks acknowledged, {recorded} recorded"
    );
    assert!(d.ok(&["verify-store"]).contains("nothing wrong"));
    let _ = again.0.kill();
    let _ = again.0.wait();
}

#[test]
fn a_full_disk_stops_a_node_for_a_restart_and_loses_no_stored_record() {
    use iryo_node::config::NodeConfig;
    use iryo_tests::federation::{sample_bundle, Federation};
    let tmp = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::new(&tmp.path().join("small"), 24) else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN)");
        return;
    };
    let mut fed = Federation::start(1, 1, 60);
    let p = fed.patients[0];
    let node = &mut fed.nodes[0];
    // The node's data directory moves onto the small filesystem.
    node.stop();
    let data = mount.0.join("node");
    std::fs::create_dir_all(&data).unwrap();
    for f in ["node.redb", "node.key"] {
        std::fs::copy(node.dir.join(f), data.join(f)).unwrap();
    }
    let mut cfg = NodeConfig::load(&node.config_path()).unwrap();
    cfg.data_dir = data.clone();
    std::fs::write(node.config_path(), cfg.commented()).unwrap();
    node.start();

    let mut stored = 0usize;
    for _ in 0..3 {
        assert_eq!(node.put_records(p, &sample_bundle(1, 100)).0, 201);
        stored += 1;
    }
    let filler = mount.fill();
    let started = Instant::now();
    let code = loop {
        let exited = node.proc_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(s) = exited {
            break s.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the node went on after its storage failed"
        );
        if node.try_put_records(p, &sample_bundle(1, 100_000)) == Some(201) {
            stored += 1;
        }
    };
    assert_eq!(code, Some(75), "exit code for the supervisor");
    std::fs::remove_file(&filler).unwrap();
    node.start();
    let (status, bundle) = node.records(p);
    assert_eq!(status, 200);
    let held = bundle["entry"].as_array().map_or(0, Vec::len);
    assert!(
        held >= stored,
        "{stored} stores acknowledged, {held} records held"
    );
}
