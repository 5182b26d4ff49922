//! The audit log as this node has seen it witnessed. The node fetches the latest
//! checkpoint the directory had cosigned, accepts it only when the agency's key signed
//! it under the log's origin and at least `quorum` of the configured witnesses
//! cosigned it, and keeps it (node.redb). A checkpoint of the kept size with another
//! root, or one whose consistency proof from the kept one does not verify, is the
//! directory showing this node another history: the alarm is raised (logged, counted
//! in /metrics) and the node serves no records until the directory shows it an
//! extension of what it kept.
//!
//! A grant comes with the agency's signed statement of where it is logged. A grant
//! whose entry lies inside the kept checkpoint is served; one not yet inside it (the
//! usual case: grants are fetched seconds after they are logged, checkpoints are
//! cosigned every minute) is served only while the witnesses' latest cosignature and
//! the grant itself are younger than the grace. A witness that is down stops
//! refreshing the cosignature; a log that withholds the entry never covers it.

use crate::config::WitnessesConfig;
use ed25519_dalek::VerifyingKey;
use iryo_proto::checkpoint::Checkpoint;
use iryo_proto::merkle::{verify_consistency, Hash};
use iryo_proto::note::{Note, NoteError, VerifierKey, COSIGNATURE_V1, ED25519};
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

/// What this node asks of the log's checkpoints (`[witnesses]`).
#[derive(Debug, Clone)]
pub struct Policy {
    pub origin: String,
    pub log: VerifierKey,
    pub witnesses: Vec<VerifierKey>,
    pub quorum: usize,
    /// Seconds the witnesses' latest cosignature may age before records are refused.
    pub grace: u64,
    pub every: Duration,
}

impl Policy {
    /// The policy of `[witnesses]`; `None` when it names no witness.
    pub fn from_config(agency: &VerifyingKey, c: &WitnessesConfig) -> Result<Option<Self>, String> {
        if c.keys.is_empty() {
            return Ok(None);
        }
        let origin = c
            .origin
            .clone()
            .filter(|o| !o.trim().is_empty())
            .unwrap_or_else(|| iryo_proto::checkpoint::default_origin(agency));
        let log = VerifierKey::new(&origin, ED25519, *agency)
            .map_err(|e| format!("witnesses.origin {origin:?}: {e}"))?;
        let witnesses = c
            .keys
            .iter()
            .map(|k| {
                let key = VerifierKey::parse(k).map_err(|e| format!("witnesses.keys: {e}"))?;
                if key.kind != COSIGNATURE_V1 {
                    return Err(format!(
                        "witnesses.keys: {} is not a witness's cosignature key (type 0x04)",
                        key.name
                    ));
                }
                Ok(key)
            })
            .collect::<Result<Vec<_>, String>>()?;
        if c.quorum == 0 || c.quorum > witnesses.len() {
            return Err(format!(
                "witnesses.quorum is {}: give 1 to {} (the number of witnesses.keys)",
                c.quorum,
                witnesses.len()
            ));
        }
        Ok(Some(Self {
            origin,
            log,
            witnesses,
            quorum: c.quorum,
            grace: c.grace_seconds,
            every: Duration::from_secs(c.check_every_seconds.max(1)),
        }))
    }
}

/// A checkpoint accepted: its size and root, when the quorum's witnesses last
/// cosigned it (their own signed time), and the note itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub size: u64,
    pub root: Hash,
    pub cosigned_at: u64,
    pub note: String,
}

/// Why a checkpoint was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejected {
    #[error("not a checkpoint of this log: {0}")]
    Malformed(String),
    #[error("cosigned by {got} of the {need} witnesses required")]
    TooFew { got: usize, need: usize },
    #[error("older than the checkpoint kept ({got} entries, {kept} kept)")]
    Older { got: u64, kept: u64 },
    #[error("the audit log forked: {0}")]
    Fork(String),
}

