//! `audit verify`'s checks, whichever store the log is read from: the tree rebuilt
//! from the entries in order, every signed head checked (signature, and root for its
//! size) as soon as the entries reach its size, and every stored subtree hash compared
//! with the rebuilt tree.

use ed25519_dalek::VerifyingKey;
use iryo_proto::federation::TreeHead;
use iryo_proto::merkle::{self, Hash, MemoryTree, Subtrees};
use iryo_proto::signed::Signed;

/// What `audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditReport {
    pub entries: u64,
    pub heads: u64,
    pub root: String,
    pub problems: Vec<String>,
}

/// A log being checked: feed it the entries in order, then the stored subtrees.
pub struct LogCheck<'k> {
    agency: &'k VerifyingKey,
    tree: MemoryTree,
    /// Signed heads by size, ascending; those before `next` are checked.
    heads: Vec<(u64, Signed<TreeHead>)>,
    next: usize,
    problems: Vec<String>,
}

impl<'k> LogCheck<'k> {
    /// Starts with the log's signed heads, in any order.
    pub fn new(agency: &'k VerifyingKey, mut heads: Vec<(u64, Signed<TreeHead>)>) -> Self {
        heads.sort_by_key(|(size, _)| *size);
        let mut c = Self {
            agency,
            tree: MemoryTree::default(),
            heads,
            next: 0,
            problems: Vec::new(),
        };
        c.check_heads();
        c
    }

    /// The entry at `index`, as stored (its canonical bytes).
    pub fn entry(&mut self, index: u64, entry: &[u8]) {
        if index != self.tree.size() {
            self.problems.push(format!("entry {index} out of sequence"));
        }
        self.tree.push(entry);
        self.check_heads();
    }

    /// A stored hash of the perfect subtree of 2^level leaves ending at `last`; after
    /// every entry.
    pub fn subtree(&mut self, (last, level): (u64, u32), hash: &Hash) {
        let size = self.tree.size();
        // A key no append would write (beyond the log, or not where a subtree ends)
        // is a problem of its own, not a reason to look past the tree.
        let complete = level < 64 && last < size && (last + 1).is_multiple_of(1 << level);
        let recomputed = complete.then(|| {
            self.tree
                .perfect(level, ((last + 1) >> level) - 1)
                .unwrap_or_else(|e| match e {})
        });
        if recomputed.as_ref() != Some(hash) {
            self.problems.push(format!(
                "stored hash of the {}-leaf subtree ending at entry {last} does not match the entries",
                1u64 << level
            ));
        }
    }

    /// Heads whose size the entries have reached.
    fn check_heads(&mut self) {
        while let Some((size, signed)) = self.heads.get(self.next) {
            if *size > self.tree.size() {
                break;
            }
            self.next += 1;
            match signed.verify(self.agency) {
                Err(e) => self.problems.push(format!("tree head of size {size}: {e}")),
                Ok(head) => {
                    let want = merkle::root(&self.tree, *size).unwrap_or_else(|e| match e {});
                    if head.size != *size || head.root != want {
                        self.problems.push(format!(
                            "tree head of size {size} does not match the entries"
                        ));
                    }
                }
            }
        }
    }

    pub fn finish(mut self) -> AuditReport {
        if self.next < self.heads.len() {
            self.problems
                .push("a signed tree head is larger than the log".into());
        }
        let size = self.tree.size();
        let root = merkle::root(&self.tree, size).unwrap_or_else(|e| match e {});
        AuditReport {
            entries: size,
            heads: self.next as u64,
            root: merkle::to_hex(&root),
            problems: self.problems,
        }
    }
}
