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
    /// Close an unmatched grant whose other end will never report (its node died
    /// before it could): no longer listed; the audit log keeps who closed it and why.
    Close {
        /// The grant's id (32 hex digits), as `audit unmatched` prints it.
        grant: String,
        /// Why it is closed, e.g. "requester crashed; EMR confirms nothing received".
        #[arg(long)]
        reason: String,
        /// Who closes it; defaults to $USER.
        #[arg(long, env = "USER", default_value = "operator")]
        operator: String,
    },
    /// An entry with its inclusion proof against the latest signed tree head (with its
    /// signature and the agency key), every hash in hex.
    Proof {
        /// The entry's index in the log, from 0.
        index: u64,
        /// Print as JSON, for a verifier.
        #[arg(long)]
        json: bool,
    },
    /// Proof that the log of OLD entries is a prefix of the latest signed tree head's.
    Consistency {
        /// The size of the earlier tree (number of entries).
        old: u64,
    },
    /// The verifier key of the log's checkpoints (NAME+ID+KEY), for witnesses'
    /// configurations: the agency's root key, named by `[audit] origin`.
    CheckpointKey,
    /// The latest signed tree head as a checkpoint (c2sp.org/tlog-checkpoint): a note
    /// signed by the agency's root key.
    Checkpoint,
    /// Ask witnesses to cosign the latest checkpoint (c2sp.org/tlog-witness): each
    /// checks a consistency proof from the checkpoint it cosigned before. Prints the
    /// checkpoint with every cosignature obtained; exit code 1 if a witness refused
    /// or could not be reached, each named.
    Witness {
        /// A witness's submission prefix, instead of the `[[audit.witness]]` list
        /// (with --key).
        #[arg(long, value_name = "URL", requires = "key")]
        url: Option<String>,
        /// That witness's verifier key (NAME+ID+KEY), as `iryo-witness vkey` prints it.
        #[arg(long, value_name = "VKEY", requires = "url")]
        key: Option<String>,
    },
    /// The latest checkpoint kept with witnesses' cosignatures (by `audit witness`, or
    /// by `serve` every `[audit] witness_every_seconds`).
    Witnessed,
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
        AuditCmd::Close {
            grant,
            reason,
            operator,
        } => {
            let id = grant_id(&grant).ok_or_else(|| {
                anyhow::anyhow!(
                    "{grant:?}: a grant id is 32 hex digits, as `audit unmatched` prints it"
                )
            })?;
            admin(
                config,
                &operator,
                AdminRequest::AuditClose { grant: id, reason },
            )?;
            println!("grant {grant} closed; the audit log keeps the reason");
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
                        g.unmatched_side()
                    );
                }
            }
        }
        AuditCmd::Proof { index, json } => {
            if let AdminResponse::Proof {
                index,
                entry,
                head,
                proof,
            } = admin(config, &operator(), AdminRequest::AuditProof { index })?
            {
                let v = iryo_directory::audit::proof_json(index, &entry, &head, &proof);
                if json {
                    print_json(&v)?;
                } else {
                    let h = &v["tree_head"];
                    println!("entry #{index}: {}", report::audit_entry(&entry));
                    println!("entry (postcard) {}", v["entry_hex"].as_str().unwrap_or(""));
                    println!("leaf hash        {}", v["leaf_hash"].as_str().unwrap_or(""));
                    println!("inclusion proof, {} hashes:", proof.len());
                    for p in v["proof"].as_array().into_iter().flatten() {
                        println!("  {}", p.as_str().unwrap_or(""));
                    }
                    println!(
                        "signed tree head: size {} root {} at {}",
                        h["size"],
                        h["root"].as_str().unwrap_or(""),
                        h["at"]
                    );
                    println!("  signed by   {}", h["signer"].as_str().unwrap_or(""));
                    println!("  signature   {}", h["signature"].as_str().unwrap_or(""));
                    println!(
                        "  over        {} 0x00 {}",
                        h["domain"].as_str().unwrap_or(""),
                        h["body"].as_str().unwrap_or("")
                    );
                }
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
                    "tree_head": iryo_directory::audit::head_json(&head),
                    "proof": proof.iter().map(|h| hex(h)).collect::<Vec<_>>(),
                    "verified": ok,
                }))?;
            }
        }
        AuditCmd::CheckpointKey => {
            let (origin, signer) = checkpoint_signer(config)?;
            let _ = origin;
            println!("{}", signer.verifier());
        }
        AuditCmd::Checkpoint => {
            let (origin, signer) = checkpoint_signer(config)?;
            use iryo_directory::witnesses::LogView as _;
            let (head, _) = Audit(config).consistency(0)?;
            print!(
                "{}",
                iryo_directory::witnesses::checkpoint_note(&signer, &origin, &head)
            );
        }
        AuditCmd::Witness { url, key } => return witness(config, url, key),
        AuditCmd::Witnessed => match admin(config, &operator(), AdminRequest::Witnessed)? {
            AdminResponse::Witnessed(Some(note)) => print!("{note}"),
            AdminResponse::Witnessed(None) => {
                eprintln!("no checkpoint has been cosigned yet (audit witness)");
                return Ok(ExitCode::FAILURE);
            }
            _ => anyhow::bail!("unexpected answer from the directory"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// The log's origin and the signer of its checkpoints.
fn checkpoint_signer(config: &Config) -> Result<(String, iryo_proto::note::NoteSigner)> {
    let keys = iryo_directory::keys::AgencyKeys::load(&config.keys_dir())?;
    let origin = iryo_directory::witnesses::origin(config.audit.origin.as_deref(), &keys.root);
    let signer = iryo_directory::witnesses::log_signer(&origin, &keys.root)
        .map_err(|e| anyhow::anyhow!("[audit] origin {origin:?}: {e}"))?;
    Ok((origin, signer))
}

/// The audit log as a witness sees it, through the admin requests (directly, or
/// through `serve`).
struct Audit<'c>(&'c Config);

impl iryo_directory::witnesses::LogView for Audit<'_> {
    fn consistency(
        &self,
        old: u64,
    ) -> Result<
        (
            iryo_proto::federation::TreeHead,
            Vec<iryo_proto::merkle::Hash>,
        ),
        iryo_directory::witnesses::WitnessError,
    > {
        use iryo_directory::witnesses::WitnessError;
        let answer = admin(self.0, &operator(), AdminRequest::AuditConsistency { old })
            .map_err(|e| WitnessError::Log(format!("{e:#}")))?;
        let AdminResponse::Consistency { head, proof, .. } = answer else {
            return Err(WitnessError::Log("unexpected answer".into()));
        };
        let head = head
            .open_unverified()
            .map_err(|e| WitnessError::Log(e.to_string()))?;
        Ok((head, proof))
    }
}

