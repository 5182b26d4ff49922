//! `iryo-node`: an institution's node beside its EMR.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use iryo_node::config::{ApiConfig, DirectoryConfig, NodeConfig, OutboxConfig, P2pConfig};
use iryo_node::identity::{generate_key, RegistrationFile};
use iryo_proto::InstitutionCode;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "iryo-node",
    version,
    about = "An institution's node: keeps its FHIR records, exchanges them with other institutions under agency grants, and reports every exchange to the agency.",
    after_help = "Setting up:\n  1. iryo-node init --code CODE --name NAME --out DIR       identity, registration request, node.toml\n  2. send DIR/registration.json to the agency: iryo-directory institution add DIR/registration.json\n  3. fill in [directory] in DIR/node.toml (address and agency key from the agency)\n  4. iryo-node run --config DIR/node.toml"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the node's identity (mode 0600), its registration request and a commented node.toml.
    Init {
        /// This institution's 10-digit institution code.
        #[arg(long)]
        code: InstitutionCode,
        /// The institution's name as registered.
        #[arg(long)]
        name: String,
        /// Directory for the key, the request and the configuration.
        #[arg(long)]
        out: PathBuf,
        /// The libp2p address this node listens on, e.g. /ip4/0.0.0.0/tcp/4711 for every
        /// interface.
        #[arg(long, default_value = "/ip4/127.0.0.1/tcp/4711")]
        listen: String,
        /// The address other nodes dial to reach this node (registered with the agency),
        /// e.g. /ip4/192.0.2.10/tcp/4711; repeat for several. Needed when --listen is
        /// an unspecified address (0.0.0.0 or ::); otherwise --listen is used.
        #[arg(long)]
        advertise: Vec<String>,
        /// The local API address for the EMR; a second node on one host needs another
        /// port, e.g. 127.0.0.1:8712.
        #[arg(long, default_value = "127.0.0.1:8711")]
        api: String,
        /// The directory's address (ending in /p2p/<peer id>), if known.
        #[arg(long, default_value = "")]
        directory: String,
        /// The registry's address (ending in /p2p/<peer id>), where the agency runs it
        /// apart from the exchange authority: eligibility checks go there.
        #[arg(long, value_name = "ADDR")]
        registry: Option<String>,
        /// The agency's root public key (hex), if known.
        #[arg(long, default_value = "")]
        agency_key: String,
    },
    /// Write a new registration request for this node's key, with new addresses (the
    /// node moved, or its address changed); send it to the agency as the first one
    /// (`iryo-directory institution add`), which replaces the registered addresses.
    ReRegister {
        /// The node's configuration file.
        #[arg(long, short, env = "IRYO_NODE_CONFIG")]
        config: PathBuf,
        /// The institution's name as registered.
        #[arg(long)]
        name: String,
        /// The addresses other nodes dial now, e.g. /ip4/192.0.2.11/tcp/4711; repeat for
        /// several. Without it, the configured listen address.
        #[arg(long)]
        advertise: Vec<String>,
    },
    /// Write a consistent copy of node.redb and the node's key into a new directory,
    /// with a manifest of sizes and SHA-256 written last. While the node runs it makes
    /// the copy itself (through its local API); a stopped node's database is read here.
    Backup {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The directory to write (made 0700; it must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Restore a backup into the configured data directory (which must hold no
    /// node.redb) and key file: every file is checked against the manifest first.
    /// Stop the node first.
    Restore {
        /// The node's configuration file.
        #[arg(long)]
        config: PathBuf,
        /// The backup directory `backup --out` wrote.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
    },
    /// Run the node until interrupted.
    Run {
        #[arg(long, short, env = "IRYO_NODE_CONFIG")]
        config: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    iryo_p2p::logging::init("info");
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            code,
            name,
            out,
            listen,
            advertise,
            api,
            directory,
            registry,
            agency_key,
        } => {
            let advertised = advertised(&listen, advertise)?;
            // The node's key, its API token and its patients' records live here.
            iryo_p2p::files::create_private_dir(&out)
                .with_context(|| format!("{}", out.display()))?;
            let key = generate_key(&out.join("node.key"))?;
            let reg = RegistrationFile::new(
                &key,
                code,
                &name,
                advertised.clone(),
                chrono::Utc::now().timestamp(),
            );
            let reg_path = out.join("registration.json");
            write_registration(&reg_path, &reg)?;
            let mut token = [0u8; 24];
            getrandom::fill(&mut token).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
            let config = NodeConfig {
                code,
                // node.toml lives in `out`: the data are beside it.
                data_dir: PathBuf::from("."),
                key_file: None,
                p2p: P2pConfig { listen },
                api: ApiConfig {
                    listen: api,
                    token: iryo_proto::merkle::to_hex(&token),
                },
                directory: DirectoryConfig {
                    address: directory.into(),
                    registry_address: registry
                        .map(iryo_node::config::Addresses::from)
                        .unwrap_or_default(),
                    agency_key,
                    refresh_seconds: 60,
                    clock_tolerance_seconds: iryo_proto::federation::CLOCK_SKEW_SECONDS,
                },
                outbox: OutboxConfig::default(),
                witnesses: iryo_node::config::WitnessesConfig::default(),
            };
            let cfg_path = out.join("node.toml");
            // It holds the API's bearer token: 0600.
            iryo_p2p::files::create_private(&cfg_path)
                .and_then(|mut f| f.write_all(config.commented().as_bytes()))
                .with_context(|| format!("{}", cfg_path.display()))?;
            println!(
                "node identity   {} (peer id {})",
                out.join("node.key").display(),
                reg.peer_id
            );
            println!(
                "registration    {}  -> send to the agency",
                reg_path.display()
            );
            println!("configuration   {}", cfg_path.display());
        }
        Command::ReRegister {
            config: cfg_path,
            name,
            advertise,
        } => {
            let config = NodeConfig::load(&cfg_path).map_err(anyhow::Error::msg)?;
            let advertised = advertised(&config.p2p.listen, advertise)?;
            let key = iryo_node::identity::load_key(&config.key_path())?;
            let reg = RegistrationFile::new(
                &key,
                config.code,
                &name,
                advertised.clone(),
                chrono::Utc::now().timestamp(),
            );
            let reg_path = config.data_dir.join("registration.json");
            write_registration(&reg_path, &reg)?;
            println!(
                "registration    {}  -> send to the agency (addresses {})",
                reg_path.display(),
                advertised.join(", ")
            );
        }
        Command::Backup { config, out } => {
            let config = NodeConfig::load(&config).map_err(anyhow::Error::msg)?;
            let out = std::env::current_dir()?.join(out);
            let manifest = backup(&config, &out)?;
            println!(
                "backup written to {}: {} records, {:.1} MiB (manifest.json lists each file with its SHA-256)",
                out.display(),
                manifest.count("records"),
                manifest.bytes() as f64 / f64::from(1 << 20)
            );
        }
        Command::Restore { config, from } => {
            let config = NodeConfig::load(&config).map_err(anyhow::Error::msg)?;
            let m = iryo_node::backup::restore(&from, &config.data_dir, &config.key_path())?;
            println!(
                "restored into {}: {} records as of the backup",
                config.data_dir.display(),
                m.count("records")
            );
        }
        Command::Run { config } => {
            let config = NodeConfig::load(&config).map_err(anyhow::Error::msg)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let running = iryo_node::start(config).await?;
                let p2p: Vec<String> = running
                    .p2p
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect();
                // One line a supervisor or test harness can read.
                println!(
                    "iryo-node ready api=http://{} p2p={}",
                    running.api,
                    p2p.join(",")
                );
                std::io::stdout().flush()?;
                // Stop on a signal, or when the storage fails (redb serves nothing after
                // an I/O error until the database is opened again, which a restart does).
                let failed = tokio::select! {
                    () = iryo_p2p::shutdown::signal() => None,
                    why = iryo_p2p::storage::failed() => Some(why),
                };
                running.stop();
                if let Some(why) = failed {
                    tracing::error!(error = %why, "stopping with exit code 75: the database's storage failed; the supervisor starts the node again");
                    std::process::exit(75);
                }
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}

/// A backup: by the running node through its local API, or from the database here
/// when the node is stopped.
fn backup(config: &NodeConfig, out: &std::path::Path) -> Result<iryo_p2p::backup::Manifest> {
    let db = config.data_dir.join("node.redb");
    match iryo_node::store::Store::open(&db) {
        Ok(store) => Ok(store.backup(&config.key_path(), out)?),
        Err(iryo_node::store::StoreError::Db(redb::Error::DatabaseAlreadyOpen)) => {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            // The address the running node wrote, else the configured one.
            let api = std::fs::read_to_string(config.data_dir.join(iryo_node::API_ADDR_FILE))
                .map_or_else(|_| config.api.listen.clone(), |a| a.trim().to_string());
            let mut res = agent
                .post(format!("http://{api}/backup"))
                .header("authorization", &format!("Bearer {}", config.api.token))
                .send_json(serde_json::json!({ "out": out }))
                .with_context(|| {
                    format!(
                        "{} is in use, but the node's API at {api} does not answer",
                        db.display()
                    )
                })?;
            let body: serde_json::Value = res.body_mut().read_json()?;
            if res.status() != 201 {
                anyhow::bail!("the node refused the backup: {}", body["detail"]);
            }
            Ok(serde_json::from_value(body)?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The addresses to register: `--advertise`, or the listen address itself when peers
/// can dial it. An unspecified listen address (0.0.0.0, ::) is no address a peer can
/// dial, so it is refused without `--advertise`.
fn advertised(listen: &str, advertise: Vec<String>) -> Result<Vec<String>> {
    use libp2p::multiaddr::Protocol;
    let listen_addr: libp2p::Multiaddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not a libp2p address"))?;
    let unspecified = listen_addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    });
    if advertise.is_empty() {
        if unspecified {
            anyhow::bail!(
                "--listen {listen} listens on every interface, which no peer can dial; \
                 give the address peers should use with --advertise, e.g. --advertise /ip4/192.0.2.10/tcp/4711"
            );
        }
        return Ok(vec![listen.to_string()]);
    }
    for a in &advertise {
        let addr: libp2p::Multiaddr = a
            .parse()
            .with_context(|| format!("--advertise {a:?} is not a libp2p address"))?;
        if addr.iter().any(|p| match p {
            Protocol::Ip4(ip) => ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_unspecified(),
            _ => false,
        }) {
            anyhow::bail!("--advertise {a} is unspecified; give an address peers can dial");
        }
    }
    Ok(advertise)
}

/// Writes the registration request 0600: it carries the agency's one-time code.
fn write_registration(path: &std::path::Path, reg: &impl serde::Serialize) -> Result<()> {
    let mut file = iryo_p2p::files::create_private(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(reg)?.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
