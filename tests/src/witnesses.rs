//! `iryo-witness` processes for the tests: a witness of one log on an ephemeral port.

use crate::federation::{field, start_ready, Proc};
use crate::witness_bin;
use iryo_proto::note::VerifierKey;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An `iryo-witness` serving one log on an ephemeral port of 127.0.0.1.
pub struct Witness {
    config: PathBuf,
    pub process: Proc,
    /// Its submission prefix, `http://127.0.0.1:PORT`.
    pub url: String,
    /// Its verifier key.
    pub key: String,
}

impl Witness {
    /// Makes a witness of the log whose checkpoints `log_key` verifies, in `dir`.
    pub fn new(dir: &Path, log_key: &str) -> Self {
        let log = VerifierKey::parse(log_key).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("witness.toml");
        std::fs::write(
            &config,
            format!(
                "name = \"witness.test/w1\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\n\n[[log]]\norigin = \"{}\"\nkeys = [\"{log_key}\"]\n",
                dir.join("data").display(),
                crate::federation::free_port(),
                log.name
            ),
        )
        .unwrap();
        let out = Command::new(witness_bin())
            .args(["--config"])
            .arg(&config)
            .arg("init")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let key = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .to_string();
        let (process, url) = serve(&config);
        Self {
            config,
            process,
            url,
            key,
        }
    }

    /// Kills the witness with SIGKILL and starts it again on the same state.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Kills the witness with SIGKILL; `start` serves again from the same state.
    pub fn kill(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
    }

    /// Starts the witness again on its state, at the same address.
    pub fn start(&mut self) {
        let (process, url) = serve(&self.config);
        self.process = process;
        self.url = url;
    }
}

fn serve(config: &Path) -> (Proc, String) {
    let mut cmd = Command::new(witness_bin());
    cmd.arg("--config")
        .arg(config)
        .arg("serve")
        .env("RUST_LOG", "iryo_witness=warn");
    let (process, line) = start_ready(cmd, "iryo-witness serve");
    let url = format!("http://{}", field(&line, "listen"));
    (process, url)
}
