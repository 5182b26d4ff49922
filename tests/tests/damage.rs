//! Damaged or lost files beside the main database: named, and made again where they
//! hold nothing of their own.

use iryo_tests::rows::{medical_id_of, my, two_enrolled};
use std::io::{Seek, SeekFrom, Write};

#[test]
fn a_damaged_linkage_file_is_named_and_rebuilt_from_the_logs() {
    let d = two_enrolled();
    let id = medical_id_of(&d, &my(1)).to_string();
    for _ in 0..3 {
        d.check_by_id(&id);
    }
    let show = || d.json(&["show", "--medical-id", &id, "--json"]);
    let before = show();
    assert_eq!(before["service_use"].as_array().map(Vec::len), Some(3));
    // The file's header overwritten.
    let linkage = d.data.join("linkage.redb");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&linkage)
        .unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(&[0xAB; 4096]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let err = d.fails(&["status"]);
    assert!(
        err.contains("linkage.redb: cannot open") && err.contains("rebuild-linkage"),
        "{err}"
    );
    let out = d.ok(&["rebuild-linkage"]);
    assert!(out.contains("linkage.redb rebuilt from"), "{out}");
    assert_eq!(show(), before, "the same history, service use and log");
    let verified = d.ok(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
    // The main file's errors name the main file, without the rebuild hint.
    let main = d.db();
    let mut f = std::fs::OpenOptions::new().write(true).open(&main).unwrap();
    f.write_all(&[0xAB; 4096]).unwrap();
    drop(f);
    let err = d.fails(&["status"]);
    assert!(
        err.contains("directory.redb: cannot open") && !err.contains("rebuild-linkage"),
        "{err}"
    );
}

/// Bytes flipped in a copy of each database file, at places that hold data: every
/// command either answers exactly as on the clean copy or refuses, naming the file;
/// none panics and none answers from damaged data.
#[test]
fn flipped_bytes_are_refused_or_harmless_never_served_or_a_panic() {
    let d = two_enrolled();
    let id = medical_id_of(&d, &my(1)).to_string();
    for _ in 0..3 {
        d.check_by_id(&id);
    }
    let commands: [&[&str]; 4] = [
        &["status"],
        &["show", "--medical-id", &id, "--json"],
        &["audit", "verify"],
        &["verify-store"],
    ];
    let run = |data: &std::path::Path, args: &[&str]| {
        std::process::Command::new(iryo_tests::directory_bin())
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .output()
            .expect("iryo-directory runs")
    };
    // Commands write too (a read is logged, with its time): each runs on a copy of its
    // own of one state.
    let pristine = tempfile::tempdir().unwrap();
    copy_dir(&d.data, pristine.path());
    let fresh = |from: &std::path::Path| {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(from, dir.path());
        dir
    };
    let clean: Vec<String> = commands
        .iter()
        .map(|c| {
            let out = run(fresh(pristine.path()).path(), c);
            assert!(out.status.success(), "{c:?} on the clean copy");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    // A fixed sequence of places: the test is the same on every run.
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut refused, mut harmless) = (0, 0);
    for file in ["directory.redb", "intake-0.redb", "linkage.redb"] {
        let bytes = std::fs::read(pristine.path().join(file)).unwrap();
        // Pages that hold something; a flip in empty space proves little.
        let used: Vec<usize> = (0..bytes.len() / 4096)
            .filter(|p| bytes[p * 4096..(p + 1) * 4096].iter().any(|b| *b != 0))
            .collect();
        assert!(!used.is_empty(), "{file} holds data");
        for trial in 0..8 {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), copy.path());
            let page = used[(next() as usize) % used.len()];
            let at = page * 4096 + (next() as usize) % (4096 - 64);
            let mut damaged = bytes.clone();
            for b in &mut damaged[at..at + 2 + trial * 8] {
                *b ^= 0x5A;
            }
            std::fs::write(copy.path().join(file), &damaged).unwrap();
            for (c, expected) in commands.iter().zip(&clean) {
                let out = run(fresh(copy.path()).path(), c);
                let (stdout, stderr) = (
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                );
                let what = format!("{c:?} with {file} flipped at {at}");
                assert!(
                    matches!(out.status.code(), Some(0 | 1)),
                    "{what}: exit {:?} (a panic or a signal)\n{stderr}",
                    out.status
                );
                if out.status.success() {
                    assert_eq!(&stdout, expected, "{what}: answered from damaged data");
                    harmless += 1;
                } else {
                    assert!(
                        stderr.contains(file),
                        "{what}: the error names the file\n{stderr}"
                    );
                    refused += 1;
                }
            }
        }
    }
    eprintln!("{refused} refused, {harmless} harmless");
    assert!(refused > 0, "some damage is found ({harmless} harmless)");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
