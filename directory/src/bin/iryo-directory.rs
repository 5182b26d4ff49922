//! `iryo-directory`: the agency's command line.

use anyhow::{bail, Context as _, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::admin::{self, AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::context::ContextError;
use iryo_directory::enrollment::{ingest_file, Encoding, IngestOptions, Progress, Summary};
use iryo_directory::issuance::Method;
use iryo_directory::registry::eligibility::{CheckKey, CheckRequest};
use iryo_directory::registry::{now, today};
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_directory::store::StoreError;
use iryo_directory::store::{ConflictAction, MismatchAction, Plan};
use iryo_directory::{bench, demo, report};
use iryo_proto::federation::{Purpose, Role};
use iryo_proto::*;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code when a file had rejected rows (the good rows were still enrolled).
const EXIT_REJECTED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "iryo-directory",
    version,
    about = "The agency's directory of medical IDs (医療等番号): enroll insurer files, issue and assign IDs, check eligibility, correct the registry.",
    after_help = "First steps:\n  iryo-directory init                      create the database and the agency's keys\n  iryo-directory enroll FILE...            ingest insurer enrollment files\n  iryo-directory assign --insurer N --out F  write an insurer's assignment file\n  iryo-directory check --institution C --medical-id M\n\nOr try everything at once on sample data:  iryo-directory demo"
)]
struct Cli {
    /// Configuration file (TOML); see configs/directory.toml. Defaults apply without one.
    #[arg(long, short, global = true, env = "IRYO_DIRECTORY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database and keys live; overrides `data_dir` in the configuration.
    #[arg(long, global = true, env = "IRYO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database and the agency's keys (root Ed25519 key and FF1 key, mode 0600).
    Init {
        /// How to issue medical IDs; overrides the configuration. Fixed from now on.
        #[arg(long, value_enum)]
        method: Option<MethodArg>,
    },
    /// Ingest insurer enrollment files (CSV, UTF-8 or Shift_JIS). Bad rows go to FILE.errors.csv.
    Enroll {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Encoding of files without a byte-order mark; overrides the configuration.
        #[arg(long, value_enum)]
        encoding: Option<Encoding>,
        /// Rows per durable transaction; overrides the configuration.
        #[arg(long)]
        batch_rows: Option<usize>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write an insurer's assignment file: card, My Number and medical ID for each person.
    Assign {
        #[arg(long)]
        insurer: InsurerNumber,
        #[arg(long)]
        out: PathBuf,
        /// Include rows sent before, not only new ones.
        #[arg(long)]
        all: bool,
    },
    /// Print the letters that tell people their medical ID and My Portal activation code
    /// (plan 1: by insurer, plan 2: by the agency): PDFs in Japanese and the print
    /// vendor's letters.csv, written into DIR.
    Letters {
        #[arg(long, value_enum)]
        plan: Plan,
        /// Directory for letters-NNNN.pdf and letters.csv.
        #[arg(long)]
        out: PathBuf,
        /// Include people told before (they get a new activation code).
        #[arg(long)]
        all: bool,
    },
    /// The agency CA of the HTTPS front: server and client certificates, revocation.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Eligibility check from an insurance card or a medical ID; records service use.
    Check(CheckArgs),
    /// Enrollment rows held because they disagree with the registry.
    #[command(subcommand)]
    Conflicts(ConflictCmd),
    /// Medical IDs presented at institutions that differ from the registry.
    #[command(subcommand)]
    Mismatches(MismatchCmd),
    /// Notices queued for people and insurers.
    Notices {
        /// Only notices for this insurer.
        #[arg(long)]
        insurer: Option<InsurerNumber>,
    },
    /// Issue a new medical ID on application; the old one is never issued again.
    Change {
        #[arg(long)]
        medical_id: MedicalId,
        #[arg(long)]
        reason: String,
    },
    /// Record a new My Number for a person; the medical ID stays.
    MyNumberChange {
        #[arg(long)]
        old: MyNumber,
        #[arg(long)]
        new: MyNumber,
    },
    /// Record a death: eligibility ends; the ID serves research until retention ends.
    Death {
        #[arg(long)]
        medical_id: MedicalId,
        /// Date of death, YYYY-MM-DD.
        #[arg(long)]
        date: NaiveDate,
    },
    /// Retire the IDs whose retention period after death has ended.
    RetireDue {
        /// Judge as of this date instead of today.
        #[arg(long)]
        date: Option<NaiveDate>,
    },
    /// Print everything held on a person, with history and service use.
    Show {
        #[arg(
            long,
            conflicts_with = "my_number",
            required_unless_present = "my_number"
        )]
        medical_id: Option<MedicalId>,
        #[arg(long)]
        my_number: Option<MyNumber>,
        #[arg(long)]
        json: bool,
    },
    /// Counts of persons, IDs, cards, service use and open cases.
    Status,
    /// Write realistic sample enrollment files for the four insurer kinds.
    Sample {
        #[arg(long, default_value_t = 1000)]
        persons: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Percentage of rows to break on purpose (bad check digits, impossible dates, ...).
        #[arg(long, default_value_t = 0.0)]
        bad_rows: f64,
        #[arg(long, value_enum, default_value = "utf-8")]
        encoding: Encoding,
    },
    /// Fresh database, sample data, enrollment, assignment and a few checks, narrated.
    Demo {
        /// Working directory for the demo; emptied first.
        #[arg(long, default_value = "iryo-demo")]
        dir: PathBuf,
        #[arg(long, default_value_t = 2000)]
        persons: u64,
    },
    /// Measure enrollment, memory and eligibility-check throughput; prints a report.
    Bench(bench::BenchArgs),
    /// Serve the federation: institutions' nodes connect over libp2p (mutual TLS).
    Serve {
        /// libp2p listen address; overrides `service.listen`.
        #[arg(long)]
        listen: Option<String>,
        /// HTTPS address of the portal, insurer and operator front; overrides `https.listen`.
        #[arg(long)]
        https: Option<String>,
    },
    /// Member institutions and their agency-signed memberships (seed 4-2).
    #[command(subcommand)]
    Institution(InstitutionCmd),
    /// Patients' consent to exchange their records (seed 4-3).
    #[command(subcommand)]
    Consent(ConsentCmd),
    /// The audit log of exchanges, grants and checks.
    #[command(subcommand)]
    Audit(AuditCmd),
}

