//! The `iryo-directory` command line: the argument types of every command, each
//! explained in `--help`, and their handlers, one module per area.

mod audit;
mod bench;
mod bench_postgres;
mod ca;
mod cases;
mod check;
mod demo;
mod federation;
mod keys;
mod migrate;
mod registry;
mod serve;
mod tools;

use anyhow::{bail, Context as _, Result};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use iryo_directory::admin::{self, AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::context::{Context, ContextError};
use iryo_directory::store::StoreError;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code when a file had rejected rows (the good rows were still enrolled).
pub(crate) const EXIT_REJECTED: u8 = 3;
/// Exit code of `check` when the person is registered but not eligible.
pub(crate) const EXIT_NOT_ELIGIBLE: u8 = 4;
/// Exit code of `check` when no registered person matches.
pub(crate) const EXIT_NOT_FOUND: u8 = 5;

#[derive(Parser)]
#[command(
    name = "iryo-directory",
    version,
    about = "The agency's directory of medical IDs (医療等番号): enroll insurer files, issue and assign IDs, check eligibility, correct the registry.",
    after_help = "First steps:\n  iryo-directory init                      create the database and the agency's keys\n  iryo-directory enroll FILE...            ingest insurer enrollment files\n  iryo-directory assign --insurer N --out F  write an insurer's assignment file\n  iryo-directory check --institution C --medical-id M\n\nOr try everything at once on sample data:  iryo-directory demo\n\nExit codes: 0 done, 1 error, 3 enrollment rows rejected (the rest enrolled),\n4 check: not eligible, 5 check: no such person."
)]
pub(crate) struct Cli {
    /// Configuration file (TOML); see configs/directory.toml. Defaults apply without one.
    #[arg(long, short, global = true, env = "IRYO_DIRECTORY_CONFIG")]
    config: Option<PathBuf>,
    /// Where the database and keys live; overrides `data_dir` in the configuration
    /// (default iryo-data).
    #[arg(long, global = true, env = "IRYO_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep the registry in this PostgreSQL database instead of the embedded store in
    /// --data-dir; overrides `[storage] url`. A libpq URL: postgresql://USER@HOST/DATABASE,
    /// or postgresql://USER@/DATABASE?host=/socket/dir for a unix socket. A password
    /// belongs in PGPASSWORD rather than here; it is never printed. The keys stay in
    /// --data-dir.
    #[arg(long, global = true, env = "IRYO_DATABASE", value_name = "URL")]
    database: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database and the agency's keys (root Ed25519 key and FF1 key, mode 0600).
    Init(registry::InitArgs),
    /// Ingest insurer enrollment files (CSV, UTF-8 or Shift_JIS). Bad rows go to FILE.errors.csv.
    Enroll(registry::EnrollArgs),
    /// Write an insurer's assignment file: card, My Number and medical ID for each person.
    Assign(registry::AssignArgs),
    /// Print the letters that tell people their medical ID and My Portal activation code
    /// (plan 1: by insurer, plan 2: by the agency): PDFs in Japanese and the print
    /// vendor's letters.csv, written into DIR.
    Letters(registry::LettersArgs),
    /// The agency CA of the HTTPS front: server and client certificates, revocation.
    #[command(subcommand)]
    Ca(ca::CaCmd),
    /// The directory's public keys; its service identity, when one must be made anew.
    #[command(subcommand)]
    Keys(keys::KeysCmd),
    /// Eligibility check from an insurance card or a medical ID; records service use.
    Check(check::CheckArgs),
    /// Enrollment rows held because they disagree with the registry.
    #[command(subcommand)]
    Conflicts(cases::ConflictCmd),
    /// Medical IDs presented at institutions that differ from the registry.
    #[command(subcommand)]
    Mismatches(cases::MismatchCmd),
    /// Notices queued for people and insurers.
    Notices(cases::NoticesArgs),
    /// Issue a new medical ID on application; the old one is never issued again.
    Change(registry::ChangeArgs),
    /// Record a new My Number for a person; the medical ID stays.
    MyNumberChange(registry::MyNumberChangeArgs),
    /// Record a death, correct its date, or revoke one recorded in error. Eligibility
    /// ends; the ID serves research until the retention period after death ends.
    Death(registry::DeathArgs),
    /// Retire the IDs whose retention period after death has ended.
    RetireDue(registry::RetireDueArgs),
    /// Print everything held on a person, with history and service use.
    Show(registry::ShowArgs),
    /// Counts of persons, IDs, cards, service use and open cases (JSON).
    Status,
    /// Make linkage.redb (the per-person indexes) again from the logs, when it is
    /// damaged or lost. Stop `serve` first; nothing else is changed.
    RebuildLinkage,
    /// Write a consistent copy of the database, the keys and the CA into a new
    /// directory, also while `serve` runs (through it); a manifest with each file's size
    /// and SHA-256 is written last. Copy that directory somewhere safe.
    Backup {
        /// The directory to write (made 0700; it must not exist or be empty).
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
    },
    /// Restore a backup into --data-dir, which must hold no database: every file is
    /// checked against the manifest first (a partial or changed backup is refused), and
    /// linkage.redb is made again from the logs.
    Restore {
        /// The backup directory `backup --out` wrote.
        #[arg(long, value_name = "DIR")]
        from: std::path::PathBuf,
    },
    /// Check the whole store: every file's page checksums (when the store is opened;
    /// while `serve` holds it, `serve` checked them at its start), every record decoded,
    /// the audit log verified. Exit code 1 when anything is wrong, named.
    VerifyStore,
    /// Create the directory's tables in a PostgreSQL database, or bring them up to this
    /// binary's schema version (versioned migrations, applied once, in one transaction).
    /// Refuses a database whose schema is newer than this binary knows.
    Migrate,
    /// Write realistic sample enrollment files for the four insurer kinds.
    Sample(tools::SampleArgs),
    /// Fresh database, sample data, enrollment, assignment and a few checks, narrated.
    Demo(tools::DemoArgs),
    /// Measure enrollment, memory and eligibility-check throughput; prints a report.
    Bench(bench::BenchArgs),
    /// Serve the federation: institutions' nodes connect over libp2p (mutual TLS).
    Serve(serve::ServeArgs),
    /// Member institutions and their agency-signed memberships (proposal §4-2).
    #[command(subcommand)]
    Institution(federation::InstitutionCmd),
    /// Patients' consent to exchange their records (proposal §4-3).
    #[command(subcommand)]
    Consent(federation::ConsentCmd),
    /// The audit log of exchanges, grants and checks.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
}

