//! A process killed in the middle of enrollment, then run again, ends in exactly the
//! state of one uninterrupted run.

use iryo_tests::{snapshot, Directory};
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

#[test]
fn killed_enrollment_rerun_equals_one_uninterrupted_run() {
    let whole = Directory::new();
    whole.ok(&["init"]);
    // The same keys and empty database for the run that gets killed.
    let killed = Directory::new();
    copy_dir(&whole.data, &killed.data);

    let sample = whole.path("sample");
    whole.ok(&[
        "sample",
        "--persons",
        "12000",
        "--seed",
        "11",
        "--out",
        &sample.display().to_string(),
    ]);
    let mut files: Vec<String> = std::fs::read_dir(&sample)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    let mut args = vec!["enroll", "--batch-rows", "300"];
    args.extend(files.iter().map(String::as_str));

    whole.ok(&args);

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
    let partial = snapshot(&killed.db());
    let partial_len = partial.as_array().unwrap().len();
    assert!(
        partial_len > 0,
        "some batches were committed before the kill"
    );

    killed.ok(&args);
    let expected = snapshot(&whole.db());
    assert!(expected.as_array().unwrap().len() > partial_len);
    assert_eq!(snapshot(&killed.db()), expected);
    assert_eq!(killed.json(&["status"]), whole.json(&["status"]));
}
