//! What a witness remembers of each log: the latest checkpoint it cosigned, kept in a
//! redb file so that a cosignature is sent only after its checkpoint is durable, and a
//! witness killed at any moment never cosigns a checkpoint that does not extend one it
//! cosigned before. Checkpoints a log signed that fail the consistency checks are kept
//! too: they are evidence that the log showed two histories.

use iryo_proto::checkpoint::{AddCheckpoint, Checkpoint};
use iryo_proto::merkle::{empty_root, verify_consistency, Hash};
use iryo_proto::note::{Note, NoteSignature, NoteSigner, VerifierKey};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Origin → the latest cosigned checkpoint (`Latest`, postcard).
const LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("latest");
/// (origin, number) → a refused request's body and why, for an auditor.
const EVIDENCE: TableDefinition<(&str, u64), &str> = TableDefinition::new("evidence");

/// A log this witness serves: its origin and the keys its checkpoints are signed by.
#[derive(Debug, Clone)]
pub struct Log {
    pub origin: String,
    pub keys: Vec<VerifierKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Latest {
    size: u64,
    root: Hash,
    /// The checkpoint as cosigned: the log's signature and the witness's.
    note: String,
}

/// Why a checkpoint was not cosigned; each maps to the status tlog-witness names.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("no log with origin {0:?} is served here")]
    UnknownLog(String),
    #[error("the checkpoint is not signed by the log's key: {0}")]
    NotSigned(String),
    #[error("the old size {old} is larger than the checkpoint's size {size}")]
    OldTooLarge { old: u64, size: u64 },
    #[error("the latest checkpoint cosigned for this log has size {latest}")]
    Conflict { latest: u64 },
    #[error("the checkpoint does not extend the one cosigned before: {0}")]
    Inconsistent(String),
    #[error("the witness's store failed: {0}")]
    Store(String),
}

impl Refusal {
    /// The HTTP status of c2sp.org/tlog-witness for this refusal.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::Malformed(_) | Refusal::OldTooLarge { .. } => 400,
            Refusal::NotSigned(_) => 403,
            Refusal::UnknownLog(_) => 404,
            Refusal::Conflict { .. } => 409,
            Refusal::Inconsistent(_) => 422,
            Refusal::Store(_) => 500,
        }
    }
}

fn store(e: impl std::fmt::Display) -> Refusal {
    Refusal::Store(e.to_string())
}

/// The witness: its signer, the logs it serves and what it cosigned.
pub struct Witness {
    db: Database,
    signer: NoteSigner,
    logs: Vec<Log>,
}

impl Witness {
    /// Opens (or creates) the state file at `path`.
    pub fn open(path: &Path, signer: NoteSigner, logs: Vec<Log>) -> Result<Self, redb::Error> {
        let db = Database::builder().set_cache_size(16 << 20).create(path)?;
        let _ = iryo_p2p::files::make_private(path);
        let tx = db.begin_write()?;
        tx.open_table(LATEST)?;
        tx.open_table(EVIDENCE)?;
        tx.commit()?;
        Ok(Self { db, signer, logs })
    }

    /// The witness's verifier key.
    pub fn verifier(&self) -> VerifierKey {
        self.signer.verifier()
    }