/// Runs one parsed command line; the exit code tells scripts what happened.
pub(crate) fn run(cli: Cli) -> Result<ExitCode> {
    let mut config = match &cli.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    if let Some(url) = &cli.database {
        config.storage.url = Some(url.clone());
    }
    // What `init` recorded decides the role; init and serve may ask for one themselves.
    let asked = match &cli.command {
        Command::Init(a) => a.role(),
        Command::Serve(a) => a.role(),
        _ => None,
    };
    if !matches!(cli.command, Command::Init(_)) {
        config.settle_role(asked).map_err(|e| anyhow::anyhow!(e))?;
    } else if let Some(role) = asked {
        config.roles.role = role;
    }
    if config.storage.url.is_some() {
        if let Some(name) = not_on_postgres(&cli.command) {
            bail!(
                "{name} does not run on PostgreSQL yet (docs/storage.md says what does); \
                 for now it needs the embedded store: leave out --database, \
                 IRYO_DATABASE and [storage] url"
            );
        }
    }
    if config.roles.role == iryo_directory::config::ServiceRole::Authority {
        if let Some(name) = registry_only(&cli.command) {
            bail!(
                "{name} is the registry's: this directory is an exchange authority \
                 (roles.role = \"authority\"), which keeps no person and issues no \
                 medical ID; run it on the registry (docs/roles.md)"
            );
        }
    }
    match cli.command {
        Command::Init(a) => registry::init(config, a),
        Command::Enroll(a) => registry::enroll(config, a),
        Command::Assign(a) => registry::assign(config, a),
        Command::Letters(a) => registry::letters(&config, a),
        Command::Ca(cmd) => ca::run(&config, cmd),
        Command::Keys(cmd) => keys::run(&config, cmd),
        Command::Check(a) => check::run(config, a),
        Command::Conflicts(cmd) => cases::conflicts(config, cmd),
        Command::Mismatches(cmd) => cases::mismatches(config, cmd),
        Command::Notices(a) => cases::notices(config, a),
        Command::Change(a) => registry::change(config, a),
        Command::MyNumberChange(a) => registry::my_number_change(config, a),
        Command::Death(a) => registry::death(config, a),
        Command::RetireDue(a) => registry::retire_due(config, a),
        Command::Show(a) => registry::show(config, a),
        Command::Status => {
            let counts =
                ask!(&config, &operator(), AdminRequest::Status, AdminResponse::Counts(c) => c);
            print_json(&counts)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RebuildLinkage => tools::rebuild_linkage(&config),
        Command::VerifyStore => tools::verify_store(&config),
        Command::Migrate => migrate::run(&config),
        Command::Backup { out } => tools::backup(&config, &out),
        Command::Restore { from } => tools::restore(&config, &from),
        Command::Sample(a) => tools::sample(a),
        Command::Demo(a) => tools::demo(a),
        Command::Bench(a) => {
            match &config.storage.url {
                Some(url) => {
                    let url = iryo_directory::postgres::DatabaseUrl::parse(url)?
                        .configured(&config.storage)?;
                    bench_postgres::run(&a, &url)?;
                }
                None => bench::run(&a)?,
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(a) => serve::run(config, a),
        Command::Institution(cmd) => federation::institution(&config, cmd),
        Command::Consent(cmd) => federation::consent(&config, cmd),
        Command::Audit(cmd) => audit::run(&config, cmd),
    }
}

/// The name of a command that works on the embedded store's files and so does not run
/// on PostgreSQL, if this is one. The others reach the store through `admin`, where an
/// operation PostgreSQL cannot do yet is refused by name (`StoreError::NotOnPostgres`).
/// The commands that keep persons or issue IDs, which an exchange authority refuses.
fn registry_only(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::Enroll(_) => "enroll",
        Command::Assign(_) => "assign",
        Command::Letters(_) => "letters",
        Command::Check(_) => "check",
        Command::Conflicts(_) => "conflicts",
        Command::Mismatches(_) => "mismatches",
        Command::Notices(_) => "notices",
        Command::Change(_) => "change",
        Command::MyNumberChange(_) => "my-number-change",
        Command::Death(_) => "death",
        Command::RetireDue(_) => "retire-due",
        Command::Show(_) => "show",
        _ => return None,
    })
}

fn not_on_postgres(c: &Command) -> Option<&'static str> {
    Some(match c {
        Command::RebuildLinkage => "rebuild-linkage (there is no linkage.redb on PostgreSQL)",
        Command::Restore { .. } => "restore (restore the database with PostgreSQL's own tools)",
        Command::Demo(_) => "demo",
        _ => return None,
    })
}

