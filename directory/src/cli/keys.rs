//! The directory service's libp2p identity, when it has to be made anew.

use anyhow::Result;
use clap::Subcommand;
use iryo_directory::config::Config;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum KeysCmd {
    /// Make a new libp2p identity for `serve` when its key file is lost and no backup
    /// exists. The directory's peer id changes: every node's directory.address must
    /// then be updated. Refused while a key exists.
    NewP2p,
}

pub(super) fn run(config: &Config, cmd: KeysCmd) -> Result<ExitCode> {
    match cmd {
        KeysCmd::NewP2p => {
            let secret = iryo_directory::keys::new_service_identity(&config.keys_dir())?;
            let key = ed25519_dalek::SigningKey::from_bytes(&secret);
            println!(
                "new directory identity; public key {}. Give every node the new address (serve prints it).",
                iryo_proto::merkle::to_hex(key.verifying_key().as_bytes())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
