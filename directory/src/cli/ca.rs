//! The agency CA of the HTTPS front.

use anyhow::Result;
use clap::Subcommand;
use iryo_directory::config::Config;
use iryo_proto::InsurerNumber;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum CaCmd {
    /// Make the agency CA in DATA_DIR/ca and a server certificate for the HTTPS front.
    Init {
        /// Host names or addresses the server certificate covers; repeat for each.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
    /// Issue a certificate: a client certificate for an insurer or an operator, or a new
    /// server certificate (PEM key and certificate, key mode 0600).
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["insurer", "operator", "server"])))]
    Issue {
        /// A client certificate for this insurer (its insurer number, e.g. 01130012).
        #[arg(long, value_name = "NUMBER")]
        insurer: Option<InsurerNumber>,
        /// A client certificate for this operator (a name, e.g. sato).
        #[arg(long, value_name = "NAME")]
        operator: Option<String>,
        /// Server host names or addresses (comma-separated); replaces the server certificate.
        #[arg(long, value_delimiter = ',', value_name = "HOSTS")]
        server: Vec<String>,
        /// Where to write cert.pem and key.pem; defaults to DATA_DIR/ca/issued/SUBJECT.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke certificates by serial number or subject ("insurer 01130012",
    /// "operator sato"); `serve` refuses them from the next connection on, and with a
    /// database every `serve` on it within seconds.
    Revoke {
        /// A serial number, or a subject such as "insurer 01130012" or "operator sato".
        what: String,
    },
    /// Certificates issued, with serials and revocations.
    List,
}

pub(super) fn run(config: &Config, cmd: CaCmd) -> Result<ExitCode> {
    use iryo_directory::ca::{Ca, ClientIdentity, Subject};
    let dir = Ca::dir(&config.data_dir);
    match cmd {
        CaCmd::Init { hosts } => {
            Ca::init(&dir, &hosts)?;
            println!(
                "agency CA made in {}; server certificate for {}",
                dir.display(),
                hosts.join(", ")
            );
        }
        CaCmd::Issue {
            insurer,
            operator,
            server,
            out,
            days,
        } => {
            let ca = Ca::open(&dir)?;
            let subject = match (insurer, operator) {
                (Some(n), _) => Subject::Client(ClientIdentity::Insurer(n)),
                (_, Some(name)) => Subject::Client(ClientIdentity::Operator(name)),
                _ => Subject::Server(server),
            };
            let out = match (&subject, out) {
                (_, Some(o)) => o,
                (Subject::Server(_), None) => dir.clone(),
                (Subject::Client(id), None) => {
                    dir.join("issued").join(id.to_string().replace(' ', "-"))
                }
            };
            let issued = ca.issue(&subject, &out, days)?;
            println!(
                "issued serial {} for {} until {} into {}",
                issued.serial,
                issued.subject,
                issued.not_after,
                out.display()
            );
        }
        CaCmd::Revoke { what } => {
            let ca = Ca::open(&dir)?;
            for c in ca.revoke(&what)? {
                println!("revoked serial {} ({})", c.serial, c.subject);
            }
            let ctx = iryo_directory::context::Context::new(config.clone());
            if let Some(url) = ctx.database()? {
                let store = ctx.postgres(&url)?;
                let number = iryo_directory::postgres::revocations::publish(&store, &ca)?;
                println!(
                    "revocation list {number} published to {url}: every serve on it refuses these certificates within {} seconds",
                    iryo_directory::postgres::revocations::FOLLOW_EVERY.as_secs()
                );
            }
        }
        CaCmd::List => {
            for c in Ca::open(&dir)?.list()? {
                println!(
                    "{:>5}  {:<32} until {}{}",
                    c.serial,
                    c.subject,
                    c.not_after,
                    c.revoked_at
                        .map(|r| format!("  REVOKED {r}"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
