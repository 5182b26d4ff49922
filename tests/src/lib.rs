//! The end-to-end harness: runs the real `iryo-directory` binary against databases in
//! temp dirs, and helpers to write enrollment files and compare stored state.

#![forbid(unsafe_code)]

pub mod federation;
pub mod https;
pub mod local;
pub mod pg;
pub mod rows;
pub mod split;
pub mod stores;
pub mod witnesses;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Logs to stderr, warnings only unless `RUST_LOG` says otherwise: the demo's and the
/// benchmark's own output is what they print.
pub fn init_tracing() {
    iryo_p2p::logging::init("warn");
}

/// The `iryo-directory` binary of this workspace. `cargo test --workspace` builds it
/// (the directory crate has integration tests); otherwise it is built here once.
pub fn directory_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("iryo-directory")).clone()
}

/// The `iryo-node` binary, found or built the same way.
pub fn node_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("iryo-node")).clone()
}

/// The `iryo-witness` binary, found or built the same way.
pub fn witness_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("iryo-witness")).clone()
}

fn workspace_bin(name: &str) -> PathBuf {
    {
        // Test binaries live in target/PROFILE/deps, the demo in target/PROFILE.
        let exe = std::env::current_exe().expect("test binary path");
        let parent = exe.parent().expect("the binary's directory");
        let dir = if parent.ends_with("deps") {
            parent.parent().expect("target profile directory")
        } else {
            parent
        };
        let bin = dir.join(name);
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile_release = dir.ends_with("release");
        let mut build = Command::new(cargo);
        build.args(["build", "-p", name, "--bin", name]);
        if profile_release {
            build.arg("--release");
        }
        if bin.exists() {
            return bin;
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "building {name} failed");
        assert!(bin.exists(), "{} missing after build", bin.display());
        bin
    }
}

/// Runs `iryo-node` with `args`; its output, whether it succeeded or not.
pub fn node_run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(node_bin())
        .args(args)
        .output()
        .expect("run iryo-node")
}

/// Runs `iryo-node` with `args`, which must succeed; its standard output.
pub fn node_ok<I, S>(args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = node_run(args);
    assert!(
        out.status.success(),
        "iryo-node failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory with its own data dir in a temp dir, its registry in redb there or in a
/// PostgreSQL database (`on_postgres`).
pub struct Directory {
    pub tmp: tempfile::TempDir,
    pub data: PathBuf,
    /// The database every command is given (`IRYO_DATABASE`), if not redb.
    pub database: Option<String>,
    /// The throwaway cluster holding that database, when this directory started it.
    pub cluster: Option<pg::Cluster>,
}

/// Where a directory under test keeps its registry: each end-to-end test that takes
/// one runs on both (`on_both_backends!`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// redb in the data dir, the embedded default.
    Redb,
    /// A PostgreSQL database in a throwaway cluster of its own.
    Postgres,
}

/// Runs an end-to-end test once on each backend: `fn name(backend) { … }` becomes the
/// tests `name::redb` and `name::postgres`, one body, so both backends must behave
/// alike.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($backend: $crate::Backend) $body

            #[test]
            fn redb() {
                run($crate::Backend::Redb);
            }

            #[test]
            fn postgres() {
                run($crate::Backend::Postgres);
            }
        }
    };
}

/// How the directory under test is deployed: whole, or as a registry and an exchange
/// authority apart (docs/roles.md), on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deployment {
    Whole(Backend),
    Split(Backend),
}