/// An error and its causes on one line, each said once: a cause whose text the
/// message already carries (an I/O error a wrapper printed) is not repeated.
pub(crate) fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The one date parser of the command line, the same as enrollment files use.
pub(crate) fn date(s: &str) -> std::result::Result<NaiveDate, String> {
    iryo_proto::person::parse_date("date", s).map_err(|e| e.to_string())
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Who runs the command, for the audit log: $USER, else "operator".
fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".into())
}

/// Runs an operator command (`admin`) and takes the answer apart: `ask!(config,
/// operator, request, AdminResponse::Counts(c) => c)`.
macro_rules! ask {
    ($config:expr, $operator:expr, $request:expr, $pattern:pat => $value:expr) => {
        match $crate::cli::admin($config, $operator, $request)? {
            $pattern => $value,
            _ => anyhow::bail!("unexpected answer from the directory"),
        }
    };
}
pub(crate) use ask;

/// How long a command waits for another command (not `serve`) to let go of the
/// database: commands take turns instead of refusing each other.
const WAIT_FOR_OTHER_COMMAND: std::time::Duration = std::time::Duration::from_secs(60);

/// Opens the store; while another command (not `serve`, which answers on its socket)
/// holds it, waits for it to finish, saying so once.
fn open_waiting(
    ctx: &Context,
    config: &Config,
) -> std::result::Result<iryo_directory::store::Store, ContextError> {
    let started = std::time::Instant::now();
    let mut said = false;
    loop {
        match ctx.store() {
            Err(ContextError::Store(StoreError::InUse { holder, .. }))
                if !admin::socket_path(config).exists()
                    && started.elapsed() < WAIT_FOR_OTHER_COMMAND =>
            {
                if !said && started.elapsed() > std::time::Duration::from_secs(1) {
                    eprintln!(
                        "waiting for another command to finish with the database ({})",
                        holder.as_deref().unwrap_or("another iryo-directory")
                    );
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Runs an operator command on the database, or through `serve` while it holds it.
pub(crate) fn admin(config: &Config, operator: &str, req: AdminRequest) -> Result<AdminResponse> {
    let ctx = Context::new(config.clone());
    // On PostgreSQL every command works on the database itself, serving or not.
    if let Some(url) = ctx.database()? {
        let store = ctx.postgres(&url)?;
        return match admin::execute(&store, &ctx.keys()?.root, config, operator, req) {
            AdminResponse::Error(e) => bail!(e),
            a => Ok(a),
        };
    }
    let answer = match open_waiting(&ctx, config) {
        Ok(store) => admin::execute(&store, &ctx.keys()?.root, config, operator, req),
        // Held by `serve`, which answers on its socket; held by another command,
        // which the error names.
        Err(ContextError::Store(StoreError::InUse { .. }))
            if admin::socket_path(config).exists() =>
        {
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

/// Writes an assignment file and makes it durable. Mode 0600: the rows carry My
/// Numbers.
fn write_csv(out: &Path, rows: &[iryo_directory::store::AssignmentRow]) -> Result<()> {
    let file =
        iryo_directory::files::create_private(out).with_context(|| format!("{}", out.display()))?;
    let file = iryo_directory::store::AssignmentRow::write_csv(std::io::BufWriter::new(file), rows)
        .with_context(|| format!("{}", out.display()))?;
    file.into_inner()
        .map_err(|e| anyhow::anyhow!("{}: {}", out.display(), e.error()))?
        .sync_all()
        .with_context(|| format!("{}", out.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every flag and argument of every command explains itself in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.get_about().is_none() && sub.get_name() != "help" {
                    missing.push(format!("{path} {} (the command)", sub.get_name()));
                }
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "iryo-directory", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }

    #[test]
    fn the_chain_says_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let e = anyhow::Error::new(io).context(format!("a.csv: {text}"));
        assert_eq!(error_chain(&e), format!("a.csv: {text}"));
    }

    #[test]
    fn dates_name_the_accepted_forms() {
        assert_eq!(date("2020/01/01"), date("2020-01-01"));
        assert_eq!(date("20200101"), date("2020-01-01"));
        let e = date("2026-02-30").unwrap_err();
        assert!(
            e.contains("YYYY-MM-DD") && !e.contains("out of range"),
            "{e}"
        );
    }
}
