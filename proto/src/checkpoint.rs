//! The audit log's tree heads as C2SP checkpoints (c2sp.org/tlog-checkpoint): a note
//! whose text is the log's origin, its size and its root, signed by the log; and the
//! body of a witness's `add-checkpoint` request (c2sp.org/tlog-witness): the size the
//! witness last cosigned, a consistency proof from it, then the checkpoint.

use crate::merkle::Hash;
use crate::note::{Note, NoteError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::fmt;

/// Why a checkpoint or a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant's message says what it is.
pub enum CheckpointError {
    #[error("a checkpoint's text is an origin, a size and a root hash, one a line")]
    Shape,
    #[error("a checkpoint's origin must be non-empty")]
    Origin,
    #[error("tree size {0:?} is not a decimal number without leading zeroes")]
    Size(String),
    #[error("root hash {0:?} is not 32 bytes of base64")]
    Root(String),
    #[error("an add-checkpoint request begins `old SIZE`, then up to 63 proof hashes, then a blank line")]
    Request,
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// The origin of the audit log's checkpoints when none is configured: `iryo-audit/`
/// and the first 16 hex digits of the agency's root key, so that two deployments never
/// share one by accident.
pub fn default_origin(agency: &ed25519_dalek::VerifyingKey) -> String {
    format!(
        "iryo-audit/{}",
        crate::merkle::to_hex(&agency.as_bytes()[..8])
    )
}

/// The most consistency proof lines a request may carry (tlog-witness).
pub const MAX_PROOF_LINES: usize = 63;

/// A log's tree head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Who keeps the log: its name, e.g. `audit.iryo.example`.
    pub origin: String,
    /// Leaves in the tree.
    pub size: u64,
    /// The RFC 6962 root at that size.
    pub root: Hash,
}

fn size(s: &str) -> Result<u64, CheckpointError> {
    let bad = || CheckpointError::Size(s.chars().take(30).collect());
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

fn hash(s: &str) -> Option<Hash> {
    B64.decode(s).ok()?.try_into().ok()
}

impl Checkpoint {
    /// Reads a checkpoint from a note's text. Extension lines are refused: this log
    /// writes none, and no witness vouches for them.
    pub fn from_text(text: &str) -> Result<Self, CheckpointError> {
        let body = text.strip_suffix('\n').ok_or(CheckpointError::Shape)?;
        let mut lines = body.split('\n');
        let (Some(origin), Some(n), Some(root), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err(CheckpointError::Shape);
        };
        if origin.is_empty() {
            return Err(CheckpointError::Origin);
        }
        Ok(Self {
            origin: origin.to_string(),
            size: size(n)?,
            root: hash(root)
                .ok_or_else(|| CheckpointError::Root(root.chars().take(60).collect()))?,
        })
    }

    /// The note text: three lines, each ending in a newline.
    pub fn text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// The body of an `add-checkpoint` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddCheckpoint {
    /// The size of the checkpoint the witness last cosigned for this log, as the log
    /// believes it (0 for none).
    pub old: u64,
    /// A consistency proof from `old` to the checkpoint's size.
    pub proof: Vec<Hash>,
    /// The signed checkpoint.
    pub note: Note,
}

impl AddCheckpoint {
    /// Reads a request body.
    pub fn parse(body: &str) -> Result<Self, CheckpointError> {
        let (head, note) = body.split_once("\n\n").ok_or(CheckpointError::Request)?;
        let mut lines = head.split('\n');
        let old = lines
            .next()
            .and_then(|l| l.strip_prefix("old "))
            .ok_or(CheckpointError::Request)?;
        let old = size(old).map_err(|_| CheckpointError::Request)?;
        let proof = lines
            .map(|l| hash(l).ok_or(CheckpointError::Request))
            .collect::<Result<Vec<_>, _>>()?;
        if proof.len() > MAX_PROOF_LINES {
            return Err(CheckpointError::Request);
        }
        Ok(Self {
            old,
            proof,
            note: Note::parse(note)?,
        })
    }
}

impl fmt::Display for AddCheckpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "old {}", self.old)?;
        for h in &self.proof {
            writeln!(f, "{}", B64.encode(h))?;
        }
        write!(f, "\n{}", self.note)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::note::NoteSigner;
    use ed25519_dalek::SigningKey;
    use proptest::prelude::*;

    #[test]
    fn the_specification_example_reads() {
        let text =
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let c = Checkpoint::from_text(text).unwrap();
        assert_eq!(c.origin, "example.com/behind-the-sofa");
        assert_eq!(c.size, 20_852_163);
        assert_eq!(c.text(), text);
    }

    #[test]
    fn malformed_checkpoints_are_refused() {
        for bad in [
            "",
            "o\n1\n",
            "o\n01\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n1\nCsUY\n",
            "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
            "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nextension\n",
            "o\n99999999999999999999\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        ] {
            assert!(Checkpoint::from_text(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_request_reads_back_as_written() {
        let log =
            NoteSigner::ed25519("audit.iryo.example", SigningKey::from_bytes(&[1; 32])).unwrap();
        let c = Checkpoint {
            origin: "audit.iryo.example".into(),
            size: 7,
            root: [9; 32],
        };
        let req = AddCheckpoint {
            old: 3,
            proof: vec![[1; 32], [2; 32]],
            note: Note {
                text: c.text(),
                signatures: vec![log.sign(&c.text(), 0)],
            },
        };
        let text = req.to_string();
        assert!(text.starts_with("old 3\nAQEB"));
        assert_eq!(AddCheckpoint::parse(&text).unwrap(), req);
        let none = AddCheckpoint {
            old: 0,
            proof: vec![],
            ..req
        };
        assert_eq!(AddCheckpoint::parse(&none.to_string()).unwrap(), none);
    }

    proptest! {
        #[test]
        fn arbitrary_requests_never_panic(s in "\\PC{0,400}") {
            let _ = AddCheckpoint::parse(&s);
            let _ = Checkpoint::from_text(&s);
        }
    }
}
