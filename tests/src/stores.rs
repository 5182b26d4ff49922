//! The two stores side by side, for the tests that hold PostgreSQL to the embedded
//! store's behaviour: sample files (with a conflicting and a rejected row), enrollment
//! into either store, and comparison of records without the seconds they were written.

use crate::pg::Cluster;
use iryo_directory::enrollment::{ingest_file, IngestOptions, Progress, Summary};
use iryo_directory::issuance::Issuer;
use iryo_directory::postgres::DatabaseUrl;
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_directory::store::EnrollBatch;
use std::path::{Path, PathBuf};

/// Quiet ingestion in batches of 400, naming the file as `name`.
pub fn options(name: &str) -> IngestOptions {
    IngestOptions {
        encoding: None,
        batch_rows: 400,
        only_insurer: None,
        max_line_bytes: 1 << 16,
        source_name: Some(name.to_string()),
    }
}

/// Enrolls `files` into `store`, one summary each.
pub fn enroll(store: &impl EnrollBatch, issuer: &Issuer, files: &[PathBuf]) -> Vec<Summary> {
    files
        .iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            ingest_file(store, issuer, f, &options(&name), &Progress::Silent).unwrap()
        })
        .collect()
}

/// A file that contradicts the sample: the first row of `file` under another name,
/// held as a conflict; the same row with a My Number that is no My Number, rejected;
/// and the second row's card under a My Number never seen, held as a conflict (the
/// card is another person's; on PostgreSQL, a row the batch takes for new until the
/// card's unique index refuses it).
pub fn contradicting(file: &Path, out: &Path) -> PathBuf {
    let mut r = csv::Reader::from_path(file).unwrap();
    let header = r.headers().unwrap().clone();
    let at = |name: &str| header.iter().position(|h| h == name).unwrap();
    let mut records = r.records();
    let first = records.next().unwrap().unwrap();
    let second = records.next().unwrap().unwrap();
    let path = out.join("contradicting.csv");
    let mut w = csv::Writer::from_path(&path).unwrap();
    w.write_record(&header).unwrap();
    let stranger = iryo_proto::MyNumber::from_body(98_765_432_109).to_string();
    for (base, column, value) in [
        (&first, "name", "別人 太郎"),
        (&first, "my_number", "123"),
        (&second, "my_number", stranger.as_str()),
    ] {
        let mut row: Vec<String> = base.iter().map(str::to_string).collect();
        row[at(column)] = value.to_string();
        w.write_record(&row).unwrap();
    }
    w.flush().unwrap();
    path
}

/// The sample files of `persons` people, and `contradicting`'s file after them.
pub fn sample(dir: &Path, persons: u64) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut files = write_sample(dir, &SampleOptions::clean(persons, 11))
        .unwrap()
        .files;
    let extra = contradicting(&files[0], dir);
    files.push(extra);
    files
}

/// Records with the seconds they were written at left out: the two stores enroll the
/// same files a moment apart.
pub fn timeless(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("at");
            m.values_mut().for_each(timeless);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(timeless),
        _ => {}
    }
}

/// The same records in the same order, but for when they were written.
pub fn same<T: serde::Serialize>(a: &[T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "a different number of records");
    for (i, (a, b)) in a.iter().zip(b).enumerate() {
        let (mut a, mut b) = (
            serde_json::to_value(a).unwrap(),
            serde_json::to_value(b).unwrap(),
        );
        timeless(&mut a);
        timeless(&mut b);
        assert_eq!(a, b, "record {i} differs");
    }
}

/// Runs `f` on a fresh connection to `url`.
pub fn query<T>(url: &str, f: impl AsyncFnOnce(&tokio_postgres::Client) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        f(&client).await
    })
}

/// Creates a database of its own in the cluster, for a store of its own.
pub fn database(pg: &Cluster, name: &str) -> DatabaseUrl {
    query(&pg.url(), async |c| {
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
    });
    DatabaseUrl::parse(&pg.url().replace("/iryo?", &format!("/{name}?"))).unwrap()
}
