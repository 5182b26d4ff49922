//! `check`: an eligibility check as an institution's reception makes it.

use super::{admin, date, operator, print_json, EXIT_NOT_ELIGIBLE, EXIT_NOT_FOUND};
use anyhow::{bail, Result};
use chrono::NaiveDate;
use clap::Args;
use iryo_directory::admin::{AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::registry::eligibility::{CheckKey, CheckRequest};
use iryo_directory::registry::today;
use iryo_proto::eligibility::{CheckAnswer, Reason};
use iryo_proto::{Branch, CardNumber, CardSymbol, InstitutionCode, InsurerNumber, MedicalId};
use std::process::ExitCode;

#[derive(Args)]
#[command(
    after_help = "Answers: eligible (active), or not eligible with coverage_ended, \
not_yet_covered, not_found, branch_required, id_changed (with the successor ID), \
deceased or retired; the same words in text and JSON.\n\
Exit codes: 0 eligible, 4 not eligible, 5 no such person, 1 error."
)]
pub(super) struct CheckArgs {
    /// The institution asking: its 10-digit institution code, e.g. 1310000011.
    #[arg(long, value_name = "CODE")]
    institution: InstitutionCode,
    /// The card's insurer number (8 digits, 6 for National Health Insurance); with
    /// --symbol and --number.
    #[arg(long, value_name = "NUMBER", requires_all = ["symbol", "number"])]
    insurer: Option<InsurerNumber>,
    /// The card's symbol (記号) as printed; full-width digits are accepted.
    #[arg(long)]
    symbol: Option<String>,
    /// The card's number (番号) as printed.
    #[arg(long)]
    number: Option<String>,
    /// The branch number (枝番, 1–2 digits) when several people share the card.
    #[arg(long)]
    branch: Option<String>,
    /// The medical ID presented (16 digits); alone, it identifies the person; with a
    /// card, a different ID is recorded as a mismatch.
    #[arg(long, value_name = "ID", required_unless_present = "insurer")]
    medical_id: Option<MedicalId>,
    /// Date of service: YYYY-MM-DD, YYYY/MM/DD or YYYYMMDD; today by default, never
    /// after today.
    #[arg(long, value_parser = date)]
    date: Option<NaiveDate>,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

/// The reason as one word, as JSON spells it.
fn word(r: Reason) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{r:?}"))
}

/// The answer as an operator reads it: the verdict and reason, then the ID under the
/// name that fits it.
fn render(a: &CheckAnswer) -> String {
    let mut out = format!(
        "{} ({})",
        if a.eligible {
            "ELIGIBLE"
        } else {
            "NOT ELIGIBLE"
        },
        word(a.reason)
    );
    if let Some(id) = a.medical_id {
        let label = match a.reason {
            Reason::IdChanged => "successor medical ID",
            _ => "medical ID",
        };
        out.push_str(&format!("\n{label}: {}", id.grouped()));
    }
    if let Some(c) = &a.coverage {
        out.push_str(&format!(
            "\ncoverage: {} {} from {}",
            c.kind.as_str(),
            c.card,
            c.from
        ));
    }
    if let Some(m) = a.mismatch {
        out.push_str(&format!(
            "\nthe presented medical ID does not match the registry: mismatch #{m} recorded, person and insurer notified"
        ));
    }
    out
}

pub(super) fn run(config: Config, a: CheckArgs) -> Result<ExitCode> {
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
        idempotency_key: None,
    };
    let AdminResponse::Checked(answer) = admin(&config, &operator(), AdminRequest::Check(req))?
    else {
        bail!("unexpected answer from the directory");
    };
    if a.json {
        print_json(&answer)?;
    } else {
        println!("{}", render(&answer));
    }
    Ok(match answer.reason {
        r if r.eligible() => ExitCode::SUCCESS,
        Reason::NotFound => ExitCode::from(EXIT_NOT_FOUND),
        _ => ExitCode::from(EXIT_NOT_ELIGIBLE),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_uses_the_json_words_and_names_the_successor() {
        let changed = CheckAnswer::refused(Reason::IdChanged, Some(MedicalId::from_body(7)));
        let text = render(&changed);
        assert!(text.starts_with("NOT ELIGIBLE (id_changed)"), "{text}");
        assert!(text.contains("successor medical ID: "), "{text}");
        assert_eq!(word(Reason::NotFound), "not_found");
    }
}