/// Judges a checkpoint note (with its consistency proof from the kept one) against
/// the policy and what was kept; the new `Kept` when it is accepted.
pub fn judge(
    policy: &Policy,
    kept: Option<&Kept>,
    note: &str,
    proof: &[Hash],
) -> Result<Kept, Rejected> {
    let bad = |e: String| Rejected::Malformed(e);
    let parsed = Note::parse(note).map_err(|e| bad(e.to_string()))?;
    let cp = Checkpoint::from_text(&parsed.text).map_err(|e| bad(e.to_string()))?;
    if cp.origin != policy.origin {
        return Err(bad(format!(
            "origin {:?}, where this node expects {:?}",
            cp.origin, policy.origin
        )));
    }
    parsed
        .verify(std::slice::from_ref(&policy.log))
        .map_err(|e| bad(format!("the agency's signature: {e}")))?;
    let cosigned = match parsed.verify(&policy.witnesses) {
        Ok(found) => found,
        Err(NoteError::Unverified) => Vec::new(),
        Err(e) => return Err(bad(e.to_string())),
    };
    // Each witness's latest time, then the quorum's: the time by which `quorum`
    // witnesses had confirmed this tree.
    let mut times: Vec<(String, u64)> = Vec::new();
    for (key, time) in cosigned {
        let t = time.unwrap_or(0);
        match times.iter_mut().find(|(n, _)| *n == key.name) {
            Some(e) => e.1 = e.1.max(t),
            None => times.push((key.name.clone(), t)),
        }
    }
    if times.len() < policy.quorum {
        return Err(Rejected::TooFew {
            got: times.len(),
            need: policy.quorum,
        });
    }
    times.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
    let cosigned_at = times[policy.quorum - 1].1;
    let new = Kept {
        size: cp.size,
        root: cp.root,
        cosigned_at,
        note: note.to_string(),
    };
    let Some(k) = kept else {
        return Ok(new);
    };
    if cp.size < k.size {
        return Err(Rejected::Older {
            got: cp.size,
            kept: k.size,
        });
    }
    if cp.size == k.size {
        if cp.root != k.root {
            return Err(Rejected::Fork(format!(
                "two different roots for the tree of {} entries",
                cp.size
            )));
        }
        return Ok(new);
    }
    if !verify_consistency(k.size, cp.size, &k.root, &cp.root, proof) {
        return Err(Rejected::Fork(format!(
            "the tree of {} entries does not extend the one of {} kept",
            cp.size, k.size
        )));
    }
    Ok(new)
}

/// The node's view: the policy, the checkpoint kept and any alarm raised.
pub struct Watch {
    pub policy: Policy,
    state: Mutex<(Option<Kept>, Option<String>)>,
}

impl Watch {
    pub fn new(policy: Policy, kept: Option<Kept>) -> Self {
        Self {
            policy,
            state: Mutex::new((kept, None)),
        }
    }

    pub fn kept(&self) -> Option<Kept> {
        self.state.lock().ok().and_then(|s| s.0.clone())
    }

    pub fn alarm(&self) -> Option<String> {
        self.state.lock().ok().and_then(|s| s.1.clone())
    }

    /// Records what the last judgement said: a new checkpoint kept (which clears an
    /// alarm), or an alarm.
    pub fn set(&self, kept: Option<Kept>, alarm: Option<String>) {
        if let Ok(mut s) = self.state.lock() {
            if kept.is_some() {
                s.0 = kept;
                s.1 = None;
            }
            if alarm.is_some() {
                s.1 = alarm;
            }
        }
    }

    /// Whether records may be served at `now` (seconds since the epoch) under a grant
    /// issued at `issued_at` whose entry the agency says is at `position` in the log;
    /// the reason when not.
    pub fn gate(&self, now: i64, issued_at: i64, position: Option<u64>) -> Result<(), String> {
        let (kept, alarm) = match self.state.lock() {
            Ok(s) => (s.0.clone(), s.1.clone()),
            Err(_) => return Err("this node's view of the audit log is unavailable".into()),
        };
        if let Some(a) = alarm {
            return Err(format!(
                "the directory showed this node an audit log that does not extend the one it kept ({a}); no records are served until the agency's log is checked"
            ));
        }
        let q = self.policy.quorum;
        let Some(k) = kept else {
            return Err(format!(
                "no checkpoint of the audit log cosigned by {q} witness(es) has been seen yet"
            ));
        };
        if position.is_some_and(|i| i < k.size) {
            return Ok(());
        }
        let grace = i64::try_from(self.policy.grace).unwrap_or(i64::MAX);
        let age = now.saturating_sub(i64::try_from(k.cosigned_at).unwrap_or(i64::MAX));
        if age > grace {
            return Err(format!(
                "the audit log was last confirmed by {q} witness(es) {age} s ago, longer than the {grace} s allowed (witnesses.grace_seconds)"
            ));
        }
        let waited = now.saturating_sub(issued_at);
        if waited > grace {
            let at = position.map_or_else(
                || "at a position the agency did not state".into(),
                |i| format!("at index {i}"),
            );
            return Err(format!(
                "the grant was issued {waited} s ago and its log entry ({at}) is still not inside a checkpoint {q} witness(es) cosigned (size {}), past the {grace} s allowed (witnesses.grace_seconds)",
                k.size
            ));
        }
        Ok(())
    }
}

