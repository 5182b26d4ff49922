//! The operator's queue: enrollment conflicts, mismatches found at institutions, and
//! the notices they caused.

use super::{ask, operator, print_json};
use anyhow::Result;
use clap::{Args, Subcommand};
use iryo_directory::admin::{AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::registry::{format_time, Recipient};
use iryo_directory::report;
use iryo_directory::store::{ConflictAction, MismatchAction};
use iryo_proto::InsurerNumber;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum ConflictCmd {
    /// List open conflicts (all with --all).
    List(ListArgs),
    /// Resolve a conflict: --apply makes the registry follow the row (the values it
    /// replaces stay in the history), --dismiss keeps the registry as it is.
    Resolve {
        /// The conflict's number, as `conflicts list` shows it.
        id: u64,
        /// The row is right: correct the registry to it.
        #[arg(long, conflicts_with = "dismiss", required_unless_present = "dismiss")]
        apply: bool,
        /// The registry is right: close the case and change nothing.
        #[arg(long)]
        dismiss: bool,
        /// Why; kept with the case, in the history and in the audit log.
        #[arg(long)]
        reason: String,
        /// Who resolves it; defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
}

#[derive(Subcommand)]
pub(super) enum MismatchCmd {
    /// List open mismatches (all with --all).
    List(ListArgs),
    /// Resolve: keep (the registry is right) or rebind (move the card to the person of
    /// the presented ID).
    Resolve {
        /// The mismatch's number, as `mismatches list` shows it.
        id: u64,
        /// keep: the registry is right; rebind: the card belongs to the person whose
        /// medical ID was presented.
        #[arg(long, value_enum)]
        action: MismatchArg,
        /// Why; kept with the case and in the audit log.
        #[arg(long)]
        reason: String,
        /// Who resolves it; defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
}

#[derive(Args)]
pub(super) struct ListArgs {
    /// Include resolved cases.
    #[arg(long)]
    all: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum MismatchArg {
    /// The registry is right; the person or institution had a wrong ID.
    Keep,
    /// Move the card to the person whose medical ID was presented.
    Rebind,
}

#[derive(Args)]
pub(super) struct NoticesArgs {
    /// Only notices for this insurer (insurer number, e.g. 01130012).
    #[arg(long, value_name = "NUMBER")]
    insurer: Option<InsurerNumber>,
}

/// Lists operator cases (conflicts, mismatches) as JSON or as text.
fn print_cases<T: serde::Serialize>(
    list: &[T],
    what: &str,
    a: &ListArgs,
    render: fn(&T) -> String,
) -> Result<()> {
    if a.json {
        print_json(&list)?;
    } else if list.is_empty() {
        println!("no {}{what}", if a.all { "" } else { "open " });
    } else {
        list.iter().for_each(|c| println!("{}", render(c)));
    }
    Ok(())
}

pub(super) fn conflicts(config: Config, cmd: ConflictCmd) -> Result<ExitCode> {
    match cmd {
        ConflictCmd::List(a) => {
            let request = AdminRequest::Conflicts { open_only: !a.all };
            let list = ask!(&config, &operator(), request, AdminResponse::Conflicts(l) => l);
            print_cases(&list, "conflicts", &a, report::conflict)?;
        }
        ConflictCmd::Resolve {
            id,
            apply,
            dismiss: _,
            reason,
            operator,
        } => {
            let action = if apply {
                ConflictAction::Apply
            } else {
                ConflictAction::Dismiss
            };
            let request = AdminRequest::ConflictResolve { id, action, reason };
            let c = ask!(&config, &operator, request, AdminResponse::Conflict(c) => c);
            println!("{}", report::conflict(&c));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn mismatches(config: Config, cmd: MismatchCmd) -> Result<ExitCode> {
    match cmd {
        MismatchCmd::List(a) => {
            let request = AdminRequest::Mismatches { open_only: !a.all };
            let list = ask!(&config, &operator(), request, AdminResponse::Mismatches(l) => l);
            print_cases(&list, "mismatches", &a, report::mismatch)?;
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
            let request = AdminRequest::MismatchResolve { id, action, reason };
            let m = ask!(&config, &operator, request, AdminResponse::Mismatch(m) => m);
            println!("{}", report::mismatch(&m));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn notices(config: Config, a: NoticesArgs) -> Result<ExitCode> {
    let request = AdminRequest::Notices { insurer: a.insurer };
    let list = ask!(&config, &operator(), request, AdminResponse::Notices(l) => l);
    if list.is_empty() {
        println!("no notices");
    }
    for n in list {
        let to = match &n.to {
            Recipient::Person { medical_id } => format!("to the person {}", medical_id.grouped()),
            Recipient::Insurer { insurer } => format!("to insurer {insurer}"),
        };
        println!(
            "#{} {} {to} (mismatch {})\n     {}",
            n.id,
            format_time(n.at),
            n.mismatch,
            n.text
        );
    }
    Ok(ExitCode::SUCCESS)
}
