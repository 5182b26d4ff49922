//! The audit log: verification, a patient's entries, unmatched grants and proofs.

use super::{admin, operator, print_json};
use anyhow::Result;
use clap::Subcommand;
use iryo_directory::admin::{AdminRequest, AdminResponse};
use iryo_directory::config::Config;
use iryo_directory::report;
use iryo_proto::MedicalId;
use std::process::ExitCode;

#[derive(Subcommand)]
pub(super) enum AuditCmd {
    /// Recompute the tree from every entry and check every signed tree head.
    Verify,
    /// Who accessed the patient's records, when, why, and whether in an emergency.
    Show {
        /// The patient's medical ID (16 digits).
        #[arg(long, value_name = "ID")]
        medical_id: MedicalId,
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grants used by one end whose other end has not reported.
    Unmatched,
    /// An entry with its inclusion proof against the latest signed tree head.
    Proof {
        /// The entry's index in the log, from 0.
        index: u64,
    },
    /// Proof that the log of OLD entries is a prefix of the latest signed tree head's.
    Consistency {
        /// The size of the earlier tree (number of entries).
        old: u64,
    },
}

pub(super) fn run(config: &Config, cmd: AuditCmd) -> Result<ExitCode> {
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