/// Runs an end-to-end test on each backend, and once more with the directory split
/// into a registry and an exchange authority (on the embedded store): `fn
/// name(deployment) { … }` becomes `name::redb`, `name::postgres` and `name::split`.
#[macro_export]
macro_rules! on_every_deployment {
    ($(#[$meta:meta])* fn $name:ident($deployment:ident) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn run($deployment: $crate::Deployment) $body

            #[test]
            fn redb() {
                run($crate::Deployment::Whole($crate::Backend::Redb));
            }

            #[test]
            fn postgres() {
                run($crate::Deployment::Whole($crate::Backend::Postgres));
            }

            #[test]
            fn split() {
                run($crate::Deployment::Split($crate::Backend::Redb));
            }
        }
    };
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        Self {
            tmp,
            data,
            database: None,
            cluster: None,
        }
    }

    /// A directory on `backend`; on PostgreSQL, in a cluster of its own.
    pub fn on(backend: Backend) -> Self {
        match backend {
            Backend::Redb => Self::new(),
            Backend::Postgres => {
                let cluster = pg::Cluster::start();
                Self {
                    database: Some(cluster.url()),
                    cluster: Some(cluster),
                    ..Self::new()
                }
            }
        }
    }

    /// A directory whose registry is in the PostgreSQL database at `url`.
    pub fn on_postgres(url: &str) -> Self {
        Self {
            database: Some(url.to_string()),
            ..Self::new()
        }
    }

    /// Names this directory's database to a command, or makes sure none is named.
    pub fn database_env(&self, c: &mut Command) {
        match &self.database {
            Some(url) => c.env("IRYO_DATABASE", url),
            None => c.env_remove("IRYO_DATABASE"),
        };
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(directory_bin());
        c.arg("--data-dir").arg(&self.data).args(args);
        c.env_remove("IRYO_DIRECTORY_CONFIG")
            .env("RUST_LOG", "warn");
        self.database_env(&mut c);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run iryo-directory")
    }

    /// Runs a command that must succeed and returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "iryo-directory {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail and returns its standard error.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "iryo-directory {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out}"))
    }

    /// Runs `check … --json` and returns the answer, after checking that the exit code
    /// says the same: 0 eligible, 4 not eligible, 5 no such person.
    pub fn answer(&self, args: &[&str]) -> serde_json::Value {
        let out = self.run(args);
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "{args:?}: not JSON ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let expected = match (v["eligible"].as_bool(), v["reason"].as_str()) {
            (Some(true), _) => 0,
            (_, Some("not_found")) => 5,
            _ => 4,
        };
        assert_eq!(
            out.status.code(),
            Some(expected),
            "{args:?}: exit code for {v}"
        );
        v
    }

    /// A check by medical ID for the test institution 1310000011 (`answer`).
    pub fn check_by_id(&self, medical_id: &str) -> serde_json::Value {
        self.answer(&[
            "check",
            "--institution",
            "1310000011",
            "--medical-id",
            medical_id,
            "--json",
        ])
    }

    /// Prints the agency's letters into `name` under the test directory
    /// (`letters --plan agency`); the directory and the rows of its letters.csv.
    pub fn print_letters(
        &self,
        name: &str,
        more: &[&str],
    ) -> (PathBuf, Vec<std::collections::HashMap<String, String>>) {
        let out = self.path(name);
        let dir = out.display().to_string();
        let mut args = vec!["letters", "--plan", "agency", "--out", &dir];
        args.extend_from_slice(more);
        self.ok(&args);
        let rows = crate::https::letters(&out);
        (out, rows)
    }

    pub fn db(&self) -> PathBuf {
        self.data.join("directory.redb")
    }

    /// Runs `f` on the registry opened as the commands open it, on either backend.
    pub fn with_store<T>(&self, f: impl FnOnce(&dyn iryo_directory::store::Front) -> T) -> T {
        match &self.database {
            None => f(&iryo_directory::store::Store::open(&self.db(), 64).expect("open store")),
            Some(url) => {
                let url = iryo_directory::postgres::DatabaseUrl::parse(url).expect("database URL");
                f(&iryo_directory::postgres::PgStore::open(&url).expect("open database"))
            }
        }
    }

    /// Every person in the registry, in pid order, on either backend.
    pub fn persons(&self) -> Vec<iryo_directory::registry::Person> {
        self.with_store(|s| s.first_persons(usize::MAX).expect("read persons"))
    }

    /// Every person as JSON with processing times removed (`snapshot`), on either
    /// backend.
    pub fn snapshot(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self.persons()).expect("persons to JSON");
        strip_times(&mut v);
        v
    }

    /// Whether `needle` is anywhere in what the registry stores: redb's file, or every
    /// row of every table of the database, as text and with bytes as hex.
    pub fn stores(&self, needle: &str) -> bool {
        match &self.database {
            None => std::fs::read(self.db())
                .expect("read the registry's file")
                .windows(needle.len())
                .any(|w| w == needle.as_bytes()),
            Some(url) => {
                let hex: String = needle.bytes().map(|b| format!("{b:02x}")).collect();
                let dump: Vec<String> = stores::query(url, async |c| {
                    let tables: Vec<String> = c
                        .query(
                            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'",
                            &[],
                        )
                        .await
                        .expect("list tables")
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    let mut out = Vec::new();
                    for t in tables {
                        for r in c
                            .query(&format!("SELECT t::text FROM {t} t"), &[])
                            .await
                            .expect("read table")
                        {
                            out.push(r.get(0));
                        }
                    }
                    out
                });
                dump.iter()
                    .any(|row| row.contains(needle) || row.contains(&hex))
            }
        }
    }
}

pub const HEADER: &str = "insurer_kind,insurer_number,card_symbol,card_number,branch,relation,my_number,name,kana_name,birth_date,sex,address,coverage_from,coverage_until";

/// Writes an enrollment file in UTF-8 from data lines (without the header).
pub fn write_enrollment(path: &Path, lines: &[&str]) {
    let mut text = String::from(HEADER);
    text.push('\n');
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write enrollment file");
}

/// Every person as JSON with processing times removed, for comparing two databases.
pub fn snapshot(db: &Path) -> serde_json::Value {
    let store = iryo_directory::store::Store::open(db, 64).expect("open store");
    let persons = store.persons().expect("read persons");
    let mut v = serde_json::to_value(&persons).expect("persons to JSON");
    strip_times(&mut v);
    v
}

fn strip_times(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            for k in ["at", "assigned_at", "notified_at"] {
                map.remove(k);
            }
            map.values_mut().for_each(strip_times);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_times),
        _ => {}
    }
}
