//! The directory's public keys, and its libp2p identity when it has to be made anew.

use anyhow::Result;
use clap::Subcommand;
use iryo_directory::config::Config;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum KeysCmd {
    /// Print this directory's public keys: the root key that signs its audit log
    /// (and, on a registry, its notices to the exchange authority, which the
    /// authority's `roles.registry_key` names), and the service's peer id.
    Show,
    /// Make a new libp2p identity for `serve` when its key file is lost and no backup
    /// exists. The directory's peer id changes: every node's directory.address must
    /// then be updated. Refused while a key exists.
    NewP2p,
}

pub(super) fn run(config: &Config, cmd: KeysCmd) -> Result<ExitCode> {
    match cmd {
        KeysCmd::Show => {
            let keys = iryo_directory::keys::AgencyKeys::load(&config.keys_dir())?;
            println!(
                "root key     {}",
                iryo_proto::merkle::to_hex(keys.root.verifying_key().as_bytes())
            );
            let secret = iryo_directory::keys::service_identity(&config.keys_dir())?;
            let identity = libp2p::identity::Keypair::ed25519_from_bytes(secret)?;
            println!("service peer {}", identity.public().to_peer_id());
        }
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
