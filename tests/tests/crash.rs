//! A process killed in the middle of enrollment, then run again, ends in exactly the
//! state of one uninterrupted run — on redb, and on PostgreSQL, whose batches write
//! their new persons by COPY — batch by batch and by the initial load.

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

/// The sample of 12,000 persons with rows broken on purpose, and conflicts too: a
/// person under another name, a stranger with someone's card.
fn sample_files(whole: &Directory) -> Vec<String> {
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
    let first = std::path::PathBuf::from(&files[0]);
    files.push(
        iryo_tests::stores::contradicting(&first, &whole.path(""))
            .display()
            .to_string(),
    );
    files
}

/// `enroll` of `files` in batches of 300, by the initial load or not (`when`).
fn enroll_args<'a>(files: &'a [String], when: &'a str) -> Vec<&'a str> {
    let mut args = vec!["enroll", "--batch-rows", "300", "--initial-load", when];
    args.extend(files.iter().map(String::as_str));
    args
}

/// Enrolls, expecting the rejected rows' exit code 3 with the rest enrolled.
fn enrolled(d: &Directory, args: &[&str]) {
    let out = d.run(args);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

/// The two directories hold the same persons, counts and conflicts.
fn same_registry(killed: &Directory, whole: &Directory) {
    assert_eq!(killed.snapshot(), whole.snapshot());
    assert_eq!(killed.json(&["status"]), whole.json(&["status"]));
    let conflicts = |d: &Directory| {
        let mut v = d.json(&["conflicts", "list", "--all", "--json"]);
        iryo_tests::stores::timeless(&mut v);
        v
    };
    assert!(conflicts(whole).as_array().unwrap().len() >= 2);
    assert_eq!(conflicts(killed), conflicts(whole));
}

/// Starts `args` in `d` with its log on a pipe, and reads the log until a line
/// holding `mark` has been seen `times` times; the process is still running.
fn run_until(d: &Directory, args: &[&str], mark: &str, times: usize) -> std::process::Child {
    let mut child = d
        .command(args)
        .env("RUST_LOG", "iryo_directory=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = 0;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains(mark) {
            seen += 1;
            if seen == times {
                break;
            }
        }
    }
    assert_eq!(seen, times, "the run ended before it could be killed");
    // Keep reading, so that the process never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

on_both_backends! {
fn killed_enrollment_rerun_equals_one_uninterrupted_run(backend) {
    let whole = Directory::on(backend);
    whole.ok(&["init"]);
    let killed = beside(&whole);
    let files = sample_files(&whole);
    let args = enroll_args(&files, "never");

    enrolled(&whole, &args);

    let mut child = run_until(&killed, &args, "batch committed", 12);
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed mid-run");
    let partial = killed.snapshot();
    let partial_len = partial.as_array().unwrap().len();
    assert!(
        partial_len > 0,
        "some batches were committed before the kill"
    );

    enrolled(&killed, &args);
    assert!(whole.snapshot().as_array().unwrap().len() > partial_len);
    same_registry(&killed, &whole);
}
}

on_both_backends! {
/// The initial load is one transaction: killed while it builds the indexes, it has
/// enrolled nothing; run again, it leaves what enrolling batch by batch leaves.
fn killed_initial_load_enrolls_nothing_and_its_rerun_equals_batch_by_batch(backend) {
    use std::os::unix::fs::PermissionsExt;
    let whole = Directory::on(backend);
    whole.ok(&["init"]);
    let killed = beside(&whole);
    let files = sample_files(&whole);
    enrolled(&whole, &enroll_args(&files, "never"));

    let load = enroll_args(&files, "always");
    let mut child = run_until(&killed, &load, "building the medical ID index", 1);
    // Its temporary files hold personal data: the owner's alone.
    let scratch = killed.data.join("initial-load");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&scratch), 0o700);
    assert_eq!(mode(&scratch.join("rows")), 0o600);
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success(), "killed mid-run");
    assert_eq!(killed.json(&["status"])["persons"], 0, "nothing enrolled");

    enrolled(&killed, &load);
    assert!(
        !scratch.exists(),
        "the rerun removed the killed run's files"
    );
    same_registry(&killed, &whole);

    // A registry that holds persons takes no initial load on PostgreSQL: asked for
    // one, it refuses and names the way that works.
    if killed.cluster.is_some() {
        let out = killed.run(&load);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("needs an empty registry"), "{err}");
        assert!(err.contains("--initial-load never"), "{err}");
        same_registry(&killed, &whole);
    }
}
}
