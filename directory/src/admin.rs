//! Every operator command of the registry, the federation and the audit log, carried
//! out one way: against the database directly, or — while `serve` holds the database —
//! through `serve`'s admin socket in the data directory (mode 0600: the file system
//! decides who is an operator), by the same `execute`.

use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::config::Config;
use crate::enrollment::{ingest_all, Encoding, IngestOptions, Summary};
use crate::letters::Letter;
use crate::registry::now;
use crate::registry::{Conflict, Mismatch, Notice, Person, ServiceUse};
use crate::store::{
    AssignmentRow, AuditReport, ConflictAction, Counts, GrantRecord, InstitutionRecord,
    MismatchAction, Operations, Plan, Store, StoreError,
};
use chrono::NaiveDate;
use ed25519_dalek::SigningKey;
use iryo_proto::eligibility::{CheckAnswer, CheckRequest};
use iryo_proto::federation::{Membership, Registration, Role, TreeHead};
use iryo_proto::merkle::Hash;
use iryo_proto::signed::Signed;
use iryo_proto::{InstitutionCode, InsurerNumber, MedicalId, MyNumber};
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
    /// Every record read back and decoded, the audit log verified.
    VerifyStore,
    /// A consistent copy of the store, the keys and the CA into this directory.
    Backup {
        out: std::path::PathBuf,
    },
    AuditShow {
        medical_id: MedicalId,
    },
    AuditUnmatched,
    /// Close an unmatched grant whose other end will never report, with a reason.
    AuditClose {
        grant: [u8; 16],
        reason: String,
    },
    AuditProof {
        index: u64,
    },
    /// Proof that the log of `old` entries is a prefix of the latest signed head's.
    AuditConsistency {
        old: u64,
    },
    /// Keep a checkpoint with witnesses' cosignatures (a signed note), gathered with
    /// any kept for its size.
    KeepWitnessed {
        note: String,
    },
    /// The kept cosigned checkpoint of the largest size.
    Witnessed,
    /// Enroll files the serving process can read (absolute paths).
    Enroll {
        files: Vec<PathBuf>,
        /// `None` detects each file's encoding.
        encoding: Option<Encoding>,
        batch_rows: usize,
    },
    /// An eligibility check, recorded as any other.
    Check(CheckRequest),
    /// Counts of persons, IDs, cards, service use and open cases.
    Status,
    /// Everything held on a person, found by medical ID or My Number.
    Show {
        medical_id: Option<MedicalId>,
        my_number: Option<MyNumber>,
    },
    /// The rows of an insurer's assignment file (not yet sent, or all).
    Assignment {
        insurer: InsurerNumber,
        all: bool,
    },
    /// The assignment file was written: its rows count as sent.
    AssignmentSent {
        rows: Vec<AssignmentRow>,
    },
    /// A new medical ID on application.
    Change {
        medical_id: MedicalId,
        reason: String,
    },
    MyNumberChange {
        old: MyNumber,
        new: MyNumber,
    },
    /// Records, corrects or revokes a death.
    Death {
        medical_id: MedicalId,
        change: DeathChange,
    },
    /// Retires the IDs whose retention period ended before `date`.
    RetireDue {
        date: NaiveDate,
    },
    Conflicts {
        open_only: bool,
    },
    ConflictResolve {
        id: u64,
        action: ConflictAction,
        reason: String,
    },
    Mismatches {
        open_only: bool,
    },
    MismatchResolve {
        id: u64,
        action: MismatchAction,
        reason: String,
    },
    Notices {
        insurer: Option<InsurerNumber>,
    },
    /// The letters to print, each with a newly drawn activation code that takes
    /// effect only with `LettersSent`.
    Letters {
        plan: Plan,
        all: bool,
        /// Only this person's letter, told before or not (a reissue).
        only: Option<MedicalId>,
    },
    /// The letters were written and synced: their codes take effect and the people
    /// count as told.
    LettersSent {
        plan: Plan,
        /// Each person and the activation code printed for them.
        letters: Vec<(u64, String)>,
        expires_at: i64,
        /// The person whose lost letter this replaces.
        reissue: Option<MedicalId>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AdminResponse {
    Membership(Membership),
    Done,
    Institutions(Vec<InstitutionRecord>),
    Consents(Vec<ConsentRecord>),
    Audit(AuditReport),
    Verified(crate::store::VerifyReport),
    BackedUp(iryo_p2p::backup::Manifest),
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
    Counts(Counts),
    Person {
        person: Box<Person>,
        service_use: Vec<ServiceUse>,
        retention_years: u32,
    },
    Assignment(Vec<AssignmentRow>),
    /// A medical ID: the successor of a change, or the unchanged ID of a My Number change.
    MedicalId(MedicalId),
    /// The end of the research period after a death, or `None` once a death is revoked.
    Death(Option<NaiveDate>),
    Retired(Vec<MedicalId>),
    Conflicts(Vec<Conflict>),
    Conflict(Box<Conflict>),
    Mismatches(Vec<Mismatch>),
    Mismatch(Box<Mismatch>),
    Notices(Vec<Notice>),
    /// A cosigned checkpoint (a signed note), if one is kept.
    Witnessed(Option<String>),
    Error(String),
}

/// What `death` does: record a death, correct its date, or revoke it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DeathChange {
    Record { date: NaiveDate },
    Correct { date: NaiveDate, reason: String },
    Revoke { reason: String },
}

