//! `iryo-directory`: the agency's command line.

use anyhow::{bail, Context as _, Result};
use chrono::NaiveDate;
use clap::{Args, Parser, Subcommand};
use iryo_directory::config::Config;
use iryo_directory::context::Context;
use iryo_directory::enrollment::{ingest_file, Encoding, IngestOptions, Progress, Summary};
use iryo_directory::issuance::Method;
use iryo_directory::registry::eligibility::{CheckKey, CheckRequest};
use iryo_directory::registry::{now, today};
use iryo_directory::sample::{write_sample, SampleOptions};
use iryo_directory::store::{ConflictAction, MismatchAction, Plan};
use iryo_directory::{bench, demo, report};
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
    /// List the letters that tell people their medical ID (plan 1: by insurer, plan 2: by the agency).
    Notify {
        #[arg(long, value_enum)]
        plan: Plan,
        #[arg(long)]
        out: PathBuf,
        /// Include people listed before.
        #[arg(long)]
        all: bool,
    },
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
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
            };
            let ctx = Context::new(config);
            let store = ctx.store()?;
            let issuer = ctx.issuer(&store)?;
            let progress = Progress::for_stderr();
            let mut total = Summary {
                file: "total".into(),
                ..Summary::default()
            };
            let mut summaries = Vec::new();
            for f in &files {
                let s = ingest_file(&store, &issuer, f, &opts, &progress)?;
                total.add(&s);
                if !json {
                    println!("{s}");
                }
                summaries.push(s);
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
        Command::Notify { plan, out, all } => {
            let store = Context::new(config).store()?;
            let rows = store.letter_rows(plan, all, today())?;
            write_csv(&out, &rows)?;
            store.mark_notified(&rows, plan, now())?;
            println!("{} letters written to {}", rows.len(), out.display());
        }
        Command::Check(args) => return check(config, args),
        Command::Conflicts(cmd) => {
            let ctx = Context::new(config);
            let store = ctx.store()?;
            match cmd {
                ConflictCmd::List { all, json } => {
                    let list = store.conflicts(!all)?;
                    if json {
                        print_json(&list)?;
                    } else if list.is_empty() {
                        println!("no {}conflicts", if all { "" } else { "open " });
                    } else {
                        list.iter()
                            .for_each(|c| println!("{}", report::conflict(c)));
                    }
                }
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
                MismatchCmd::List { all, json } => {
                    let list = store.mismatches(!all)?;
                    if json {
                        print_json(&list)?;
                    } else if list.is_empty() {
                        println!("no {}mismatches", if all { "" } else { "open " });
                    } else {
                        list.iter()
                            .for_each(|m| println!("{}", report::mismatch(m)));
                    }
                }
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
    let store = Context::new(config).store()?;
    let answer = store.check(&req, now())?;
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
