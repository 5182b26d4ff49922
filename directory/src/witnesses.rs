//! The audit log's tree heads as C2SP checkpoints, and their submission to witnesses
//! (c2sp.org/tlog-witness). The agency's root key signs each checkpoint as an Ed25519
//! note under the log's origin; a witness cosigns it only if it extends the checkpoint
//! the witness cosigned before, checked by a consistency proof. Everything exchanged
//! is public and signed, so plain HTTP carries it (a deployment may put TLS in front).

use ed25519_dalek::SigningKey;
use iryo_proto::checkpoint::{AddCheckpoint, Checkpoint};
use iryo_proto::federation::TreeHead;
use iryo_proto::merkle::Hash;
use iryo_proto::note::{Note, NoteError, NoteSignature, NoteSigner, VerifierKey};
use std::time::Duration;

/// How long one request to a witness may take.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a witness did not cosign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    #[error("witness {url}: unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "witness {0}: the URL must begin with http:// (checkpoints and cosignatures are \
         public and signed, so no TLS is needed; reach a witness served only over HTTPS \
         through a local proxy)"
    )]
    NotHttp(String),
    #[error("witness {url} refused the checkpoint of size {size} ({status}): {reason}")]
    Refused {
        url: String,
        size: u64,
        status: u16,
        reason: String,
    },
    #[error("witness {url}: its answer is not a cosignature of its key: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("{0}")]
    Log(String),
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The origin of the audit log's checkpoints: configured, or derived from the agency's
/// root key so that two deployments never share one.
pub fn origin(configured: Option<&str>, root: &SigningKey) -> String {
    match configured {
        Some(o) if !o.trim().is_empty() => o.trim().to_string(),
        _ => iryo_proto::checkpoint::default_origin(&root.verifying_key()),
    }
}

/// The log's signer of checkpoints: the root key, named by the origin.
pub fn log_signer(origin: &str, root: &SigningKey) -> Result<NoteSigner, NoteError> {
    NoteSigner::ed25519(origin, root.clone())
}

/// A signed tree head as a checkpoint note signed by the log.
pub fn checkpoint_note(signer: &NoteSigner, origin: &str, head: &TreeHead) -> Note {
    let text = Checkpoint {
        origin: origin.to_string(),
        size: head.size,
        root: head.root,
    }
    .text();
    Note {
        signatures: vec![signer.sign(&text, 0)],
        text,
    }
}

/// What a witness asks of the log: its head, and a consistency proof to it from a
/// size the witness names. `consistency(old)` returns the latest head and the proof
/// from `old` to it.
pub trait LogView {
    fn consistency(&self, old: u64) -> Result<(TreeHead, Vec<Hash>), WitnessError>;
}