#[derive(Subcommand)]
enum CaCmd {
    /// Make the agency CA in DATA_DIR/ca and a server certificate for the HTTPS front.
    Init {
        /// Host names or addresses the server certificate covers.
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
    },
    /// Issue a certificate: a client certificate for an insurer or an operator, or a new
    /// server certificate (PEM key and certificate, key mode 0600).
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["insurer", "operator", "server"])))]
    Issue {
        #[arg(long)]
        insurer: Option<InsurerNumber>,
        #[arg(long)]
        operator: Option<String>,
        /// Server host names or addresses (comma-separated); replaces the server certificate.
        #[arg(long, value_delimiter = ',')]
        server: Vec<String>,
        /// Where to write cert.pem and key.pem; defaults to DATA_DIR/ca/issued/SUBJECT.
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke certificates by serial number or subject ("insurer 01130012",
    /// "operator sato"); `serve` refuses them from the next connection on.
    Revoke { what: String },
    /// Certificates issued, with serials and revocations.
    List,
}

#[derive(Subcommand)]
enum InstitutionCmd {
    /// Issue a membership for a node's registration request (from `iryo-node init`).
    Add {
        request: PathBuf,
        /// What the institution may do: source (serve records), requester (ask for them).
        #[arg(long, value_delimiter = ',', default_value = "source,requester")]
        roles: Vec<RoleArg>,
    },
    /// Revoke a membership: the directory refuses the institution at once, other nodes
    /// within their refresh interval.
    Revoke { code: InstitutionCode },
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Source,
    Requester,
}

#[derive(Subcommand)]
enum ConsentCmd {
    /// Record the patient's permission.
    Grant(ConsentArgs),
    /// Record the patient's refusal (without --institution: an opt-out of all exchange).
    Revoke(ConsentArgs),
    List {
        #[arg(long)]
        medical_id: MedicalId,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ConsentArgs {
    #[arg(long)]
    medical_id: MedicalId,
    /// One institution; all institutions when absent.
    #[arg(long)]
    institution: Option<InstitutionCode>,
    /// treatment, referral or research; all purposes when absent.
    #[arg(long)]
    purpose: Option<String>,
    /// Days until the decision lapses; no expiry when absent.
    #[arg(long)]
    days: Option<u32>,
    #[arg(long, env = "USER", default_value = "operator")]
    operator: String,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Recompute the tree from every entry and check every signed tree head.
    Verify,
    /// Who accessed the patient's records, when, why, and whether in an emergency.
    Show {
        #[arg(long)]
        medical_id: MedicalId,
        #[arg(long)]
        json: bool,
    },
    /// Grants used by one end whose other end has not reported.
    Unmatched,
    /// An entry with its inclusion proof against the latest signed tree head.
    Proof { index: u64 },
    /// Proof that the log of OLD entries is a prefix of the latest signed tree head's.
    Consistency { old: u64 },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    Fpe,
    Random,
}

#[derive(Args)]
struct CheckArgs {
    /// The institution asking (10-digit institution code).
    #[arg(long)]
    institution: InstitutionCode,
    #[arg(long, requires_all = ["symbol", "number"])]
    insurer: Option<InsurerNumber>,
    #[arg(long)]
    symbol: Option<String>,
    #[arg(long)]
    number: Option<String>,
    #[arg(long)]
    branch: Option<String>,
    /// The medical ID presented; alone, it identifies the person (a medical ID card).
    #[arg(long, required_unless_present = "insurer")]
    medical_id: Option<MedicalId>,
    /// Date of service, YYYY-MM-DD; today by default.
    #[arg(long)]
    date: Option<NaiveDate>,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum ConflictCmd {
    /// Open conflicts (all with --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Resolve a conflict: --apply makes the registry follow the row, --dismiss keeps it.
    Resolve {
        id: u64,
        #[arg(long, conflicts_with = "dismiss", required_unless_present = "dismiss")]
        apply: bool,
        #[arg(long)]
        dismiss: bool,
        #[arg(long)]
        reason: String,
        /// Who resolves it; defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
}

#[derive(Subcommand)]
enum MismatchCmd {
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Resolve: keep (registry right) or rebind (move the card to the presented ID's person).
    Resolve {
        id: u64,
        #[arg(long, value_enum)]
        action: MismatchArg,
        #[arg(long)]
        reason: String,
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MismatchArg {
    Keep,
    Rebind,
}

fn main() -> ExitCode {
    iryo_node::logging::init("info");
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    Ok(config)
}

/// Lists operator cases (conflicts, mismatches) as JSON or as text.
fn print_cases<T: serde::Serialize>(
    list: &[T],
    what: &str,
    all: bool,
    json: bool,
    render: fn(&T) -> String,
) -> Result<()> {
    if json {
        print_json(&list)?;
    } else if list.is_empty() {
        println!("no {}{what}", if all { "" } else { "open " });
    } else {
        list.iter().for_each(|c| println!("{}", render(c)));
    }
    Ok(())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let mut config = load_config(&cli)?;
    match cli.command {
        Command::Init { method } => {
            if let Some(m) = method {
                config.issuance.method = match m {
                    MethodArg::Fpe => Method::Fpe,
                    MethodArg::Random => Method::Random,
                };
            }
            let ctx = Context::new(config);
            let (_, keys) = ctx.init()?;
            println!("created {}", ctx.config.db_path().display());
            println!("keys in {} (mode 0600)", ctx.config.keys_dir().display());
            println!("issuance method: {}", ctx.config.issuance.method.as_str());
            println!(
                "agency root public key (Ed25519): {}",
                keys.root
                    .verifying_key()
                    .to_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
        }
        Command::Enroll {
            files,
            encoding,
            batch_rows,
            json,
        } => {
            let encoding = match encoding {
                Some(e) => e,
                None => Encoding::parse(&config.enrollment.encoding).with_context(|| {
                    format!(
                        "configuration: unknown encoding {:?}",
                        config.enrollment.encoding
                    )
                })?,
            };
            let opts = IngestOptions {
                encoding,
                batch_rows: batch_rows.unwrap_or(config.enrollment.batch_rows),
                only_insurer: None,
            };
            let ctx = Context::new(config.clone());
            let mut total = Summary {
                file: "total".into(),
                ..Summary::default()
            };
            let mut summaries = Vec::new();
            match ctx.store() {
                Ok(store) => {
                    let issuer = ctx.issuer(&store)?;
                    let progress = Progress::for_stderr();
                    for f in &files {
                        let s = ingest_file(&store, &issuer, f, &opts, &progress)?;
                        total.add(&s);
                        if !json {
                            println!("{s}");
                        }
                        summaries.push(s);
                    }
                }
                // `serve` holds the database: it enrolls the files itself.
                Err(ContextError::Store(StoreError::InUse(_))) => {
                    let files = files
                        .iter()
                        .map(|f| std::path::absolute(f).with_context(|| f.display().to_string()))
                        .collect::<Result<Vec<_>>>()?;
                    eprintln!("the directory is serving; it enrolls the files (no progress bar)");
                    let AdminResponse::Enrolled(list) = admin(
                        &config,
                        &operator(),
                        AdminRequest::Enroll {
                            files,
                            encoding,
                            batch_rows: opts.batch_rows,
                        },
                    )?
                    else {
                        bail!("unexpected answer from the directory");
                    };
                    for s in list {
                        total.add(&s);
                        if !json {
                            println!("{s}");
                        }
                        summaries.push(s);
                    }
                }
                Err(e) => return Err(e.into()),
            }
            if json {
                print_json(&summaries)?;
            } else if files.len() > 1 {
                println!("{total}");
            }
            if total.rejected > 0 {
                return Ok(ExitCode::from(EXIT_REJECTED));
            }
        }
        Command::Assign { insurer, out, all } => {
            let store = Context::new(config).store()?;
            let rows = store.assignment_rows(&insurer, all)?;
            write_csv(&out, &rows)?;
            store.mark_assigned(&rows, now())?;
            println!(
                "{} rows for insurer {insurer} written to {}",
                rows.len(),
                out.display()
            );
        }
        Command::Letters { plan, out, all } => {
            let op = operator();
            let AdminResponse::Letters(letters) =
                admin(&config, &op, AdminRequest::Letters { plan, all })?
            else {
                bail!("unexpected answer from the directory");
            };
            let files =
                iryo_directory::letters::write_letters(&out, &letters, plan, &config.letters)?;
            let pids = letters.iter().map(|l| l.pid).collect();
            admin(&config, &op, AdminRequest::LettersSent { plan, pids })?;
            println!("{} letters written:", letters.len());
            for f in files {
                println!("  {}", f.display());
            }
        }
        Command::Ca(cmd) => ca(&config, cmd)?,
        Command::Check(args) => return check(config, args),
        Command::Conflicts(cmd) => {
            let ctx = Context::new(config);
            let store = ctx.store()?;
            match cmd {
                ConflictCmd::List { all, json } => print_cases(
                    &store.conflicts(!all)?,
                    "conflicts",
                    all,
                    json,
                    report::conflict,
                )?,
                ConflictCmd::Resolve {
                    id,
                    apply,
                    dismiss: _,
                    reason,
                    operator,
                } => {
                    let issuer = ctx.issuer(&store)?;
                    let action = if apply {
                        ConflictAction::Apply
                    } else {
                        ConflictAction::Dismiss
                    };
                    let c =
                        store.resolve_conflict(id, action, &reason, &operator, &issuer, now())?;
                    println!("{}", report::conflict(&c));
                }
            }
        }
        Command::Mismatches(cmd) => {
            let store = Context::new(config).store()?;
            match cmd {
                MismatchCmd::List { all, json } => print_cases(
                    &store.mismatches(!all)?,
                    "mismatches",
                    all,
                    json,
                    report::mismatch,
                )?,
                MismatchCmd::Resolve {
                    id,
                    action,
                    reason,
                    operator,
                } => {
                    let action = match action {
                        MismatchArg::Keep => MismatchAction::Keep,
                        MismatchArg::Rebind => MismatchAction::Rebind,
                    };
                    let m = store.resolve_mismatch(id, action, &reason, &operator, now())?;
                    println!("{}", report::mismatch(&m));
                }
            }
        }
        Command::Notices { insurer } => {
            let store = Context::new(config).store()?;
            for n in store.notices(insurer.as_ref())? {
                println!(
                    "#{} {} {:?}\n     {}",
                    n.id,
                    iryo_directory::registry::format_time(n.at),
                    n.to,
                    n.text
                );
            }
        }
        Command::Change { medical_id, reason } => {
            let ctx = Context::new(config);
            let store = ctx.store()?;
            let issuer = ctx.issuer(&store)?;
            let new = store.change_id(medical_id, &reason, &issuer, now())?;
            println!("{} -> {}", medical_id.grouped(), new.grouped());
        }
        Command::MyNumberChange { old, new } => {
            let store = Context::new(config).store()?;
            let id = store.change_my_number(old, new, now())?;
            println!(
                "My Number {old} -> {new}; medical ID {} unchanged",
                id.grouped()
            );
        }
        Command::Death { medical_id, date } => {
            if date > today() {
                bail!("date of death {date} is in the future");
            }
            let store = Context::new(config).store()?;
            let until = store.record_death(medical_id, date, now())?;
            println!(
                "death recorded for {}; the ID serves research until {until}, then it is retired",
                medical_id.grouped()
            );
        }
        Command::RetireDue { date } => {
            let store = Context::new(config).store()?;
            let retired = store.retire_due(date.unwrap_or_else(today), now())?;
            println!("{} medical IDs retired", retired.len());
            retired.iter().for_each(|id| println!("  {}", id.grouped()));
        }
        Command::Show {
            medical_id,
            my_number,
            json,
        } => {
            let store = Context::new(config).store()?;
            let reader = store.reader()?;
            let p = match (medical_id, my_number) {
                (Some(id), _) => reader.person_by_medical_id(id)?,
                (None, Some(n)) => reader.person_by_my_number(n)?,
                (None, None) => bail!("give --medical-id or --my-number"),
            };
            let uses = reader.service_uses(p.pid)?;
            if json {
                print_json(&serde_json::json!({ "person": p, "service_use": uses }))?;
            } else {
                print!(
                    "{}",
                    report::person(&p, &uses, store.retention_years(), today())
                );
            }
        }
        Command::Status => {
            let store = Context::new(config).store()?;
            print_json(&store.counts()?)?;
        }
        Command::Sample {
            persons,
            seed,
            out,
            bad_rows,
            encoding,
        } => {
            if !(0.0..=100.0).contains(&bad_rows) {
                bail!("--bad-rows is a percentage from 0 to 100");
            }
            let r = write_sample(
                &out,
                &SampleOptions {
                    persons,
                    seed,
                    bad_rows_percent: bad_rows,
                    encoding,
                },
            )?;
            println!(
                "{} rows ({} persons, {} insurer changes, {} broken on purpose) in {} files under {}",
                r.rows,
                persons,
                r.movers,
                r.bad_rows,
                r.files.len(),
                out.display()
            );
        }
        Command::Demo { dir, persons } => demo::run(&dir, persons)?,
        Command::Bench(args) => bench::run(&args)?,
        Command::Serve { listen, https } => serve(config, listen, https)?,
        Command::Institution(cmd) => institution(&config, cmd)?,
        Command::Consent(cmd) => consent(&config, cmd)?,
        Command::Audit(cmd) => return audit(&config, cmd),
    }
    Ok(ExitCode::SUCCESS)
}

fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

/// Runs an operator command on the database, or through `serve` while it holds it.
fn admin(config: &Config, operator: &str, req: AdminRequest) -> Result<AdminResponse> {
    let ctx = Context::new(config.clone());
    let answer = match ctx.store() {
        Ok(store) => admin::execute(&store, &ctx.keys()?.root, config, operator, req),
        Err(ContextError::Store(StoreError::InUse(_))) => {
            let socket = admin::socket_path(config);
            admin::send(&socket, operator, &req).with_context(|| {
                format!(
                    "the directory is serving; its admin socket {}",
                    socket.display()
                )
            })?
        }
        Err(e) => return Err(e.into()),
    };
    match answer {
        AdminResponse::Error(e) => bail!(e),
        a => Ok(a),
    }
}

fn ca(config: &Config, cmd: CaCmd) -> Result<()> {
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
            for c in Ca::open(&dir)?.revoke(&what)? {
                println!("revoked serial {} ({})", c.serial, c.subject);
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
    Ok(())
}

fn serve(config: Config, listen: Option<String>, https: Option<String>) -> Result<()> {
    let listen: libp2p::Multiaddr = listen
        .unwrap_or_else(|| config.service.listen.clone())
        .parse()
        .context("listen address")?;
    let ctx = Context::new(config.clone());
    let store = std::sync::Arc::new(ctx.store()?);
    let keys = ctx.keys()?;
    let identity = iryo_directory::keys::service_identity(&config.keys_dir())?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let running = iryo_directory::service::start(
            store.clone(),
            keys.root.clone(),
            identity,
            listen,
            config.service.max_group,
        )
        .await?;
        let addrs: Vec<String> = running.addresses.iter().map(|a| a.to_string()).collect();
        std::fs::write(config.data_dir.join("directory.addr"), addrs.join("\n"))?;
        let admin_task = tokio::spawn(admin::serve_socket(
            admin::socket_path(&config),
            store.clone(),
            keys.root.clone(),
            config.clone(),
        ));
        let front = start_https(&config, https, store, keys.root.clone()).await?;
        let https_addr = front
            .as_ref()
            .map(|f| f.addr.to_string())
            .unwrap_or_default();
        println!(
            "iryo-directory ready p2p={} https={https_addr} agency_key={}",
            addrs.join(","),
            iryo_proto::merkle::to_hex(keys.root.verifying_key().as_bytes())
        );
        use std::io::Write as _;
        std::io::stdout().flush()?;
        shutdown_signal().await;
        admin_task.abort();
        if let Some(f) = front {
            f.stop();
        }
        running.stop().await;
        let _ = std::fs::remove_file(admin::socket_path(&config));
        anyhow::Ok(())
    })
}

/// Starts the HTTPS front when the agency CA exists.
async fn start_https(
    config: &Config,
    https: Option<String>,
    store: std::sync::Arc<iryo_directory::store::Store>,
    agency: ed25519_dalek::SigningKey,
) -> Result<Option<iryo_directory::web::Running>> {
    use iryo_directory::ca::Ca;
    use iryo_directory::web;
    let dir = Ca::dir(&config.data_dir);
    if !Ca::exists(&dir) {
        tracing::warn!(
            "no agency CA in {}: HTTPS front off (run `iryo-directory ca init`)",
            dir.display()
        );
        return Ok(None);
    }
    let listen: std::net::SocketAddr = https
        .unwrap_or_else(|| config.https.listen.clone())
        .parse()
        .context("HTTPS listen address")?;
    let tls = std::sync::Arc::new(web::tls::TlsConfigs::new(&Ca::open(&dir)?)?);
    let state = std::sync::Arc::new(web::Web::new(store, agency, config.clone())?);
    Ok(Some(
        web::start(state, tls, listen)
            .await
            .with_context(|| format!("HTTPS on {listen}"))?,
    ))
}

fn institution(config: &Config, cmd: InstitutionCmd) -> Result<()> {
    match cmd {
        InstitutionCmd::Add { request, roles } => {
            let text = std::fs::read_to_string(&request)
                .with_context(|| format!("{}", request.display()))?;
            let file: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{}: not JSON", request.display()))?;
            let signed = serde_json::from_value(file.get("signed").cloned().unwrap_or(file))
                .with_context(|| format!("{}: no signed registration", request.display()))?;
            let roles = roles
                .into_iter()
                .map(|r| match r {
                    RoleArg::Source => Role::Source,
                    RoleArg::Requester => Role::Requester,
                })
                .collect();
            if let AdminResponse::Membership(m) = admin(
                config,
                &operator(),
                AdminRequest::InstitutionAdd {
                    request: signed,
                    roles,
                },
            )? {
                println!(
                    "membership #{} issued: {} {} key {} valid until {}",
                    m.serial,
                    m.code,
                    m.name,
                    iryo_proto::merkle::to_hex(&m.public_key),
                    iryo_directory::registry::format_time(m.not_after)
                );
            }
        }
        InstitutionCmd::Revoke { code } => {
            admin(
                config,
                &operator(),
                AdminRequest::InstitutionRevoke { code },
            )?;
            println!("institution {code} revoked");
        }
        InstitutionCmd::List { json } => {
            if let AdminResponse::Institutions(list) =
                admin(config, &operator(), AdminRequest::Institutions)?
            {
                let rows: Vec<serde_json::Value> = list
                    .iter()
                    .filter_map(|r| {
                        let m = r.membership().ok()?;
                        Some(serde_json::json!({
                            "code": m.code, "name": m.name, "kind": m.kind, "roles": m.roles,
                            "addresses": m.addresses, "public_key": iryo_proto::merkle::to_hex(&m.public_key),
                            "serial": m.serial, "not_after": m.not_after, "revoked_at": r.revoked_at,
                        }))
                    })
                    .collect();
                if json {
                    print_json(&rows)?;
                } else {
                    for r in rows {
                        println!(
                            "{}  {}  {}{}",
                            r["code"].as_str().unwrap_or(""),
                            r["name"].as_str().unwrap_or(""),
                            r["addresses"],
                            if r["revoked_at"].is_null() {
                                ""
                            } else {
                                "  REVOKED"
                            }
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

fn consent(config: &Config, cmd: ConsentCmd) -> Result<()> {
    let (args, allow) = match cmd {
        ConsentCmd::Grant(a) => (a, true),
        ConsentCmd::Revoke(a) => (a, false),
        ConsentCmd::List { medical_id, json } => {
            if let AdminResponse::Consents(list) =
                admin(config, &operator(), AdminRequest::Consents { medical_id })?
            {
                let views: Vec<_> = list.iter().map(|c| c.view()).collect();
                if json {
                    print_json(&views)?;
                } else if views.is_empty() {
                    println!("no consent recorded for {}", medical_id.grouped());
                } else {
                    for v in views {
                        println!(
                            "{}  {} {} for {}{}  ({})",
                            iryo_directory::registry::format_time(v.at),
                            if v.allow { "ALLOW" } else { "REFUSE" },
                            v.purpose.map_or("all purposes", |p| p.as_str()),
                            v.institution
                                .map_or("all institutions".into(), |c| c.to_string()),
                            v.expires_at.map_or(String::new(), |e| format!(
                                " until {}",
                                iryo_directory::registry::format_time(e)
                            )),
                            v.origin
                        );
                    }
                }
            }
            return Ok(());
        }
    };
    let purpose = match args.purpose.as_deref() {
        None => None,
        Some(p) => Some(Purpose::parse(p).with_context(|| {
            format!("unknown purpose {p:?}; use treatment, referral or research")
        })?),
    };
    let at = now();
    let record = ConsentRecord {
        institution: args.institution,
        purpose,
        allow,
        expires_at: args.days.map(|d| at + i64::from(d) * 86_400),
        at,
        origin: ConsentOrigin::Operator(args.operator.clone()),
    };
    admin(
        config,
        &args.operator,
        AdminRequest::Consent {
            medical_id: args.medical_id,
            record,
        },
    )?;
    println!(
        "consent {} recorded for {}",
        if allow { "granted" } else { "revoked" },
        args.medical_id.grouped()
    );
    Ok(())
}

fn audit(config: &Config, cmd: AuditCmd) -> Result<ExitCode> {
    match cmd {
        AuditCmd::Verify => {
            if let AdminResponse::Audit(r) = admin(config, &operator(), AdminRequest::AuditVerify)?
            {
                println!(
                    "{} entries, {} signed tree heads checked, root {}",
                    r.entries, r.heads, r.root
                );
                if !r.problems.is_empty() {
                    r.problems.iter().for_each(|p| println!("PROBLEM: {p}"));
                    return Ok(ExitCode::FAILURE);
                }
                println!("audit log verified");
            }
        }
        AuditCmd::Show { medical_id, json } => {
            if let AdminResponse::Entries(entries) =
                admin(config, &operator(), AdminRequest::AuditShow { medical_id })?
            {
                if json {
                    print_json(&entries)?;
                } else {
                    entries
                        .iter()
                        .for_each(|(i, e)| println!("#{i}  {}", report::audit_entry(e)));
                }
            }
        }
        AuditCmd::Unmatched => {
            if let AdminResponse::Unmatched(list) =
                admin(config, &operator(), AdminRequest::AuditUnmatched)?
            {
                if list.is_empty() {
                    println!("every used grant was reported by both ends");
                }
                for g in list {
                    println!(
                        "grant {}  {} -> {}  {}  {}",
                        iryo_proto::merkle::to_hex(&g.grant.id),
                        g.grant.source,
                        g.grant.requester,
                        g.grant.medical_id.grouped(),
                        if g.disclosed.is_some() {
                            "disclosed, receipt not reported"
                        } else {
                            "received, disclosure not reported"
                        }
                    );
                }
            }
        }
        AuditCmd::Proof { index } => {
            if let AdminResponse::Proof {
                index,
                entry,
                head,
                proof,
            } = admin(config, &operator(), AdminRequest::AuditProof { index })?
            {
                print_json(&serde_json::json!({
                    "index": index,
                    "entry": entry,
                    "entry_hex": iryo_proto::merkle::to_hex(&entry.canonical()),
                    "tree_head": head.open_unverified().ok(),
                    "proof": proof.iter().map(|h| iryo_proto::merkle::to_hex(h)).collect::<Vec<_>>(),
                }))?;
            }
        }
        AuditCmd::Consistency { old } => {
            if let AdminResponse::Consistency {
                old,
                old_root,
                head,
                proof,
            } = admin(config, &operator(), AdminRequest::AuditConsistency { old })?
            {
                let hex = iryo_proto::merkle::to_hex;
                let tree_head = head.open_unverified().ok();
                let ok = tree_head.as_ref().is_some_and(|h| {
                    iryo_proto::merkle::verify_consistency(old, h.size, &old_root, &h.root, &proof)
                });
                print_json(&serde_json::json!({
                    "old_size": old,
                    "old_root": hex(&old_root),
                    "tree_head": tree_head,
                    "proof": proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                    "verified": ok,
                }))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check(config: Config, a: CheckArgs) -> Result<ExitCode> {
    let key = match (&a.insurer, &a.symbol, &a.number) {
        (Some(insurer), Some(symbol), Some(number)) => CheckKey::Card {
            insurer: insurer.clone(),
            symbol: CardSymbol::parse(symbol)?,
            number: CardNumber::parse(number)?,
            branch: a.branch.as_deref().map(Branch::parse).transpose()?,
            presented: a.medical_id,
        },
        _ => match a.medical_id {
            Some(id) => CheckKey::MedicalId(id),
            None => bail!("give --insurer, --symbol and --number, or --medical-id"),
        },
    };
    let req = CheckRequest {
        institution: a.institution,
        key,
        date: a.date.unwrap_or_else(today),
        visit_consent: false,
    };
    let AdminResponse::Checked(answer) = admin(&config, &operator(), AdminRequest::Check(req))?
    else {
        bail!("unexpected answer from the directory");
    };
    if a.json {
        print_json(&answer)?;
    } else {
        println!(
            "{}  reason: {:?}  medical ID: {}",
            if answer.eligible {
                "ELIGIBLE"
            } else {
                "NOT ELIGIBLE"
            },
            answer.reason,
            answer.medical_id.map_or("-".into(), |m| m.grouped())
        );
        if let Some(c) = &answer.coverage {
            println!("coverage: {} {} from {}", c.kind.as_str(), c.card, c.from);
        }
        if let Some(m) = answer.mismatch {
            println!("the presented medical ID does not match the registry: mismatch #{m} recorded, person and insurer notified");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_csv<T: serde::Serialize>(out: &PathBuf, rows: &[T]) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("{}", out.display()))?;
    let mut w = csv::Writer::from_writer(std::io::BufWriter::new(file));
    for r in rows {
        w.serialize(r)?;
    }
    let inner = w
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{}: {}", out.display(), e.error()))?;
    inner
        .into_inner()
        .map_err(|e| anyhow::anyhow!("{}: {}", out.display(), e.error()))?
        .sync_all()
        .with_context(|| format!("{}", out.display()))?;
    Ok(())
}

/// Ctrl-C or SIGTERM (what service managers send), whichever comes first.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminated => {}
    }
}
