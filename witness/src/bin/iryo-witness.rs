//! `iryo-witness`: make a witness's key, print its verifier key, serve add-checkpoint.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use iryo_proto::note::NoteSigner;
use iryo_witness::config::Config;
use iryo_witness::state::Witness;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A witness of the audit log (c2sp.org/tlog-witness): cosigns each checkpoint the log
/// submits only if it extends the last one cosigned, and keeps that state durably.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file (TOML); see configs/witness.toml.
    #[arg(
        short,
        long,
        env = "IRYO_WITNESS_CONFIG",
        default_value = "witness.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make the witness's Ed25519 key (mode 0600, never overwritten) and print its
    /// verifier key, which each log's operators add to their witness policy.
    Init,
    /// Print the witness's verifier key.
    Vkey,
    /// Serve add-checkpoint; prints `iryo-witness ready listen=ADDR vkey=KEY` once
    /// listening.
    Serve,
}

fn signer(config: &Config) -> Result<NoteSigner> {
    let path = config.key_path();
    let seed = iryo_p2p::files::read_secret32(&path).with_context(|| {
        format!(
            "{}: the witness key (make it with `iryo-witness init`)",
            path.display()
        )
    })?;
    NoteSigner::cosigner(&config.name, SigningKey::from_bytes(&seed))
        .with_context(|| format!("name {:?} in the configuration", config.name))
}

fn main() -> ExitCode {
    iryo_p2p::logging::init("iryo_witness=info");
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Init => {
            iryo_p2p::files::create_private_dir(&config.data_dir)
                .with_context(|| config.data_dir.display().to_string())?;
            let path = config.key_path();
            if path.exists() {
                anyhow::bail!(
                    "{} exists already; a new key would disown every cosignature made",
                    path.display()
                );
            }
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
            iryo_p2p::files::write_new_secret(&path, &seed)
                .with_context(|| path.display().to_string())?;
            println!("key in {} (mode 0600)", path.display());
            println!("{}", signer(&config)?.verifier());
        }
        Command::Vkey => println!("{}", signer(&config)?.verifier()),
        Command::Serve => {
            let signer = signer(&config)?;
            let vkey = signer.verifier();
            let witness = Witness::open(&config.state_path(), signer, config.logs()?)
                .with_context(|| config.state_path().display().to_string())?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async {
                let listener = tokio::net::TcpListener::bind(config.listen)
                    .await
                    .with_context(|| format!("listen address {}", config.listen))?;
                let addr = listener.local_addr()?;
                println!("iryo-witness ready listen={addr} vkey={vkey}");
                tracing::info!(%addr, logs = config.logs.len(), "witness serving");
                let router = iryo_witness::http::router(Arc::new(witness));
                tokio::select! {
                    () = iryo_witness::http::serve(listener, router) => {}
                    _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
                }
                Ok::<_, anyhow::Error>(())
            })?;
        }
    }
    Ok(())
}