/// Submits the log's latest checkpoint to the witness at `url` (its submission
/// prefix) and returns the checkpoint with the witness's cosignature. The log does
/// not know what the witness last cosigned: it offers size 0, and on a 409 answer
/// sends the proof from the size the witness names, as tlog-witness intends.
pub fn submit(
    url: &str,
    witness: &VerifierKey,
    signer: &NoteSigner,
    origin: &str,
    log: &dyn LogView,
) -> Result<Note, WitnessError> {
    check_url(url)?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(WITNESS_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .new_agent();
    let endpoint = format!("{}/add-checkpoint", url.trim_end_matches('/'));
    let mut old = 0;
    for _ in 0..3 {
        let (head, proof) = log.consistency(old)?;
        let note = checkpoint_note(signer, origin, &head);
        let body = AddCheckpoint {
            old,
            proof: if old == 0 { Vec::new() } else { proof },
            note: note.clone(),
        }
        .to_string();
        let mut answer = agent
            .post(&endpoint)
            .content_type("text/plain; charset=utf-8")
            .send(body.as_str())
            .map_err(|e| WitnessError::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let status = answer.status().as_u16();
        let text = answer
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        match status {
            200 => return cosigned(url, witness, note, &text),
            409 => {
                old = text.trim().parse().map_err(|_| WitnessError::BadAnswer {
                    url: url.to_string(),
                    reason: format!(
                        "409 without a size: {:?}",
                        text.chars().take(80).collect::<String>()
                    ),
                })?;
                if old > head.size {
                    return Err(WitnessError::Refused {
                        url: url.to_string(),
                        size: head.size,
                        status,
                        reason: format!(
                            "the witness has cosigned size {old}, larger than this log's {}: it has seen another history of this log",
                            head.size
                        ),
                    });
                }
            }
            _ => {
                return Err(WitnessError::Refused {
                    url: url.to_string(),
                    size: head.size,
                    status,
                    reason: text.trim().chars().take(300).collect(),
                })
            }
        }
    }
    Err(WitnessError::BadAnswer {
        url: url.to_string(),
        reason: "it kept naming other sizes".into(),
    })
}

/// A witness's submission prefix must be plain HTTP: what is exchanged is public and
/// signed, and this client speaks no TLS.
fn check_url(url: &str) -> Result<(), WitnessError> {
    if url.starts_with("http://") {
        return Ok(());
    }
    Err(WitnessError::NotHttp(url.to_string()))
}

/// The checkpoint with the witness's cosignature, checked against its key.
fn cosigned(
    url: &str,
    witness: &VerifierKey,
    mut note: Note,
    answer: &str,
) -> Result<Note, WitnessError> {
    let bad = |reason: String| WitnessError::BadAnswer {
        url: url.to_string(),
        reason,
    };
    let lines: Vec<NoteSignature> = answer
        .lines()
        .filter(|l| !l.is_empty())
        .map(NoteSignature::parse_line)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let check = Note {
        text: note.text.clone(),
        signatures: lines.clone(),
    };
    check
        .verify(std::slice::from_ref(witness))
        .map_err(|e| bad(e.to_string()))?;
    note.signatures.extend(
        lines
            .into_iter()
            .filter(|s| s.name == witness.name && s.key_id == witness.id()),
    );
    Ok(note)
}

/// The cosignatures of two notes of one checkpoint gathered on one: every signature
/// line of either, each once. `None` if they are not notes of the same text.
pub fn merge(kept: &Note, new: &Note) -> Option<Note> {
    if kept.text != new.text {
        return None;
    }
    let mut out = kept.clone();
    for s in &new.signatures {
        if !out
            .signatures
            .iter()
            .any(|k| k.name == s.name && k.key_id == s.key_id)
        {
            out.signatures.push(s.clone());
        }
    }
    Some(out)
}

/// Keeps a cosigned checkpoint in `store`, with any cosignatures kept before for the
/// same size; returns its size.
pub fn keep(store: &dyn crate::store::Operations, note: &Note) -> Result<u64, WitnessError> {
    let size = Checkpoint::from_text(&note.text)
        .map_err(|e| WitnessError::Log(format!("not a checkpoint: {e}")))?
        .size;
    let log = |e: crate::store::StoreError| WitnessError::Log(e.to_string());
    let merged = match store.witnessed(Some(size)).map_err(log)? {
        Some((_, kept)) => {
            let kept = Note::parse(&kept)?;
            merge(&kept, note).unwrap_or_else(|| note.clone())
        }
        None => note.clone(),
    };
    store
        .keep_witnessed(size, &merged.to_string())
        .map_err(log)?;
    Ok(size)
}

/// The store's audit log as witnesses see it.
pub struct StoreLog<'s>(pub &'s dyn crate::store::Operations);

impl LogView for StoreLog<'_> {
    fn consistency(&self, old: u64) -> Result<(TreeHead, Vec<Hash>), WitnessError> {
        let log = |e: crate::store::StoreError| WitnessError::Log(e.to_string());
        let (head, size) = self.0.current_head().map_err(log)?;
        let head = head
            .open_unverified()
            .map_err(|e| WitnessError::Log(e.to_string()))?;
        let proof = if old == 0 || old > size {
            Vec::new()
        } else {
            self.0.consistency_proof(old, size).map_err(log)?
        };
        Ok((head, proof))
    }
}

/// The configured witnesses, their keys read.
pub fn configured(
    list: &[crate::config::WitnessConfig],
) -> Result<Vec<(String, VerifierKey)>, WitnessError> {
    list.iter()
        .map(|w| {
            check_url(&w.url).map_err(|e| WitnessError::Log(format!("[[audit.witness]]: {e}")))?;
            VerifierKey::parse(&w.key)
                .map(|k| (w.url.clone(), k))
                .map_err(|e| WitnessError::Log(format!("[[audit.witness]] {}: {e}", w.url)))
        })
        .collect()
}

/// Asks every witness to cosign the log's latest checkpoint and keeps what they
/// cosigned: what `serve` does every `[audit] witness_every_seconds`. Returns the
/// witnesses (by URL) that refused or could not be reached, with why.
pub fn witness_once(
    store: &dyn crate::store::Operations,
    witnesses: &[(String, VerifierKey)],
    signer: &NoteSigner,
    origin: &str,
) -> Vec<(String, WitnessError)> {
    // An empty log has nothing to cosign yet.
    if store.audit_size().unwrap_or(0) == 0 {
        return Vec::new();
    }
    let mut failed = Vec::new();
    for (url, key) in witnesses {
        match submit(url, key, signer, origin, &StoreLog(store)).and_then(|note| keep(store, &note))
        {
            Ok(size) => tracing::debug!(witness = %key.name, size, "checkpoint cosigned"),
            Err(e) => failed.push((url.clone(), e)),
        }
    }
    failed
}

