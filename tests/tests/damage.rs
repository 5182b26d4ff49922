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