/// `audit witness`: the latest checkpoint to each witness, the cosignatures printed.
fn witness(config: &Config, url: Option<String>, key: Option<String>) -> Result<ExitCode> {
    use iryo_proto::note::VerifierKey;
    let witnesses: Vec<(String, String)> = match (url, key) {
        (Some(u), Some(k)) => vec![(u, k)],
        _ => config
            .audit
            .witnesses
            .iter()
            .map(|w| (w.url.clone(), w.key.clone()))
            .collect(),
    };
    if witnesses.is_empty() {
        anyhow::bail!(
            "no witness: give --url and --key, or list them as [[audit.witness]] in the configuration"
        );
    }
    let (origin, signer) = checkpoint_signer(config)?;
    let mut cosigned: Option<iryo_proto::note::Note> = None;
    let mut failed = false;
    for (url, key) in witnesses {
        let vkey = VerifierKey::parse(&key)
            .map_err(|e| anyhow::anyhow!("witness {url}: key {key:?}: {e}"))?;
        match iryo_directory::witnesses::submit(&url, &vkey, &signer, &origin, &Audit(config)) {
            Ok(note) => {
                eprintln!(
                    "witness {} ({url}) cosigned size {}",
                    vkey.name,
                    size_of(&note)
                );
                cosigned = Some(match cosigned.take() {
                    // Cosignatures of one checkpoint gather on one note.
                    Some(mut held) if held.text == note.text => {
                        held.signatures.extend(note.signatures.into_iter().skip(1));
                        held
                    }
                    _ => note,
                });
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if let Some(note) = cosigned {
        admin(
            config,
            &operator(),
            AdminRequest::KeepWitnessed {
                note: note.to_string(),
            },
        )?;
        print!("{note}");
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn size_of(note: &iryo_proto::note::Note) -> u64 {
    iryo_proto::checkpoint::Checkpoint::from_text(&note.text).map_or(0, |c| c.size)
}

/// A grant id from its 32 hex digits.
fn grant_id(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(id)
}
