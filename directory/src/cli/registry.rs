//! The registry's commands: init, enroll, assign, letters, change, My Number change,
//! death, retirement and show.

use super::{admin, ask, date, operator, print_json, write_csv, EXIT_REJECTED};
use anyhow::{bail, Context as _, Result};
use chrono::NaiveDate;
use clap::Args;
use iryo_directory::admin::{AdminRequest, AdminResponse, DeathChange};
use iryo_directory::config::Config;
use iryo_directory::context::{Context, ContextError};
use iryo_directory::enrollment::{
    ingest_file, load_files, wants_initial_load, Encoding, IngestOptions, InitialLoadChoice,
    Progress, Summary,
};
use iryo_directory::issuance::{Issuer, Method};
use iryo_directory::registry::today;
use iryo_directory::report;
use iryo_directory::store::{EnrollBatch, Load, Plan, StoreError};
use iryo_proto::{InsurerNumber, MedicalId, MyNumber};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct InitArgs {
    /// How to issue medical IDs: fpe (FF1 over the My Number, reproducible with the
    /// agency key) or random (with a mapping table); overrides the configuration.
    /// Fixed for the life of the database.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// Which service this directory will be (overrides `roles.role`): an exchange
    /// authority gets no issuance key, since it issues no medical ID (docs/roles.md).
    #[arg(long, value_enum)]
    role: Option<iryo_directory::config::ServiceRole>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum MethodArg {
    /// NIST FF1 (AES-256) over the My Number.
    Fpe,
    /// Drawn from the OS random source.
    Random,
}

#[derive(Args)]
pub(super) struct EnrollArgs {
    /// Enrollment files (CSV with a header row; see the README for the columns).
    /// Every file is checked to be readable before any is enrolled.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Encoding of files without a byte-order mark: auto (strict UTF-8, else
    /// Shift_JIS; a file that is neither is refused), utf-8 or shift_jis (CP932).
    /// Overrides `enrollment.encoding`.
    #[arg(long, value_enum)]
    encoding: Option<EncodingArg>,
    /// Rows per durable transaction; overrides `enrollment.batch_rows` (10000).
    #[arg(long, value_name = "N")]
    batch_rows: Option<usize>,
    /// Print the summaries as JSON instead of one line per file.
    #[arg(long)]
    json: bool,
    /// Enroll all the files as one initial load: one transaction (all or nothing; a
    /// rerun starts again) that writes the indexes in key order, for a registry's
    /// first files. `auto` takes it on the embedded store when the registry holds
    /// fewer persons than a tenth of the rows the files may hold, and on PostgreSQL
    /// when the registry is empty (`always` refuses a registry that is not); the
    /// outcomes are the same either way. Temporary files go to DATA_DIR/initial-load
    /// (0700).
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub(super) initial_load: InitialLoadArg,
}

/// Enrolls `files` by `load`, one initial load, if given, else file by file in
/// batches; prints each file's summary unless `json`.
fn enroll_files(
    store: &(impl EnrollBatch + ?Sized),
    load: Option<impl Load>,
    issuer: &Issuer,
    files: &[PathBuf],
    opts: &IngestOptions,
    json: bool,
) -> Result<Vec<Summary>> {
    let progress = Progress::for_stderr();
    let print = |s: &Summary| {
        if !json {
            println!("{s}");
        }
    };
    let Some(load) = load else {
        let mut summaries = Vec::with_capacity(files.len());
        for f in files {
            let s = ingest_file(store, issuer, f, opts, &progress)?;
            print(&s);
            summaries.push(s);
        }
        return Ok(summaries);
    };
    eprintln!("initial load: the files are enrolled in one transaction, all or nothing");
    let summaries = load_files(load, issuer, files, opts, &progress)?;
    summaries.iter().for_each(print);
    Ok(summaries)
}

/// When `enroll` takes the initial load.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum InitialLoadArg {
    /// When the registry is small beside the files.
    Auto,
    /// Always.
    Always,
    /// Never: batch by batch, each batch committed on its own.
    Never,
}

