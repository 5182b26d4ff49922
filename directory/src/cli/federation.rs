//! The federation's register: member institutions and patients' consent.

use super::{admin, operator, print_json};
use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::admin::{AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::registry::now;
use iryo_proto::federation::{Purpose, Role};
use iryo_proto::{InstitutionCode, MedicalId};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum InstitutionCmd {
    /// Issue a membership for a node's registration request (from `iryo-node init`).
    Add {
        /// The node's registration.json, as `iryo-node init` wrote it.
        request: PathBuf,
        /// What the institution may do: source (serve records), requester (ask for
        /// them); comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "source,requester")]
        roles: Vec<RoleArg>,
    },
    /// Revoke a membership: the directory refuses the institution at once, other nodes
    /// within their refresh interval.
    Revoke {
        /// The institution's 10-digit code.
        code: InstitutionCode,
    },
    /// Member institutions with their addresses, keys and state.
    List {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(super) enum RoleArg {
    /// Serves its records to others.
    Source,
    /// Asks others for records.
    Requester,
}

#[derive(Subcommand)]
pub(super) enum ConsentCmd {
    /// Record the patient's permission.
    Grant(ConsentArgs),
    /// Record the patient's refusal (without --institution: an opt-out of all exchange).
    Revoke(ConsentArgs),
    /// The patient's consent decisions, newest last.
    List {
        /// The patient's medical ID (16 digits).
        #[arg(long, value_name = "ID")]
        medical_id: MedicalId,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(super) struct ConsentArgs {
    /// The patient's medical ID (16 digits, separators allowed).
    #[arg(long, value_name = "ID")]
    medical_id: MedicalId,
    /// One institution (10-digit code); all institutions when absent.
    #[arg(long, value_name = "CODE")]
    institution: Option<InstitutionCode>,
    /// treatment, referral or research; all purposes when absent.
    #[arg(long)]
    purpose: Option<String>,
    /// Days until the decision lapses (1 or more); no expiry when absent. To stop
    /// sharing now, use `consent revoke`.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    days: Option<u32>,
    /// Who records it, for the audit log; defaults to $USER.
    #[arg(long, env = "USER", default_value = "operator")]
    operator: String,
}

pub(super) fn institution(config: &Config, cmd: InstitutionCmd) -> Result<ExitCode> {
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
    Ok(ExitCode::SUCCESS)
}

pub(super) fn consent(config: &Config, cmd: ConsentCmd) -> Result<ExitCode> {
    let (args, allow) = match cmd {
        ConsentCmd::Grant(a) => (a, true),
        ConsentCmd::Revoke(a) => (a, false),
        ConsentCmd::List { medical_id, json } => {
            if let AdminResponse::Consents(list) =
                admin(config, &operator(), AdminRequest::Consents { medical_id })?
            {
                let views: Vec<_> = list
                    .iter()
                    .map(iryo_directory::access::ConsentRecord::view)
                    .collect();
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
            return Ok(ExitCode::SUCCESS);
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
    Ok(ExitCode::SUCCESS)
}