/// Fetches the latest witnessed checkpoint every `every` and judges it: kept when
/// accepted, the alarm raised on a fork, logged when the view changes.
pub async fn follow(node: std::sync::Arc<crate::Node>) {
    use iryo_proto::wire::{DirectoryRequest, DirectoryResponse};
    let Some(watch) = node.witnessed.as_ref() else {
        return;
    };
    let mut last_problem = String::new();
    loop {
        let from = watch.kept().map_or(0, |k| k.size);
        let answer = node
            .directory
            .request(DirectoryRequest::WitnessedCheckpoint { from })
            .await;
        let problem = match answer {
            Ok(DirectoryResponse::WitnessedCheckpoint {
                note: Some(note),
                proof,
            }) => match judge(&watch.policy, watch.kept().as_ref(), &note, &proof) {
                Ok(kept) => {
                    let changed = watch.kept().map(|k| k.size) != Some(kept.size);
                    match node.store.keep_witnessed(&kept) {
                        Ok(()) => {
                            if changed {
                                tracing::info!(size = kept.size, "witnessed checkpoint accepted");
                            }
                            watch.set(Some(kept), None);
                            String::new()
                        }
                        Err(e) => format!("the witnessed checkpoint could not be kept: {e}"),
                    }
                }
                Err(Rejected::Fork(why)) => {
                    crate::metrics::metrics().witness_alarms.inc();
                    tracing::error!(reason = %why, "ALARM: the directory showed this node another history of the audit log; records are not served");
                    watch.set(None, Some(why.clone()));
                    why
                }
                Err(e) => e.to_string(),
            },
            Ok(DirectoryResponse::WitnessedCheckpoint { note: None, .. }) => {
                "the directory has no witnessed checkpoint yet".into()
            }
            Ok(_) => "unexpected answer from the directory".into(),
            Err(e) => e.to_string(),
        };
        if !problem.is_empty() && problem != last_problem {
            tracing::warn!(problem = %problem, "witnessed checkpoint not accepted");
        }
        last_problem = problem;
        tokio::time::sleep(watch.policy.every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use iryo_proto::merkle::{consistency_proof, root, MemoryTree};
    use iryo_proto::note::NoteSigner;

    struct Log {
        agency: SigningKey,
        witnesses: Vec<NoteSigner>,
    }

    impl Log {
        fn new() -> Self {
            Self {
                agency: SigningKey::from_bytes(&[1; 32]),
                witnesses: (2..5u8)
                    .map(|i| {
                        NoteSigner::cosigner(
                            &format!("w.example/{i}"),
                            SigningKey::from_bytes(&[i; 32]),
                        )
                        .unwrap()
                    })
                    .collect(),
            }
        }

        fn policy(&self, quorum: usize) -> Policy {
            let c = WitnessesConfig {
                keys: self
                    .witnesses
                    .iter()
                    .map(|w| w.verifier().to_string())
                    .collect(),
                quorum,
                ..WitnessesConfig::default()
            };
            Policy::from_config(&self.agency.verifying_key(), &c)
                .unwrap()
                .unwrap()
        }

        /// The checkpoint of `tree`, cosigned at `time` by the first `n` witnesses.
        fn note(&self, tree: &MemoryTree, n: usize, time: u64) -> String {
            let origin = iryo_proto::checkpoint::default_origin(&self.agency.verifying_key());
            let cp = Checkpoint {
                origin: origin.clone(),
                size: tree.size(),
                root: root(tree, tree.size()).unwrap(),
            };
            let log = NoteSigner::ed25519(&origin, self.agency.clone()).unwrap();
            let mut note = Note {
                text: cp.text(),
                signatures: vec![log.sign(&cp.text(), 0)],
            };
            for w in &self.witnesses[..n] {
                note.signatures.push(w.sign(&cp.text(), time));
            }
            note.to_string()
        }
    }

    fn tree(entries: &[&str]) -> MemoryTree {
        let mut t = MemoryTree::default();
        entries.iter().for_each(|e| t.push(e.as_bytes()));
        t
    }

    #[test]
    fn a_quorum_of_witnesses_is_needed_and_their_time_counts() {
        let log = Log::new();
        let t = tree(&["a", "b"]);
        assert_eq!(
            judge(&log.policy(2), None, &log.note(&t, 1, 10), &[]),
            Err(Rejected::TooFew { got: 1, need: 2 })
        );
        let k = judge(&log.policy(2), None, &log.note(&t, 2, 10), &[]).unwrap();
        assert_eq!((k.size, k.cosigned_at), (2, 10));
    }

    #[test]
    fn a_fork_is_an_alarm_and_an_extension_is_kept() {
        let log = Log::new();
        let p = log.policy(1);
        let honest = tree(&["a", "b", "c", "d"]);
        let kept = judge(&p, None, &log.note(&tree(&["a", "b"]), 1, 1), &[]).unwrap();
        // An extension with its proof.
        let proof = consistency_proof(&honest, 2, 4).unwrap();
        let next = judge(&p, Some(&kept), &log.note(&honest, 1, 2), &proof).unwrap();
        assert_eq!(next.size, 4);
        // Another root for the same size, even cosigned: the log forked.
        let other = tree(&["a", "b", "X", "d"]);
        assert!(matches!(
            judge(&p, Some(&next), &log.note(&other, 1, 3), &[]),
            Err(Rejected::Fork(_))
        ));
        // A longer tree whose history differs, with the honest tree's proof.
        let longer = tree(&["a", "X", "c", "d", "e"]);
        let proof = consistency_proof(&tree(&["a", "b", "c", "d", "e"]), 4, 5).unwrap();
        assert!(matches!(
            judge(&p, Some(&next), &log.note(&longer, 1, 3), &proof),
            Err(Rejected::Fork(_))
        ));
        // An older checkpoint is not news, and not an alarm.
        assert!(matches!(
            judge(&p, Some(&next), &log.note(&tree(&["a"]), 1, 4), &[]),
            Err(Rejected::Older { .. })
        ));
    }

    #[test]
    fn the_gate_needs_a_fresh_confirmation_and_no_alarm() {
        let log = Log::new();
        let mut p = log.policy(1);
        p.grace = 60;
        let w = Watch::new(p.clone(), None);
        assert!(w.gate(100, 100, None).is_err());
        let k = judge(&p, None, &log.note(&tree(&["a", "b"]), 1, 100), &[]).unwrap();
        w.set(Some(k), None);
        // A grant not yet inside the checkpoint: served while the confirmation is fresh.
        assert!(w.gate(150, 150, Some(2)).is_ok());
        assert!(w.gate(150, 150, None).is_ok());
        assert!(w.gate(161, 160, Some(2)).unwrap_err().contains("61 s ago"));
        // A grant inside it: served even when the confirmation is old.
        assert!(w.gate(161, 160, Some(1)).is_ok());
        w.set(None, Some("two roots".into()));
        assert!(w
            .gate(150, 150, Some(1))
            .unwrap_err()
            .contains("does not extend"));
    }

    #[test]
    fn a_grant_the_witnesses_never_see_is_refused_after_the_grace() {
        let log = Log::new();
        let mut p = log.policy(1);
        p.grace = 60;
        let w = Watch::new(p.clone(), None);
        // Cosigned just now, but the grant's entry is beyond it and was issued long ago.
        let k = judge(&p, None, &log.note(&tree(&["a"]), 1, 200), &[]).unwrap();
        w.set(Some(k), None);
        let why = w.gate(200, 130, Some(5)).unwrap_err();
        assert!(why.contains("index 5") && why.contains("size 1"), "{why}");
        assert!(w
            .gate(200, 130, None)
            .unwrap_err()
            .contains("did not state"));
        assert!(w.gate(200, 140, Some(5)).is_ok());
    }

    #[test]
    fn a_wrong_policy_is_named() {
        let log = Log::new();
        let agency = log.agency.verifying_key();
        let c = |keys: Vec<String>, quorum| WitnessesConfig {
            keys,
            quorum,
            ..WitnessesConfig::default()
        };
        assert!(Policy::from_config(&agency, &c(vec![], 1))
            .unwrap()
            .is_none());
        let one = vec![log.witnesses[0].verifier().to_string()];
        assert!(Policy::from_config(&agency, &c(one.clone(), 2))
            .unwrap_err()
            .contains("quorum"));
        let logkey = NoteSigner::ed25519("x.example", log.agency.clone()).unwrap();
        assert!(
            Policy::from_config(&agency, &c(vec![logkey.verifier().to_string()], 1))
                .unwrap_err()
                .contains("type 0x04")
        );
    }
}
