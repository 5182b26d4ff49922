//! Throwaway PostgreSQL clusters for tests, started from Debian's server binaries:
//! `initdb` into a temp dir, the server listening on a unix socket in that dir only (no
//! TCP), `fsync` and `synchronous_commit` on as in production. The server refuses to run
//! as root, so when the tests run as root every server command runs as the `postgres`
//! user, which owns the temp dir. Nothing depends on a server this machine may run.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The database and superuser every cluster is made with.
pub const DATABASE: &str = "iryo";

/// A running cluster; stopped (immediately) and removed when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    running: bool,
    /// Server options beyond the unix socket (`serve_tls`).
    extra: String,
    /// The port, when not the default (its socket's name says it too).
    port: Option<u16>,
}

/// The newest server binaries installed: `IRYO_PG_BIN`, or Debian's
/// `/usr/lib/postgresql/<major>/bin`.
pub fn binaries() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("IRYO_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Cluster {
    /// Makes and starts a cluster with database `iryo`, owned by superuser `iryo`.
    pub fn start() -> Self {
        let bin = binaries().unwrap_or_else(|| {
            panic!("PostgreSQL's server binaries are missing: install Debian's postgresql (.ci/run does), or set IRYO_PG_BIN")
        });
        let dir = tempfile::tempdir().expect("temp dir");
        let as_postgres = running_as_root();
        if as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown of the cluster's dir to postgres");
        }
        let mut c = Self {
            dir,
            bin,
            as_postgres,
            running: false,
            extra: String::new(),
            port: None,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                DATABASE,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        c.start_again();
        let socket = c.socket_dir();
        c.run("createdb", &["-h", &socket, "-U", DATABASE, DATABASE]);
        c
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> String {
        self.dir.path().display().to_string()
    }

    /// A libpq-style URL for the cluster's database over its unix socket.
    pub fn url(&self) -> String {
        let port = self.port.map(|p| format!("&port={p}")).unwrap_or_default();
        format!(
            "postgresql://{DATABASE}@/{DATABASE}?host={}{port}",
            self.socket_dir()
        )
    }

    /// The server's log, for a failure's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Starts the stopped server again, waiting until it accepts connections.
    pub fn start_again(&mut self) {
        let options = format!(
            "-k {} -c fsync=on -c synchronous_commit=on -c max_connections=64 -c shared_buffers=16MB {}",
            self.socket_dir(),
            if self.extra.is_empty() {
                "-c listen_addresses=''"
            } else {
                &self.extra
            }
        );
        let log = self.dir.path().join("server.log").display().to_string();
        let data = self.data();
        self.run(
            "pg_ctl",
            &[
                "start", "-D", &data, "-w", "-t", "60", "-l", &log, "-o", &options,
            ],
        );
        self.running = true;
    }

    /// Stops the server: `fast` waits for nothing but ends cleanly; otherwise it stops
    /// at once, as a crash would.
    pub fn stop(&mut self, fast: bool) {
        let mode = if fast { "fast" } else { "immediate" };
        let data = self.data();
        self.run("pg_ctl", &["stop", "-D", &data, "-m", mode, "-w"]);
        self.running = false;
    }

    /// One of the server's binaries, run as `postgres` when the tests run as root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed ({}):\n{}{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// The cluster's directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), started, with its own
    /// socket directory.
    pub fn standby_of(primary: &Cluster) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        if primary.as_postgres {
            let chown = Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(chown.success(), "chown of the standby's dir to postgres");
        }
        let mut c = Self {
            dir,
            bin: primary.bin.clone(),
            as_postgres: primary.as_postgres,
            running: false,
            extra: String::new(),
            port: None,
        };
        let data = c.data();
        let host = primary.socket_dir();
        c.run(
            "pg_basebackup",
            &[
                "-h",
                &host,
                "-U",
                DATABASE,
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "--checkpoint=fast",
            ],
        );
        c.start_again();
        c
    }

    /// Runs `sql` on the cluster's database as its superuser.
    pub fn sql(&self, sql: &str) -> String {
        let socket = self.socket_dir();
        let mut cmd = self.command("psql");
        cmd.args(["-h", &socket, "-U", DATABASE, "-d", DATABASE, "-Atc", sql]);
        if let Some(p) = self.port {
            cmd.args(["-p", &p.to_string()]);
        }
        let out = cmd.output().expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Makes every commit wait until a standby has it (`synchronous_standby_names`),
    /// and waits until one is streaming synchronously.
    pub fn make_synchronous(&self) {
        self.sql("ALTER SYSTEM SET synchronous_standby_names = '*'");
        self.sql("SELECT pg_reload_conf()");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.sql("SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") != "1"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no synchronous standby: {}",
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Kills the server's postmaster with SIGKILL, as a lost machine would stop it.
    pub fn kill(&mut self) {
        let pid = std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .expect("postmaster.pid");
        let pid = pid
            .lines()
            .next()
            .expect("the postmaster's pid")
            .trim()
            .to_string();
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -9 {pid}");
        self.running = false;
    }

    /// Whether the server takes connections on its socket.
    pub fn accepts(&self) -> bool {
        let socket = self.socket_dir();
        self.command("pg_isready")
            .args(["-h", &socket, "-t", "2"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Promotes a standby to a primary that takes writes, waiting until it does.
    pub fn promote(&self) {
        let data = self.data();
        self.run("pg_ctl", &["promote", "-D", &data, "-w", "-t", "60"]);
    }

    /// Restarts the server listening also on 127.0.0.1 over TCP, with TLS under the
    /// certificate `cert` and key `key` (PEM) and no connection there without it;
    /// returns the port.
    pub fn serve_tls(&mut self, cert: &Path, key: &Path) -> u16 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = self.dir.path();
        for (from, to) in [(cert, "server.crt"), (key, "server.key")] {
            let to = dir.join(to);
            std::fs::copy(from, &to).expect("copy the server's certificate");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
            if self.as_postgres {
                let chown = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(&to)
                    .status()
                    .expect("chown");
                assert!(chown.success());
            }
        }
        std::fs::write(
            self.dir.path().join("data/pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n",
        )
        .expect("pg_hba.conf");
        self.extra = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}",
            dir.join("server.crt").display(),
            dir.join("server.key").display()
        );
        self.stop(true);
        self.port = Some(port);
        self.start_again();
        port
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self
                .command("pg_ctl")
                .args(["stop", "-D", &data, "-m", "immediate", "-w"])
                .output();
        }
    }
}
