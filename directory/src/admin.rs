//! Operator commands (institutions, consent, audit, letters, and enrollment and checks
//! while serving), which run against the database directly, or — while `serve` holds
//! the database — through `serve`'s admin socket in the data directory (mode 0600: the
//! file system decides who is an operator).

use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::config::Config;
use crate::enrollment::{ingest_all, Encoding, IngestOptions, Summary};
use crate::letters::Letter;
use crate::registry::now;
use crate::store::{AuditReport, GrantRecord, InstitutionRecord, Plan, Store};
use ed25519_dalek::SigningKey;
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::{Membership, Registration, Role, TreeHead};
use iryo_proto::merkle::Hash;
use iryo_proto::signed::Signed;
use iryo_proto::{InstitutionCode, MedicalId};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminRequest {
    InstitutionAdd {
        request: Signed<Registration>,
        roles: Vec<Role>,
    },
    InstitutionRevoke {
        code: InstitutionCode,
    },
    Institutions,
    Consent {
        medical_id: MedicalId,
        record: ConsentRecord,
    },
    Consents {
        medical_id: MedicalId,
    },
    AuditVerify,
    AuditShow {
        medical_id: MedicalId,
    },
    AuditUnmatched,
    AuditProof {
        index: u64,
    },
    /// Proof that the log of `old` entries is a prefix of the latest signed head's.
    AuditConsistency {
        old: u64,
    },
    /// Enroll files the serving process can read (absolute paths).
    Enroll {
        files: Vec<PathBuf>,
        /// `None` detects each file's encoding.
        encoding: Option<Encoding>,
        batch_rows: usize,
    },
    /// An eligibility check, recorded as any other.
    Check(CheckRequest),
    /// The letters to print, each with a newly drawn activation code that takes
    /// effect only with `LettersSent`.
    Letters {
        plan: Plan,
        all: bool,
    },
    /// The letters were written and synced: their codes take effect and the people
    /// count as told.
    LettersSent {
        plan: Plan,
        /// Each person and the activation code printed for them.
        letters: Vec<(u64, String)>,
        expires_at: i64,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Membership(Membership),
    Done,
    Institutions(Vec<InstitutionRecord>),
    Consents(Vec<ConsentRecord>),
    Audit(AuditReport),
    Entries(Vec<(u64, LogEntry)>),
    Unmatched(Vec<GrantRecord>),
    Proof {
        index: u64,
        entry: LogEntry,
        head: Signed<TreeHead>,
        proof: Vec<Hash>,
    },
    Consistency {
        old: u64,
        old_root: Hash,
        head: Signed<TreeHead>,
        proof: Vec<Hash>,
    },
    Letters(Vec<Letter>),
    Enrolled(Vec<Summary>),
    Checked(CheckAnswer),
    Error(String),
}

pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("admin.sock")
}