impl From<InitialLoadArg> for InitialLoadChoice {
    fn from(a: InitialLoadArg) -> Self {
        match a {
            InitialLoadArg::Auto => InitialLoadChoice::Auto,
            InitialLoadArg::Always => InitialLoadChoice::Always,
            InitialLoadArg::Never => InitialLoadChoice::Never,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EncodingArg {
    /// Strict UTF-8 if the bytes are, else Shift_JIS (CP932) if they are, else refused.
    Auto,
    /// UTF-8.
    #[value(name = "utf-8", alias = "utf8")]
    Utf8,
    /// Shift_JIS as Windows writes it (CP932).
    #[value(name = "shift_jis", alias = "sjis", alias = "cp932")]
    ShiftJis,
}

#[derive(Args)]
pub(super) struct AssignArgs {
    /// The insurer whose file to write: its insurer number, 8 digits (6 for National
    /// Health Insurance), e.g. 01130012.
    #[arg(long, value_name = "NUMBER")]
    insurer: InsurerNumber,
    /// Where to write the assignment CSV (mode 0600; it carries My Numbers).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Include rows sent before, not only those not yet assigned.
    #[arg(long)]
    all: bool,
}

#[derive(Args)]
pub(super) struct LettersArgs {
    /// Who sends the letters: insurer (plan 1) or agency (plan 2).
    #[arg(long, value_enum)]
    plan: PlanArg,
    /// Directory for letters-NNNN.pdf and letters.csv (mode 0700; the files carry
    /// activation codes and are 0600).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Include people told before (they get a new activation code).
    #[arg(long, conflicts_with = "reissue")]
    all: bool,
    /// Replace one person's lost letter or forgotten password: a new letter with a new
    /// activation code; their old code stops working, and the reissue is in the audit
    /// log and the person's access log. Needs --medical-id.
    #[arg(long, requires = "medical_id")]
    reissue: bool,
    /// The person whose letter --reissue replaces, e.g. 1234-5678-9012-3450.
    #[arg(long, value_name = "ID", requires = "reissue")]
    medical_id: Option<MedicalId>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum PlanArg {
    /// Plan 1: each insurer sends letters to its insured.
    Insurer,
    /// Plan 2: the agency sends a card or postcard to each person's address.
    Agency,
}

#[derive(Args)]
pub(super) struct ChangeArgs {
    /// The medical ID to replace: 16 digits, separators allowed, e.g. 1234-5678-9012-3450.
    #[arg(long, value_name = "ID")]
    medical_id: MedicalId,
    /// Why the person applied for a new ID (kept in the history), e.g. "card lost".
    #[arg(long)]
    reason: String,
}

#[derive(Args)]
pub(super) struct MyNumberChangeArgs {
    /// The My Number registered now: 12 digits with its check digit.
    #[arg(long, value_name = "MY_NUMBER")]
    old: MyNumber,
    /// The person's new My Number: 12 digits with its check digit.
    #[arg(long, value_name = "MY_NUMBER")]
    new: MyNumber,
}

#[derive(Args)]
pub(super) struct DeathArgs {
    /// The person's medical ID: 16 digits, separators allowed.
    #[arg(long, value_name = "ID")]
    medical_id: MedicalId,
    /// Date of death: YYYY-MM-DD, YYYY/MM/DD or YYYYMMDD; not before the birth date,
    /// not after today.
    #[arg(long, value_parser = date, required_unless_present = "revoke")]
    date: Option<NaiveDate>,
    /// Replace the date of a death recorded earlier with --date (needs --reason).
    #[arg(long, requires = "reason", conflicts_with = "revoke")]
    correct: bool,
    /// Undo a death recorded in error (needs --reason); not possible once the ID is retired.
    #[arg(long, requires = "reason", conflicts_with = "date")]
    revoke: bool,
    /// Why the death is corrected or revoked; kept in the history and the audit log.
    #[arg(long)]
    reason: Option<String>,
    /// Who records it, for the audit log; defaults to $USER.
    #[arg(long, env = "USER", default_value = "operator")]
    operator: String,
}

#[derive(Args)]
pub(super) struct RetireDueArgs {
    /// Judge as of this earlier date instead of today (YYYY-MM-DD); a later date is
    /// refused, since retirement is for ever.
    #[arg(long, value_parser = date)]
    date: Option<NaiveDate>,
}

#[derive(Args)]
pub(super) struct ShowArgs {
    /// Find the person by medical ID (16 digits, separators allowed).
    #[arg(
        long,
        value_name = "ID",
        conflicts_with = "my_number",
        required_unless_present = "my_number"
    )]
    medical_id: Option<MedicalId>,
    /// Find the person by My Number (12 digits).
    #[arg(long)]
    my_number: Option<MyNumber>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

impl InitArgs {
    pub(super) fn role(&self) -> Option<iryo_directory::config::ServiceRole> {
        self.role
    }
}

pub(super) fn init(mut config: Config, a: InitArgs) -> Result<ExitCode> {
    if let Some(role) = a.role {
        config.roles.role = role;
    }
    if let Some(m) = a.method {
        config.issuance.method = match m {
            MethodArg::Fpe => Method::Fpe,
            MethodArg::Random => Method::Random,
        };
    }
    let ctx = Context::new(config);
    let keys = if let Some(url) = ctx.database()? {
        let (_, keys) = ctx.init_postgres(&url)?;
        println!("prepared the registry in {url}");
        keys
    } else {
        let (_, keys) = ctx.init()?;
        println!("created {}", ctx.config.db_path().display());
        keys
    };
    ctx.config.record_role()?;
    println!("keys in {} (mode 0600)", ctx.config.keys_dir().display());
    println!("role: {}", ctx.config.roles.role.as_str());
    if keys.issuance.is_some() {
        println!("issuance method: {}", ctx.config.issuance.method.as_str());
    } else {
        println!("no issuance key: an exchange authority issues no medical ID");
    }
    println!(
        "agency root public key (Ed25519): {}",
        iryo_proto::merkle::to_hex(keys.root.verifying_key().as_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn enroll(config: Config, a: EnrollArgs) -> Result<ExitCode> {
    let encoding = match a.encoding {
        Some(EncodingArg::Auto) => None,
        Some(EncodingArg::Utf8) => Some(Encoding::Utf8),
        Some(EncodingArg::ShiftJis) => Some(Encoding::ShiftJis),
        None => Encoding::from_setting(&config.enrollment.encoding)
            .map_err(|e| anyhow::anyhow!("configuration enrollment.encoding: {e}"))?,
    };
    let unreadable: Vec<String> = a
        .files
        .iter()
        .filter_map(|f| {
            std::fs::File::open(f)
                .err()
                .map(|e| format!("{} ({e})", f.display()))
        })
        .collect();
    if !unreadable.is_empty() {
        bail!(
            "cannot read {}; nothing was enrolled",
            unreadable.join(", ")
        );
    }
    let opts = IngestOptions {
        encoding,
        batch_rows: a.batch_rows.unwrap_or(config.enrollment.batch_rows),
        only_insurer: None,
        max_line_bytes: config.enrollment.max_line_bytes,
        source_name: None,
    };
    let ctx = Context::new(config.clone());
    let mut summaries = Vec::new();
    // On PostgreSQL every command works on the database directly, serving or not.
    let opened = match ctx.database()? {
        Some(url) => {
            let store = ctx.postgres(&url)?;
            let issuer = ctx.postgres_issuer(&store)?;
            let initial = match a.initial_load {
                InitialLoadArg::Always => true,
                InitialLoadArg::Never => false,
                InitialLoadArg::Auto => store.registry_empty()?,
            };
            let load = initial
                .then(|| store.initial_load(&config.data_dir.join("initial-load")))
                .transpose()?;
            summaries = enroll_files(&store, load, &issuer, &a.files, &opts, a.json)?;
            None
        }
        None => Some(ctx.store()),
    };
    match opened {
        None => {}
        Some(Ok(store)) => {
            let issuer = ctx.issuer(&store)?;
            let load = wants_initial_load(&store, &a.files, a.initial_load.into())?
                .then(|| store.initial_load(&config.data_dir.join("initial-load")))
                .transpose()?;
            summaries = enroll_files(&store, load, &issuer, &a.files, &opts, a.json)?;
        }
        // `serve` holds the database: it enrolls the files itself.
        Some(Err(ContextError::Store(StoreError::InUse { .. }))) => {
            let files = a
                .files
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
                if !a.json {
                    println!("{s}");
                }
                summaries.push(s);
            }
        }
        Some(Err(e)) => return Err(e.into()),
    }
    let mut total = Summary {
        file: "total".into(),
        ..Summary::default()
    };
    summaries.iter().for_each(|s| total.add(s));
    if a.json {
        print_json(&summaries)?;
    } else if a.files.len() > 1 {
        println!("{total}");
    }
    Ok(if total.rejected > 0 {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}

pub(super) fn assign(config: Config, a: AssignArgs) -> Result<ExitCode> {
    let op = operator();
    let rows = ask!(&config, &op, AdminRequest::Assignment { insurer: a.insurer.clone(), all: a.all },
        AdminResponse::Assignment(rows) => rows);
    write_csv(&a.out, &rows)?;
    // Marked only once the file is written: a failure repeats rows, never loses them.
    let count = rows.len();
    admin(&config, &op, AdminRequest::AssignmentSent { rows })?;
    println!(
        "{count} rows for insurer {} written to {}",
        a.insurer,
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn letters(config: &Config, a: LettersArgs) -> Result<ExitCode> {
    let plan = match a.plan {
        PlanArg::Insurer => Plan::Insurer,
        PlanArg::Agency => Plan::Agency,
    };
    let op = operator();
    let AdminResponse::Letters(letters) = admin(
        config,
        &op,
        AdminRequest::Letters {
            plan,
            all: a.all,
            only: a.medical_id,
        },
    )?
    else {
        bail!("unexpected answer from the directory");
    };
    // The letters first, synced; only then do their codes take effect.
    let files = iryo_directory::letters::write_letters(&a.out, &letters, plan, &config.letters)?;
    let expires_at = letters.first().map_or(0, |l| l.expires_at);
    let sent = letters.iter().map(|l| (l.pid, l.code.clone())).collect();
    admin(
        config,
        &op,
        AdminRequest::LettersSent {
            plan,
            letters: sent,
            expires_at,
            reissue: a.medical_id,
        },
    )?;
    println!("{} letters written:", letters.len());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn change(config: Config, a: ChangeArgs) -> Result<ExitCode> {
    let request = AdminRequest::Change {
        medical_id: a.medical_id,
        reason: a.reason,
    };
    let new = ask!(&config, &operator(), request, AdminResponse::MedicalId(id) => id);
    println!(
        "medical ID {} replaced; successor {}",
        a.medical_id.grouped(),
        new.grouped()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn my_number_change(config: Config, a: MyNumberChangeArgs) -> Result<ExitCode> {
    let request = AdminRequest::MyNumberChange {
        old: a.old,
        new: a.new,
    };
    let id = ask!(&config, &operator(), request, AdminResponse::MedicalId(id) => id);
    println!(
        "My Number {} -> {}; medical ID {} unchanged",
        a.old,
        a.new,
        id.grouped()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn death(config: Config, a: DeathArgs) -> Result<ExitCode> {
    let id = a.medical_id;
    let reason = a.reason.clone().unwrap_or_default();
    let change = match (a.date, a.correct, a.revoke) {
        (_, _, true) => DeathChange::Revoke { reason },
        (Some(date), true, _) => DeathChange::Correct { date, reason },
        (Some(date), false, _) => DeathChange::Record { date },
        (None, _, false) => bail!("give --date (or --revoke with --reason)"),
    };
    let what = match &change {
        DeathChange::Record { date } => format!("death recorded for {}: {date}", id.grouped()),
        DeathChange::Correct { date, .. } => {
            format!("date of death of {} corrected to {date}", id.grouped())
        }
        DeathChange::Revoke { .. } => format!(
            "death of {} revoked; the person is no longer recorded as deceased",
            id.grouped()
        ),
    };
    let request = AdminRequest::Death {
        medical_id: id,
        change,
    };
    let until = ask!(&config, &a.operator, request, AdminResponse::Death(until) => until);
    match until {
        Some(until) => println!("{what}; the ID serves research until {until}, then it is retired"),
        None => println!("{what}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn retire_due(config: Config, a: RetireDueArgs) -> Result<ExitCode> {
    let request = AdminRequest::RetireDue {
        date: a.date.unwrap_or_else(today),
    };
    let retired = ask!(&config, &operator(), request, AdminResponse::Retired(ids) => ids);
    println!("{} medical IDs retired", retired.len());
    retired.iter().for_each(|id| println!("  {}", id.grouped()));
    Ok(ExitCode::SUCCESS)
}

pub(super) fn show(config: Config, a: ShowArgs) -> Result<ExitCode> {
    let request = AdminRequest::Show {
        medical_id: a.medical_id,
        my_number: a.my_number,
    };
    let (p, uses, retention) = ask!(&config, &operator(), request,
        AdminResponse::Person { person, service_use, retention_years } => (person, service_use, retention_years));
    if a.json {
        print_json(&serde_json::json!({ "person": p, "service_use": uses }))?;
    } else {
        print!("{}", report::person(&p, &uses, retention, today()));
    }
    Ok(ExitCode::SUCCESS)
}
