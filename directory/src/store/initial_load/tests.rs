//! The initial load against the ordinary path, on real redb files: the same files
//! must leave the same persons, index entries, conflicts and counters either way.

use super::super::tables::{CARDS, COUNTERS, MEDICAL_IDS, MY_NUMBERS};
use crate::enrollment::{
    ingest_file, initial_load, initial_load_sorting_in, IngestOptions, Progress, Summary,
};
use crate::issuance::{Issuer, Method};
use crate::sample::{write_sample, SampleOptions};
use crate::store::Store;
use redb::{ReadableDatabase, ReadableTable};
use std::path::{Path, PathBuf};

fn options() -> IngestOptions {
    IngestOptions {
        encoding: None,
        batch_rows: 250,
        only_insurer: None,
        max_line_bytes: 1 << 16,
        source_name: None,
    }
}

/// A store of its own directory: the intake files lie beside the main file.
fn store(dir: &Path) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    Store::create(&dir.join("d.redb"), 16, Method::Fpe)
        .unwrap()
        .with_signer(ed25519_dalek::SigningKey::from_bytes(&[9; 32]))
}

/// A sample of `persons` with rows broken on purpose, and a file after it that
/// contradicts the sample: a person under another name, a stranger holding someone's
/// card, a row repeated word for word, a My Number that is none.
fn files(dir: &Path, persons: u64) -> Vec<PathBuf> {
    let mut opts = SampleOptions::clean(persons, 5);
    opts.bad_rows_percent = 1.0;
    let mut files = write_sample(dir, &opts).unwrap().files;
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let text = text.trim_start_matches('\u{feff}');
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    let at = |name: &str| header.split(',').position(|h| h == name).unwrap();
    let rows: Vec<Vec<String>> = lines
        .take(40)
        .map(|l| l.split(',').map(str::to_string).collect())
        .filter(|r: &Vec<String>| r.len() == header.split(',').count())
        .collect();
    let mut out = vec![header.to_string()];
    let mut renamed = rows[0].clone();
    renamed[at("name")] = "別人 太郎".into();
    out.push(renamed.join(","));
    let mut stranger = rows[1].clone();
    stranger[at("my_number")] = iryo_proto::MyNumber::from_body(98_765_432_109).to_string();
    out.push(stranger.join(","));
    out.push(rows[2].join(","));
    let mut none = rows[3].clone();
    none[at("my_number")] = "123".into();
    out.push(none.join(","));
    let extra = dir.join("zz_contradicting.csv");
    std::fs::write(&extra, out.join("\n") + "\n").unwrap();
    files.push(extra);
    files
}

/// What a store holds, times left out: persons, conflicts, the three indexes and the
/// counters.
fn contents(s: &Store) -> serde_json::Value {
    let mut persons = serde_json::to_value(s.persons().unwrap()).unwrap();
    let mut conflicts = serde_json::to_value(s.conflicts(false).unwrap()).unwrap();
    untimed(&mut persons);
    untimed(&mut conflicts);
    let tx = s.db.begin_read().unwrap();
    let my_numbers: Vec<(u64, u64)> = tx
        .open_table(MY_NUMBERS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value())
        })
        .collect();
    let ids: Vec<(u64, Vec<u8>)> = tx
        .open_table(MEDICAL_IDS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value(), v.value().to_vec())
        })
        .collect();
    let cards: Vec<(Vec<u8>, Vec<u8>)> = tx
        .open_table(CARDS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect();
    let counters: Vec<(String, u64)> = tx
        .open_table(COUNTERS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_string(), v.value())
        })
        // Each store's intake files carry a random stamp of their own.
        .filter(|(k, _)| !k.ends_with("_stamp"))
        .collect();
    serde_json::json!({
        "persons": persons,
        "conflicts": conflicts,
        "my_numbers": my_numbers,
        "medical_ids": ids,
        "cards": cards,
        "counters": counters,
    })
}

/// The two stores' contents alike, or the first entry that differs named.
fn same(got: &serde_json::Value, expected: &serde_json::Value) {
    let (Some(got), Some(expected)) = (got.as_object(), expected.as_object()) else {
        panic!("contents are objects");
    };
    for (part, want) in expected {
        let (have, want) = (got[part].as_array().unwrap(), want.as_array().unwrap());
        for (i, (h, w)) in have.iter().zip(want).enumerate() {
            assert_eq!(h, w, "{part}: entry {i} differs");
        }
        assert_eq!(
            have.len(),
            want.len(),
            "{part}: a different number of entries"
        );
    }
}

fn untimed(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("at");
            m.values_mut().for_each(untimed);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(untimed),
        _ => {}
    }
}

fn batch_by_batch(s: &Store, issuer: &Issuer, files: &[PathBuf]) -> Vec<Summary> {
    files
        .iter()
        .map(|f| ingest_file(s, issuer, f, &options(), &Progress::Silent).unwrap())
        .collect()
}

/// An initial load whose sorts spill to runs every 4 KiB, so that every merge is
/// exercised.
fn loaded(s: &Store, issuer: &Issuer, files: &[PathBuf], scratch: &Path) -> Vec<Summary> {
    let opts = options();
    let out = initial_load_sorting_in(
        s,
        issuer,
        files,
        &opts,
        scratch,
        Some(4096),
        &Progress::Silent,
    )
    .unwrap();
    assert!(!scratch.exists(), "the scratch files are removed");
    out
}

#[test]
fn an_initial_load_leaves_what_batch_by_batch_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(&dir.path().join("sample"), 3_000);
    let issuer = Issuer::fpe(&[7u8; 32]);
    let (a, b) = (store(&dir.path().join("a")), store(&dir.path().join("b")));

    let expected = batch_by_batch(&a, &issuer, &files);
    let got = loaded(&b, &issuer, &files, &dir.path().join("scratch"));
    assert_eq!(got, expected);
    let conflicts: u64 = expected.iter().map(|s| s.conflicts).sum();
    let updated: u64 = expected.iter().map(|s| s.updated).sum();
    assert!(conflicts >= 2 && updated > 0, "{expected:?}");
    same(&contents(&b), &contents(&a));
}

#[test]
fn an_initial_load_into_a_few_persons_leaves_what_batch_by_batch_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let files = files(&dir.path().join("sample"), 2_000);
    let issuer = Issuer::fpe(&[7u8; 32]);
    let (a, b) = (store(&dir.path().join("a")), store(&dir.path().join("b")));
    // Both hold the first file; the rest, with the movers between files and the
    // contradicting rows, meets persons already in the registry.
    batch_by_batch(&a, &issuer, &files[..1]);
    batch_by_batch(&b, &issuer, &files[..1]);

    let expected = batch_by_batch(&a, &issuer, &files[1..]);
    let got = loaded(&b, &issuer, &files[1..], &dir.path().join("scratch"));
    assert_eq!(got, expected);
    same(&contents(&b), &contents(&a));
}

#[test]
fn a_load_that_fails_enrolls_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = files(&dir.path().join("sample"), 500);
    let bad = dir.path().join("no_header.csv");
    std::fs::write(&bad, "this,is,not,an,enrollment,file\n1,2,3,4,5,6\n").unwrap();
    files.push(bad);
    let issuer = Issuer::fpe(&[7u8; 32]);
    let s = store(&dir.path().join("a"));
    let scratch = dir.path().join("scratch");
    let err = initial_load(&s, &issuer, &files, &options(), &scratch, &Progress::Silent);
    assert!(err.is_err());
    assert_eq!(s.person_count().unwrap(), 0);
    assert!(!scratch.exists());
}