    /// Cosigns the checkpoint of an `add-checkpoint` request at `now` (seconds since
    /// the epoch) if it extends the latest one cosigned for its log; the cosignature is
    /// returned only once the new latest checkpoint is durable. The check and the
    /// update are one write transaction, so two requests never both pass against the
    /// same old size.
    pub fn add_checkpoint(&self, body: &str, now: u64) -> Result<NoteSignature, Refusal> {
        let req = AddCheckpoint::parse(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let cp =
            Checkpoint::from_text(&req.note.text).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let log = self
            .logs
            .iter()
            .find(|l| l.origin == cp.origin)
            .ok_or_else(|| Refusal::UnknownLog(cp.origin.clone()))?;
        req.note
            .verify(&log.keys)
            .map_err(|e| Refusal::NotSigned(e.to_string()))?;
        if req.old > cp.size {
            return Err(Refusal::OldTooLarge {
                old: req.old,
                size: cp.size,
            });
        }
        let tx = self.db.begin_write().map_err(store)?;
        let outcome = {
            let mut latest_table = tx.open_table(LATEST).map_err(store)?;
            let latest: Option<Latest> =
                match latest_table.get(cp.origin.as_str()).map_err(store)? {
                    Some(v) => Some(postcard::from_bytes(v.value()).map_err(store)?),
                    None => None,
                };
            let (size, root) = latest
                .as_ref()
                .map_or((0, empty_root()), |l| (l.size, l.root));
            if req.old != size {
                return Err(Refusal::Conflict { latest: size });
            }
            check(&req, &cp, size, &root).and_then(|()| {
                let cosignature = self.signer.sign(&req.note.text, now);
                let mut note = Note {
                    text: req.note.text.clone(),
                    signatures: req
                        .note
                        .signatures
                        .iter()
                        .filter(|s| {
                            log.keys
                                .iter()
                                .any(|k| k.name == s.name && k.id() == s.key_id)
                        })
                        .cloned()
                        .collect(),
                };
                note.signatures.push(cosignature.clone());
                let kept = Latest {
                    size: cp.size,
                    root: cp.root,
                    note: note.to_string(),
                };
                let bytes = postcard::to_allocvec(&kept).map_err(store)?;
                latest_table
                    .insert(cp.origin.as_str(), bytes.as_slice())
                    .map_err(store)?;
                Ok(cosignature)
            })
        };
        match outcome {
            Ok(cosignature) => {
                tx.commit().map_err(store)?;
                tracing::info!(origin = %cp.origin, size = cp.size, "checkpoint cosigned");
                Ok(cosignature)
            }
            Err(why) => {
                // Signed by the log and yet not an extension: proof of a fork, kept.
                tracing::error!(origin = %cp.origin, size = cp.size, reason = %why, "checkpoint refused; the request is kept as evidence");
                {
                    let mut evidence = tx.open_table(EVIDENCE).map_err(store)?;
                    let next = evidence
                        .range((cp.origin.as_str(), 0)..=(cp.origin.as_str(), u64::MAX))
                        .map_err(store)?
                        .next_back()
                        .transpose()
                        .map_err(store)?
                        .map_or(0, |(k, _)| k.value().1 + 1);
                    let kept = format!("{why}\n\n{body}");
                    evidence
                        .insert((cp.origin.as_str(), next), kept.as_str())
                        .map_err(store)?;
                }
                tx.commit().map_err(store)?;
                Err(why)
            }
        }
    }

    /// The latest checkpoint cosigned for the log whose origin hashes to `origin_hash`
    /// (SHA-256, lowercase hex), with the log's and the witness's signatures.
    pub fn latest(&self, origin_hash: &str) -> Result<Option<String>, Refusal> {
        use sha2::{Digest, Sha256};
        let Some(log) = self.logs.iter().find(|l| {
            let h = Sha256::digest(l.origin.as_bytes());
            iryo_proto::merkle::to_hex(&h) == origin_hash
        }) else {
            return Ok(None);
        };
        let tx = self.db.begin_read().map_err(store)?;
        let table = tx.open_table(LATEST).map_err(store)?;
        match table.get(log.origin.as_str()).map_err(store)? {
            Some(v) => {
                let l: Latest = postcard::from_bytes(v.value()).map_err(store)?;
                Ok(Some(l.note))
            }
            None => Ok(None),
        }
    }

    /// The refused requests kept for a log, oldest first: why, then the body.
    pub fn evidence(&self, origin: &str) -> Result<Vec<String>, Refusal> {
        let tx = self.db.begin_read().map_err(store)?;
        let table = tx.open_table(EVIDENCE).map_err(store)?;
        let mut out = Vec::new();
        for item in table
            .range((origin, 0)..=(origin, u64::MAX))
            .map_err(store)?
        {
            out.push(item.map_err(store)?.1.value().to_string());
        }
        Ok(out)
    }
}

/// The checks of tlog-witness between the latest cosigned (`size`, `root`) and the
/// new checkpoint, the old size being known to match.
fn check(req: &AddCheckpoint, cp: &Checkpoint, size: u64, root: &Hash) -> Result<(), Refusal> {
    if cp.size == 0 && cp.root != empty_root() {
        return Err(Refusal::Inconsistent(
            "an empty tree's root must be the hash of nothing".into(),
        ));
    }
    if size == 0 {
        if !req.proof.is_empty() {
            return Err(Refusal::Inconsistent(
                "no proof is due from an empty tree".into(),
            ));
        }
        return Ok(());
    }
    if size == cp.size {
        if &cp.root != root || !req.proof.is_empty() {
            return Err(Refusal::Inconsistent(format!(
                "another root for size {size} than the one cosigned"
            )));
        }
        return Ok(());
    }
    if !verify_consistency(size, cp.size, root, &cp.root, &req.proof) {
        return Err(Refusal::Inconsistent(format!(
            "the consistency proof from size {size} to {} does not verify",
            cp.size
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use iryo_proto::checkpoint::AddCheckpoint;
    use iryo_proto::merkle::{consistency_proof, root, MemoryTree};

    const ORIGIN: &str = "audit.iryo.example";

    fn log_signer() -> NoteSigner {
        NoteSigner::ed25519(ORIGIN, SigningKey::from_bytes(&[1; 32])).unwrap()
    }

    fn witness(path: &Path) -> Witness {
        let signer =
            NoteSigner::cosigner("witness.example/w1", SigningKey::from_bytes(&[2; 32])).unwrap();
        let logs = vec![Log {
            origin: ORIGIN.into(),
            keys: vec![log_signer().verifier()],
        }];
        Witness::open(path, signer, logs).unwrap()
    }

    fn tree(entries: &[&str]) -> MemoryTree {
        let mut t = MemoryTree::default();
        for e in entries {
            t.push(e.as_bytes());
        }
        t
    }

    /// The request a log would send for `tree`, from `old` entries of the same tree.
    fn request(signer: &NoteSigner, tree: &MemoryTree, old: u64) -> String {
        let size = tree.size();
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: root(tree, size).unwrap(),
        };
        let proof = if old == 0 {
            vec![]
        } else {
            consistency_proof(tree, old, size).unwrap()
        };
        AddCheckpoint {
            old,
            proof,
            note: Note {
                text: cp.text(),
                signatures: vec![signer.sign(&cp.text(), 0)],
            },
        }
        .to_string()
    }

    #[test]
    fn each_extension_is_cosigned_and_the_cosignature_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir.path().join("w.redb"));
        let log = log_signer();
        let t = tree(&["a", "b", "c"]);
        let sig = w.add_checkpoint(&request(&log, &t, 0), 100).unwrap();
        let t2 = tree(&["a", "b", "c", "d", "e"]);
        w.add_checkpoint(&request(&log, &t2, 3), 101).unwrap();
        // The cosignature verifies over the checkpoint, with its time.
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size: 3,
            root: root(&t, 3).unwrap(),
        };
        let note = Note {
            text: cp.text(),
            signatures: vec![sig],
        };
        assert_eq!(note.verify(&[w.verifier()]).unwrap()[0].1, Some(100));
        // What is published carries the log's signature and the witness's.
        let hash =
            iryo_proto::merkle::to_hex(&<sha2::Sha256 as sha2::Digest>::digest(ORIGIN.as_bytes()));
        let latest = Note::parse(&w.latest(&hash).unwrap().unwrap()).unwrap();
        assert_eq!(Checkpoint::from_text(&latest.text).unwrap().size, 5);
        assert!(latest.verify(&[log.verifier()]).is_ok());
        assert!(latest.verify(&[w.verifier()]).is_ok());
    }

    #[test]
    fn a_split_view_and_a_rewritten_entry_are_refused_and_kept_as_evidence() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir.path().join("w.redb"));
        let log = log_signer();
        w.add_checkpoint(&request(&log, &tree(&["a", "b", "c", "d"]), 0), 1)
            .unwrap();
        // Another history of the same size.
        let other = request(&log, &tree(&["a", "b", "X", "d"]), 4);
        assert_eq!(w.add_checkpoint(&other, 2).unwrap_err().status(), 422);
        // A longer tree whose third entry was rewritten: no proof from the cosigned
        // size verifies against it.
        let rewritten = tree(&["a", "b", "X", "d", "e", "f"]);
        let honest = tree(&["a", "b", "c", "d", "e", "f"]);
        let size = rewritten.size();
        let cp = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: root(&rewritten, size).unwrap(),
        };
        let forged = AddCheckpoint {
            old: 4,
            proof: consistency_proof(&honest, 4, size).unwrap(),
            note: Note {
                text: cp.text(),
                signatures: vec![log.sign(&cp.text(), 0)],
            },
        };
        assert_eq!(
            w.add_checkpoint(&forged.to_string(), 3)
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(w.evidence(ORIGIN).unwrap().len(), 2);
        // The honest extension still goes through.
        w.add_checkpoint(&request(&log, &honest, 4), 4).unwrap();
    }

    #[test]
    fn the_protocol_s_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let w = witness(&dir.path().join("w.redb"));
        let log = log_signer();
        let t = tree(&["a", "b"]);
        w.add_checkpoint(&request(&log, &t, 0), 1).unwrap();
        let t3 = tree(&["a", "b", "c"]);
        // A stale old size: 409 with the latest size.
        match w.add_checkpoint(&request(&log, &t3, 1), 2) {
            Err(Refusal::Conflict { latest: 2 }) => {}
            other => panic!("{other:?}"),
        }
        match w.add_checkpoint(&request(&log, &t3, 0), 2) {
            Err(Refusal::Conflict { latest: 2 }) => {}
            other => panic!("{other:?}"),
        }
        // Signed by another key: 403; another origin: 404; old above the size: 400.
        let stranger = NoteSigner::ed25519(ORIGIN, SigningKey::from_bytes(&[7; 32])).unwrap();
        assert_eq!(
            w.add_checkpoint(&request(&stranger, &t3, 2), 3)
                .unwrap_err()
                .status(),
            403
        );
        let elsewhere = request(&log, &t3, 2).replace(ORIGIN, "other.example");
        assert_eq!(w.add_checkpoint(&elsewhere, 3).unwrap_err().status(), 404);
        let above = request(&log, &t3, 2).replacen("old 2", "old 9", 1);
        assert_eq!(w.add_checkpoint(&above, 3).unwrap_err().status(), 400);
        for garbage in ["", "old x\n\n", "hello", "old 2\n!!!\n\nx\n"] {
            assert_eq!(
                w.add_checkpoint(garbage, 3).unwrap_err().status(),
                400,
                "{garbage:?}"
            );
        }
        // None of it moved the state.
        w.add_checkpoint(&request(&log, &t3, 2), 4).unwrap();
    }

    #[test]
    fn the_state_outlives_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.redb");
        let log = log_signer();
        {
            let w = witness(&path);
            w.add_checkpoint(&request(&log, &tree(&["a", "b", "c"]), 0), 1)
                .unwrap();
        }
        let w = witness(&path);
        match w.add_checkpoint(&request(&log, &tree(&["a", "b", "c", "d"]), 0), 2) {
            Err(Refusal::Conflict { latest: 3 }) => {}
            other => panic!("{other:?}"),
        }
    }
}