/// What `show` reads of a person, as the person's access log says it.
pub const SHOW_READS: &str =
    "the registry record (identity, My Number, address, coverages, history, service use)";

pub fn socket_path(config: &Config) -> PathBuf {
    config.data_dir.join("admin.sock")
}

/// Carries out one operator command against an open store.
pub fn execute(
    store: &dyn Operations,
    agency: &SigningKey,
    config: &Config,
    operator: &str,
    req: AdminRequest,
) -> AdminResponse {
    let r = (|| -> Result<AdminResponse, AdminError> {
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
            AdminRequest::Backup { out } => AdminResponse::BackedUp(store.backup(
                &config.data_dir,
                &key_files(config)?,
                &out,
            )?),
            AdminRequest::VerifyStore => {
                AdminResponse::Verified(store.verify_records(&agency.verifying_key())?)
            }
            AdminRequest::AuditVerify => {
                AdminResponse::Audit(store.audit_verify(&agency.verifying_key())?)
            }
            AdminRequest::AuditShow { medical_id } => {
                // On the exchange authority the patient is a subject, not a person,
                // and an ID it never made a subject of is known only by what it
                // logged under it.
                let entries = match store.subject_by_medical_id(medical_id)? {
                    Some(s) => store.audit_for_patient(&s.ids)?,
                    None if config.roles.role == crate::config::ServiceRole::Authority => {
                        store.audit_for_patient(&[medical_id])?
                    }
                    None => store.audit_for_person(&store.person_by_medical_id(medical_id)?)?,
                };
                AdminResponse::Entries(entries)
            }
            AdminRequest::AuditClose { grant, reason } => {
                store.close_unmatched(grant, &reason, operator, now())?;
                AdminResponse::Done
            }
            AdminRequest::AuditUnmatched => AdminResponse::Unmatched(
                store.unmatched(now(), config.access.unmatched_after_seconds)?,
            ),
            AdminRequest::Enroll {
                files,
                encoding,
                batch_rows,
            } => {
                let issuer = issuer(store, config)?;
                let opts = IngestOptions {
                    encoding,
                    batch_rows,
                    only_insurer: None,
                    max_line_bytes: config.enrollment.max_line_bytes,
                    source_name: None,
                };
                let summaries = ingest_all(store, &issuer, &files, &opts)?;
                summaries
                    .iter()
                    .for_each(|s| crate::metrics::metrics().enrolled(s));
                AdminResponse::Enrolled(summaries)
            }
            AdminRequest::Check(req) => AdminResponse::Checked(store.check(&req, now())?),
            AdminRequest::Status => AdminResponse::Counts(store.counts()?),
            AdminRequest::Show {
                medical_id,
                my_number,
            } => {
                let person = match (medical_id, my_number) {
                    (Some(id), _) => store.person_by_medical_id(id)?,
                    (None, Some(n)) => store.person_by_my_number(n)?,
                    (None, None) => return Err(AdminError::NoPerson),
                };
                store.log_reads(operator, &[person.medical_id], SHOW_READS)?;
                AdminResponse::Person {
                    service_use: store.service_uses(person.pid)?,
                    person: Box::new(person),
                    retention_years: store.retention_years(),
                }
            }
            AdminRequest::Assignment { insurer, all } => {
                AdminResponse::Assignment(store.assignment_rows(&insurer, all)?)
            }
            AdminRequest::AssignmentSent { rows } => {
                store.mark_assigned(&rows, now())?;
                AdminResponse::Done
            }
            AdminRequest::Change { medical_id, reason } => {
                let issuer = issuer(store, config)?;
                AdminResponse::MedicalId(store.change_id(medical_id, &reason, &issuer, now())?)
            }
            AdminRequest::MyNumberChange { old, new } => {
                AdminResponse::MedicalId(store.change_my_number(old, new, now())?)
            }
            AdminRequest::Death { medical_id, change } => AdminResponse::Death(match change {
                DeathChange::Record { date } => {
                    Some(store.record_death(medical_id, date, operator, now())?)
                }
                DeathChange::Correct { date, reason } => {
                    Some(store.correct_death(medical_id, date, &reason, operator, now())?)
                }
                DeathChange::Revoke { reason } => {
                    store.revoke_death(medical_id, &reason, operator, now())?;
                    None
                }
            }),
            AdminRequest::RetireDue { date } => {
                AdminResponse::Retired(store.retire_due(date, now())?)
            }
            AdminRequest::Conflicts { open_only } => {
                AdminResponse::Conflicts(store.conflicts(open_only)?)
            }
            AdminRequest::ConflictResolve { id, action, reason } => {
                let issuer = issuer(store, config)?;
                AdminResponse::Conflict(Box::new(store.resolve_conflict(
                    id,
                    action,
                    &reason,
                    operator,
                    &issuer,
                    now(),
                )?))
            }
            AdminRequest::Mismatches { open_only } => {
                AdminResponse::Mismatches(store.mismatches(open_only)?)
            }
            AdminRequest::MismatchResolve { id, action, reason } => AdminResponse::Mismatch(
                Box::new(store.resolve_mismatch(id, action, &reason, operator, now())?),
            ),
            AdminRequest::Notices { insurer } => {
                AdminResponse::Notices(store.notices(insurer.as_ref())?)
            }
            AdminRequest::Letters { plan, all, only } => {
                let today = crate::registry::today();
                let rows = match only {
                    Some(id) => vec![store.letter_row_of(plan, id, today)?],
                    None => store.letter_rows(plan, all, today)?,
                };
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
                reissue,
            } => {
                store.letters_sent(plan, &letters, expires_at, now())?;
                if let Some(id) = reissue {
                    // Bound to the person: they see it in their access log.
                    store.log_reads(operator, &[id], REISSUED)?;
                }
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
            AdminRequest::KeepWitnessed { note } => {
                let note = iryo_proto::note::Note::parse(&note)
                    .map_err(crate::witnesses::WitnessError::from)?;
                crate::witnesses::keep(store, &note)?;
                AdminResponse::Done
            }
            AdminRequest::Witnessed => {
                AdminResponse::Witnessed(store.witnessed(None)?.map(|(_, note)| note))
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

/// The files of the keys, the agency CA and the recorded role, relative to the data
/// directory: a backup carries them, or a restored store could not sign, issue or serve.
fn key_files(config: &Config) -> Result<Vec<std::path::PathBuf>, AdminError> {
    let mut out = Vec::new();
    for dir in ["keys", "ca"] {
        let Ok(entries) = std::fs::read_dir(config.data_dir.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_file()) {
                out.push(std::path::Path::new(dir).join(e.file_name()));
            }
        }
    }
    // The role `init` recorded goes with the keys: a restored registry stays one.
    if config.data_dir.join("role").is_file() {
        out.push(std::path::PathBuf::from("role"));
    }
    out.sort();
    Ok(out)
}

/// What the audit log says of a reissued letter (My Portal says it in Japanese).
pub const REISSUED: &str =
    "reissued their letter with a new activation code (their name and address); the old code no longer works";

/// The issuer for the database's method, with the agency's FF1 key.
fn issuer(store: &dyn Operations, config: &Config) -> Result<crate::issuance::Issuer, AdminError> {
    Ok(crate::context::Context::new(config.clone()).issuer_for(store.method()?)?)
}

/// Why an operator command failed; its text is what the operator reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error(transparent)]
    Ingest(#[from] crate::enrollment::IngestError),
    #[error("give a medical ID or a My Number")]
    NoPerson,
    #[error(transparent)]
    Witness(#[from] crate::witnesses::WitnessError),
}

fn latest(store: &dyn Operations) -> Result<(Signed<TreeHead>, u64), crate::store::StoreError> {
    store.current_head()
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
/// Binds the admin socket (mode 0600). Done before `serve` says it is ready, so that a
/// command run after that finds the socket.
pub fn bind_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(listener)
}

pub async fn serve_socket(
    listener: tokio::net::UnixListener,
    store: std::sync::Arc<Store>,
    agency: SigningKey,
    config: Config,
) -> std::io::Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
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
                    execute(&**store, agency, config, &operator, req)
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