/// A kept checkpoint as checked: the tree head, the witnesses whose cosignatures
/// verify, and the latest time one of them cosigned.
#[derive(Debug, Clone)]
pub struct Witnessed {
    pub checkpoint: Checkpoint,
    pub witnesses: Vec<String>,
    pub cosigned_at: u64,
}

/// Reads a kept cosigned checkpoint: it must be signed by the log's key, and counts
/// the cosignatures of `witnesses` that verify (none is an empty list, not an error).
pub fn check_witnessed(
    note: &str,
    log: &VerifierKey,
    witnesses: &[VerifierKey],
) -> Result<Witnessed, WitnessError> {
    let note = Note::parse(note)?;
    let checkpoint = Checkpoint::from_text(&note.text)
        .map_err(|e| WitnessError::Log(format!("not a checkpoint: {e}")))?;
    note.verify(std::slice::from_ref(log))?;
    let cosigned = match note.verify(witnesses) {
        Ok(found) => found,
        Err(NoteError::Unverified) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let mut names: Vec<String> = cosigned.iter().map(|(k, _)| k.name.clone()).collect();
    names.sort();
    names.dedup();
    Ok(Witnessed {
        checkpoint,
        witnesses: names,
        cosigned_at: cosigned.iter().filter_map(|(_, t)| *t).max().unwrap_or(0),
    })
}

/// The latest kept checkpoint with at least one cosignature of the configured
/// witnesses, checked; `None` if there is none (or none that checks).
pub fn latest_witnessed(
    store: &dyn crate::store::Operations,
    audit: &crate::config::AuditConfig,
    root: &SigningKey,
) -> Option<Witnessed> {
    let (_, note) = store.witnessed(None).ok()??;
    let origin = origin(audit.origin.as_deref(), root);
    let log = log_signer(&origin, root).ok()?.verifier();
    let keys: Vec<VerifierKey> = configured(&audit.witnesses)
        .ok()?
        .into_iter()
        .map(|(_, k)| k)
        .collect();
    match check_witnessed(&note, &log, &keys) {
        Ok(w) if !w.witnesses.is_empty() => Some(w),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the kept witnessed checkpoint does not check");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64) -> TreeHead {
        TreeHead {
            size,
            root: [size as u8; 32],
            at: 0,
        }
    }

    #[test]
    fn cosignatures_of_one_checkpoint_gather_once_each() {
        let root = SigningKey::from_bytes(&[1; 32]);
        let origin = origin(None, &root);
        let log = log_signer(&origin, &root).unwrap();
        let w1 = NoteSigner::cosigner("w.example/1", SigningKey::from_bytes(&[2; 32])).unwrap();
        let w2 = NoteSigner::cosigner("w.example/2", SigningKey::from_bytes(&[3; 32])).unwrap();
        let base = checkpoint_note(&log, &origin, &head(5));
        let with = |w: &NoteSigner| {
            let mut n = base.clone();
            n.signatures.push(w.sign(&n.text, 7));
            n
        };
        let both = merge(&with(&w1), &with(&w2)).unwrap();
        assert_eq!(both.signatures.len(), 3);
        assert_eq!(merge(&both, &with(&w1)).unwrap(), both);
        let other = checkpoint_note(&log, &origin, &head(6));
        assert!(merge(&both, &other).is_none());
        let checked = check_witnessed(
            &both.to_string(),
            &log.verifier(),
            &[w1.verifier(), w2.verifier()],
        )
        .unwrap();
        assert_eq!(checked.witnesses.len(), 2);
        assert_eq!(checked.cosigned_at, 7);
        // Signed by another log key: refused.
        let stranger = log_signer(&origin, &SigningKey::from_bytes(&[9; 32])).unwrap();
        assert!(check_witnessed(&both.to_string(), &stranger.verifier(), &[]).is_err());
    }

    #[test]
    fn the_origin_is_configured_or_comes_from_the_root_key() {
        let root = SigningKey::from_bytes(&[1; 32]);
        assert_eq!(origin(Some(" audit.example "), &root), "audit.example");
        let derived = origin(None, &root);
        assert!(derived.starts_with("iryo-audit/") && derived.len() == "iryo-audit/".len() + 16);
        assert_eq!(origin(Some(""), &root), derived);
    }
}