/// Carries out one operator command against an open store.
pub fn execute(
    store: &Store,
    agency: &SigningKey,
    config: &Config,
    operator: &str,
    req: AdminRequest,
) -> AdminResponse {
    let r = (|| -> Result<AdminResponse, crate::store::StoreError> {
        Ok(match req {
            AdminRequest::InstitutionAdd { request, roles } => {
                AdminResponse::Membership(store.add_institution(
                    &request,
                    roles,
                    config.access.membership_days,
                    agency,
                    now(),
                    operator,
                )?)
            }
            AdminRequest::InstitutionRevoke { code } => {
                store.revoke_institution(code, now(), operator)?;
                AdminResponse::Done
            }
            AdminRequest::Institutions => AdminResponse::Institutions(store.institutions()?),
            AdminRequest::Consent { medical_id, record } => {
                store.add_consent(medical_id, &record)?;
                AdminResponse::Done
            }
            AdminRequest::Consents { medical_id } => {
                AdminResponse::Consents(store.consents(medical_id)?)
            }
            AdminRequest::AuditVerify => {
                AdminResponse::Audit(store.audit_verify(&agency.verifying_key())?)
            }
            AdminRequest::AuditShow { medical_id } => AdminResponse::Entries(
                store.audit_for_person(&store.person_by_medical_id(medical_id)?)?,
            ),
            AdminRequest::AuditUnmatched => AdminResponse::Unmatched(
                store.unmatched(now(), config.access.unmatched_after_seconds)?,
            ),
            AdminRequest::Enroll {
                files,
                encoding,
                batch_rows,
            } => {
                let issuer = crate::context::Context::new(config.clone())
                    .issuer(store)
                    .map_err(|e| crate::store::StoreError::Refused(e.to_string()))?;
                let opts = IngestOptions {
                    encoding,
                    batch_rows,
                    only_insurer: None,
                };
                let summaries = ingest_all(store, &issuer, &files, &opts)
                    .map_err(|e| crate::store::StoreError::Refused(e.to_string()))?;
                summaries
                    .iter()
                    .for_each(|s| crate::metrics::metrics().enrolled(s));
                AdminResponse::Enrolled(summaries)
            }
            AdminRequest::Check(req) => AdminResponse::Checked(store.check(&req, now())?),
            AdminRequest::Letters { plan, all } => {
                let rows = store.letter_rows(plan, all, crate::registry::today())?;
                let expires = now() + i64::from(config.letters.activation_days) * 86_400;
                // Drawn, not yet stored: `LettersSent` stores them once printed.
                let codes = rows
                    .iter()
                    .map(|_| crate::store::new_activation_code())
                    .collect::<Result<Vec<_>, _>>()?;
                let until = chrono::DateTime::from_timestamp(expires, 0)
                    .map(|d| d.with_timezone(&chrono::Local).date_naive().to_string())
                    .unwrap_or_default();
                AdminResponse::Letters(
                    rows.into_iter()
                        .zip(codes)
                        .map(|(row, code)| Letter {
                            pid: row.pid,
                            row,
                            code,
                            expires: until.clone(),
                            expires_at: expires,
                        })
                        .collect(),
                )
            }
            AdminRequest::LettersSent {
                plan,
                letters,
                expires_at,
            } => {
                store.letters_sent(plan, &letters, expires_at, now())?;
                AdminResponse::Done
            }
            AdminRequest::AuditConsistency { old } => {
                let (head, size) = latest(store)?;
                AdminResponse::Consistency {
                    old,
                    old_root: store.audit_root(old)?,
                    proof: store.consistency_proof(old, size)?,
                    head,
                }
            }
            AdminRequest::AuditProof { index } => {
                let (head, size) = latest(store)?;
                AdminResponse::Proof {
                    index,
                    entry: store.audit_entry(index)?,
                    proof: store.inclusion_proof(index, size)?,
                    head,
                }
            }
        })
    })();
    r.unwrap_or_else(|e| AdminResponse::Error(e.to_string()))
}

fn latest(store: &Store) -> Result<(Signed<TreeHead>, u64), crate::store::StoreError> {
    store.sign_pending_head()?;
    let head = store
        .latest_head()?
        .ok_or_else(|| crate::store::StoreError::Refused("the audit log is empty".into()))?;
    let size = head
        .open_unverified()
        .map_err(|e| crate::store::StoreError::Inconsistent(e.to_string()))?
        .size;
    Ok((head, size))
}

/// Sends one command to a running `serve` and waits for its answer.
pub fn send(socket: &Path, operator: &str, req: &AdminRequest) -> std::io::Result<AdminResponse> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket)?;
    let line = serde_json::to_string(&(operator, req))?;
    stream.write_all(line.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}

/// Serves the admin socket until the task is dropped.
pub async fn serve_socket(
    path: PathBuf,
    store: std::sync::Arc<Store>,
    agency: SigningKey,
    config: Config,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    let shared = std::sync::Arc::new((store, agency, config));
    loop {
        let (stream, _) = listener.accept().await?;
        let shared = shared.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if tokio::io::BufReader::new(read)
                .read_line(&mut line)
                .await
                .is_err()
            {
                return;
            }
            let response = match serde_json::from_str::<(String, AdminRequest)>(&line) {
                Ok((operator, req)) => tokio::task::spawn_blocking(move || {
                    let (store, agency, config) = &*shared;
                    execute(store, agency, config, &operator, req)
                })
                .await
                .unwrap_or_else(|e| AdminResponse::Error(e.to_string())),
                Err(e) => AdminResponse::Error(format!("bad admin request: {e}")),
            };
            let mut out = serde_json::to_string(&response)
                .unwrap_or_else(|_| "{\"Error\":\"encoding\"}".into());
            out.push('\n');
            let _ = write.write_all(out.as_bytes()).await;
        });
    }
}
