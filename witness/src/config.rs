//! `witness.toml`: the witness's name, where it keeps its key and state, where it
//! listens, and the logs it serves (configs/witness.toml is a commented example).

use crate::state::Log;
use iryo_proto::note::{VerifierKey, ED25519};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name the witness cosigns under, e.g. `witness.example.org/1`.
    pub name: String,
    /// Where the key (`witness.ed25519`) and the state (`witness.redb`) live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The address `serve` listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The logs cosigned; a checkpoint of any other origin is refused (404).
    #[serde(default, rename = "log")]
    pub logs: Vec<LogConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The first line of the log's checkpoints.
    pub origin: String,
    /// The log's verifier keys (`NAME+ID+KEY`, Ed25519 note keys).
    pub keys: Vec<String>,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("iryo-witness-data")
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7380))
}

impl Config {
    /// Reads and checks a configuration file, naming what is wrong.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let c: Config =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        c.logs()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// The logs with their keys read.
    pub fn logs(&self) -> anyhow::Result<Vec<Log>> {
        self.logs
            .iter()
            .map(|l| {
                if l.origin.is_empty() {
                    anyhow::bail!("a [[log]] has an empty origin");
                }
                if l.keys.is_empty() {
                    anyhow::bail!("log {:?} lists no keys", l.origin);
                }
                let keys = l
                    .keys
                    .iter()
                    .map(|k| {
                        let key = VerifierKey::parse(k)
                            .map_err(|e| anyhow::anyhow!("log {:?}: {e}", l.origin))?;
                        if key.kind != ED25519 {
                            anyhow::bail!(
                                "log {:?}: key {} is not an Ed25519 note key (type 0x01)",
                                l.origin,
                                key.name
                            );
                        }
                        Ok(key)
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Ok(Log {
                    origin: l.origin.clone(),
                    keys,
                })
            })
            .collect()
    }

    pub fn key_path(&self) -> PathBuf {
        self.data_dir.join("witness.ed25519")
    }

    pub fn state_path(&self) -> PathBuf {
        self.data_dir.join("witness.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/witness.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.logs().unwrap().len(), 1);
        assert_eq!(c.listen.port(), 7380);
    }

    #[test]
    fn a_misspelt_setting_is_named() {
        let err =
            toml::from_str::<Config>("name = \"w\"\nlisten_on = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_on"), "{err}");
    }
}
