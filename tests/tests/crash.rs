//! A process killed in the middle of enrollment, then run again, ends in exactly the
//! state of one uninterrupted run — on redb, and on PostgreSQL, whose batches write
//! their new persons by COPY.

use iryo_tests::{on_both_backends, Directory};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A directory for the run that gets killed: the same keys as `whole` and an empty
/// registry beside it (a copy of its empty redb file, or a database of its own in the
/// same cluster).
fn beside(whole: &Directory) -> Directory {
    match &whole.cluster {
        None => {
            let killed = Directory::new();
            copy_dir(&whole.data, &killed.data);
            killed
        }
        Some(cluster) => {
            let url = iryo_tests::stores::database(cluster, "killed");
            let killed = Directory::on_postgres(&url.to_string());
            killed.ok(&["init"]);
            // The same issuance key, so the same medical IDs.
            std::fs::remove_dir_all(killed.data.join("keys")).unwrap();
            copy_dir(&whole.data.join("keys"), &killed.data.join("keys"));
            killed
        }
    }
}

on_both_backends! {
fn killed_enrollment_rerun_equals_one_uninterrupted_run(backend) {
    let whole = Directory::on(backend);
    whole.ok(&["init"]);
    let killed = beside(&whole);

    let sample = whole.path("sample");
    whole.ok(&[
        "sample",
        "--persons",
        "12000",
        "--seed",
        "11",
        "--bad-rows",
        "1",
        "--out",
        &sample.display().to_string(),
    ]);
    let mut files: Vec<String> = std::fs::read_dir(&sample)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    // Conflicts too: a person under another name, a stranger with someone's card.
    let first = std::path::PathBuf::from(&files[0]);
    files.push(
        iryo_tests::stores::contradicting(&first, &whole.path(""))
            .display()
            .to_string(),
    );
    let mut args = vec!["enroll", "--batch-rows", "300"];
    args.extend(files.iter().map(String::as_str));
    // Rejected rows: exit code 3, the rest enrolled.
    let enrolled = |d: &Directory| {
        let out = d.run(&args);
        assert_eq!(out.status.code(), Some(3), "{out:?}");
    };

    enrolled(&whole);

    let mut child = killed
        .command(&args)
        .env("RUST_LOG", "iryo_directory=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut committed = 0;
    for line in BufReader::new(stderr).lines() {
        if line.unwrap().contains("batch committed") {
            committed += 1;
            if committed == 12 {
                break;
            }
        }
    }
    assert_eq!(committed, 12, "the run ended before it could be killed");
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed mid-run");
    let partial = killed.snapshot();
    let partial_len = partial.as_array().unwrap().len();
    assert!(
        partial_len > 0,
        "some batches were committed before the kill"
    );

    enrolled(&killed);
    let expected = whole.snapshot();
    assert!(expected.as_array().unwrap().len() > partial_len);
    assert_eq!(killed.snapshot(), expected);
    assert_eq!(killed.json(&["status"]), whole.json(&["status"]));
    let conflicts = |d: &Directory| {
        let mut v = d.json(&["conflicts", "list", "--all", "--json"]);
        iryo_tests::stores::timeless(&mut v);
        v
    };
    assert!(conflicts(&whole).as_array().unwrap().len() >= 2);
    assert_eq!(conflicts(&killed), conflicts(&whole));
}
}
