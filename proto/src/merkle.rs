//! The audit log's Merkle tree maths, RFC 6962 (and RFC 9162's verification
//! algorithms): leaf SHA-256(0x00 ‖ entry), node SHA-256(0x01 ‖ left ‖ right), tree heads,
//! inclusion and consistency proofs. Storage supplies the hashes of perfect subtrees
//! through [`Subtrees`], so proofs never rehash the whole log.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf: SHA-256(0x00 ‖ entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an inner node: SHA-256(0x01 ‖ left ‖ right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Hashes of perfect subtrees: `perfect(level, index)` covers leaves
/// `[index·2^level, (index+1)·2^level)`; level 0 is the leaf hashes.
pub trait Subtrees {
    /// Why a hash could not be read.
    type Error;
    /// The hash of the perfect subtree at `level` and `index`.
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

/// The hash of a perfect subtree from its leaf hashes, whose count is a power of two.
pub fn perfect_hash(mut level: Vec<Hash>) -> Hash {
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [l, r] => node_hash(l, r),
                // Only with a count that is not a power of two: carried up unpaired.
                _ => pair[0],
            })
            .collect();
    }
    level.first().copied().unwrap_or_else(empty_root)
}

/// The largest power of two strictly below `n` (n ≥ 2).
fn split(n: u64) -> u64 {
    1 << (n - 1).ilog2()
}

/// MTH of leaves `[start, end)`, with `start` aligned as RFC 6962's recursion keeps it.
fn range_hash<S: Subtrees>(s: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n.is_power_of_two() && start.is_multiple_of(n) {
        return s.perfect(n.trailing_zeros(), start >> n.trailing_zeros());
    }
    let k = split(n);
    Ok(node_hash(
        &range_hash(s, start, start + k)?,
        &range_hash(s, start + k, end)?,
    ))
}

/// The tree head of the first `size` leaves.
pub fn root<S: Subtrees>(s: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 {
        return Ok(empty_root());
    }
    range_hash(s, 0, size)
}

/// The audit path of leaf `index` in the tree of `size` leaves (RFC 6962 §2.1.1).
pub fn inclusion_proof<S: Subtrees>(s: &S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    path(s, index, 0, size, &mut proof)?;
    Ok(proof)
}

fn path<S: Subtrees>(
    s: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split(n);
    if m < k {
        path(s, m, start, start + k, out)?;
        out.push(range_hash(s, start + k, end)?);
    } else {
        path(s, m - k, start + k, end, out)?;
        out.push(range_hash(s, start, start + k)?);
    }
    Ok(())
}

/// The proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
/// (RFC 6962 §2.1.2).
pub fn consistency_proof<S: Subtrees>(s: &S, old: u64, new: u64) -> Result<Vec<Hash>, S::Error> {
    let mut proof = Vec::new();
    if old > 0 && old < new {
        subproof(s, old, 0, new, true, &mut proof)?;
    }
    Ok(proof)
}

fn subproof<S: Subtrees>(
    s: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(range_hash(s, start, end)?);
        }
        return Ok(());
    }
    let k = split(n);
    if m <= k {
        subproof(s, m, start, start + k, whole, out)?;
        out.push(range_hash(s, start + k, end)?);
    } else {
        subproof(s, m - k, start + k, end, false, out)?;
        out.push(range_hash(s, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.3.2: does `proof` show `leaf` at `index` in the tree with `root`?
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fn_, mut sn) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && &r == root
}

/// RFC 9162 §2.1.4.2: does `proof` show the tree of `old` leaves with `old_root` to be
/// a prefix of the tree of `new` leaves with `new_root`?
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        return proof.is_empty();
    }
    let mut proof = proof.to_vec();
    if old.is_power_of_two() {
        proof.insert(0, *old_root);
    }
    let Some((first, rest)) = proof.split_first() else {
        return false;
    };
    let (mut fn_, mut sn) = (old - 1, new - 1);
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if sn == 0 {
            return false;
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    sn == 0 && &fr == old_root && &sr == new_root
}

/// The right edge of a log of `size` leaves: the perfect subtrees its leaves divide
/// into, largest first, one for each bit set in `size` (a compact range). Appending
/// needs nothing else, and neither does the root: a store loads these once and then
/// appends a whole batch in memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The subtrees, as (level, index), that a log of `size` leaves divides into,
    /// largest first.
    pub fn parts(size: u64) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        let mut start = 0u64;
        for level in (0..64u32).rev() {
            if size & (1 << level) != 0 {
                out.push((level, start >> level));
                start += 1 << level;
            }
        }
        out
    }

    /// The frontier of the first `size` leaves of `s`.
    pub fn load<S: Subtrees>(s: &S, size: u64) -> Result<Self, S::Error> {
        let hashes = Self::parts(size)
            .into_iter()
            .map(|(level, index)| s.perfect(level, index))
            .collect::<Result<_, _>>()?;
        Ok(Self { size, hashes })
    }

    /// How many leaves the log has.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf by its hash. Returns every perfect subtree the leaf completes,
    /// as (level, index, hash), smallest first: level 0 is the leaf itself.
    pub fn push(&mut self, leaf: Hash) -> Vec<(u32, u64, Hash)> {
        let (mut level, mut index, mut hash) = (0u32, self.size, leaf);
        let mut completed = vec![(0, index, leaf)];
        // The bits set at the bottom of the index are the smallest parts, last in the
        // list: each pairs with the new subtree into one twice its size.
        while index & 1 == 1 {
            let Some(left) = self.hashes.pop() else { break };
            hash = node_hash(&left, &hash);
            level += 1;
            index >>= 1;
            completed.push((level, index, hash));
        }
        self.hashes.push(hash);
        self.size += 1;
        completed
    }

    /// The tree head's root: RFC 6962 splits at the largest power of two below the
    /// size, which is the first part, so the root folds the parts from the right.
    pub fn root(&self) -> Hash {
        let mut parts = self.hashes.iter().rev();
        match parts.next() {
            None => empty_root(),
            Some(last) => parts.fold(*last, |acc, h| node_hash(h, &acc)),
        }
    }
}

/// The perfect subtrees a computation asks for, without their hashes: RFC 6962's
/// recursion asks by position alone, so a store can learn what a root or a proof
/// needs, read it all at once, and then compute (`Prefetched`).
#[derive(Debug, Default)]
pub struct Asked(std::cell::RefCell<Vec<(u32, u64)>>);

impl Asked {
    /// What `f` asks for when run against this recorder (with zero hashes).
    pub fn by<T>(f: impl FnOnce(&Asked) -> T) -> Vec<(u32, u64)> {
        let asked = Asked::default();
        let _ = f(&asked);
        let mut out = asked.0.into_inner();
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl Subtrees for Asked {
    type Error = std::convert::Infallible;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        self.0.borrow_mut().push((level, index));
        Ok([0; 32])
    }
}

/// Perfect subtree hashes read ahead, by (level, index).
#[derive(Debug, Default)]
pub struct Prefetched(pub std::collections::HashMap<(u32, u64), Hash>);

/// A subtree a computation asked for that was not read ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the hash of the subtree at level {0}, index {1} was not read")]
pub struct NotRead(pub u32, pub u64);

impl Subtrees for Prefetched {
    type Error = NotRead;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, NotRead> {
        self.0
            .get(&(level, index))
            .copied()
            .ok_or(NotRead(level, index))
    }
}

/// A tree held in memory, for tests and for verifiers that rebuild a log.
#[derive(Debug, Default, Clone)]
pub struct MemoryTree {
    /// levels[l][i] = perfect(l, i)
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// Appends an entry.
    pub fn push(&mut self, entry: &[u8]) {
        self.push_hash(leaf_hash(entry));
    }

    /// Appends a leaf by its hash.
    pub fn push_hash(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        // Each time a level gains its second sibling, the parent is complete.
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// The number of entries.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }
}

impl Subtrees for MemoryTree {
    type Error = std::convert::Infallible;
    fn perfect(&self, level: u32, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[level as usize][index as usize])
    }
}

/// Bytes as lower-case hex.
pub fn to_hex(h: &[u8]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// A hash from 64 hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The leaves and tree heads every RFC 6962 implementation is checked against.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference() -> MemoryTree {
        let mut t = MemoryTree::default();
        LEAVES.iter().for_each(|l| t.push(l));
        t
    }

    fn hexes(v: &[Hash]) -> Vec<String> {
        v.iter().map(|h| to_hex(h)).collect()
    }

    #[test]
    fn tree_heads_match_rfc6962() {
        let t = reference();
        assert_eq!(
            to_hex(&root(&t, 0).unwrap()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        for (n, want) in ROOTS.iter().enumerate() {
            assert_eq!(
                to_hex(&root(&t, n as u64 + 1).unwrap()),
                *want,
                "size {}",
                n + 1
            );
        }
    }

    #[test]
    fn inclusion_proofs_match_rfc6962() {
        let t = reference();
        assert_eq!(
            hexes(&inclusion_proof(&t, 0, 8).unwrap()),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"
            ]
        );
        assert_eq!(
            hexes(&inclusion_proof(&t, 5, 8).unwrap()),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
        );
    }

    #[test]
    fn consistency_proofs_match_rfc6962() {
        let t = reference();
        assert_eq!(
            hexes(&consistency_proof(&t, 2, 5).unwrap()),
            [
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
            ]
        );
        assert_eq!(
            hexes(&consistency_proof(&t, 6, 8).unwrap()),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"
            ]
        );
    }

    proptest! {
        #[test]
        fn perfect_hash_is_the_tree_s_subtree(level in 0u32..6, index in 0u64..5) {
            let mut t = MemoryTree::default();
            for i in 0..(index + 1) << level {
                t.push(&i.to_be_bytes());
            }
            let first = index << level;
            let leaves = (first..first + (1 << level)).map(|i| leaf_hash(&i.to_be_bytes())).collect();
            prop_assert_eq!(perfect_hash(leaves), t.perfect(level, index).unwrap());
        }

        #[test]
        fn every_proof_verifies_and_a_wrong_one_does_not(size in 1u64..70, a in 0u64..70, b in 0u64..70) {
            let mut t = MemoryTree::default();
            for i in 0..size {
                t.push(&i.to_be_bytes());
            }
            let r = root(&t, size).unwrap();
            let index = a % size;
            let leaf = leaf_hash(&index.to_be_bytes());
            let proof = inclusion_proof(&t, index, size).unwrap();
            prop_assert!(verify_inclusion(&leaf, index, size, &proof, &r));
            let other = leaf_hash(b"not in the log");
            prop_assert!(!verify_inclusion(&other, index, size, &proof, &r));
            if size > 1 {
                prop_assert!(!verify_inclusion(&leaf, (index + 1) % size, size, &proof, &r));
            }
            let old = 1 + b % size;
            let old_root = root(&t, old).unwrap();
            let c = consistency_proof(&t, old, size).unwrap();
            prop_assert!(verify_consistency(old, size, &old_root, &r, &c));
            if old < size {
                prop_assert!(!verify_consistency(old, size, &leaf_hash(b"x"), &r, &c));
            }
        }

        #[test]
        fn a_frontier_appends_as_the_whole_tree_does(start in 0u64..70, more in 0u64..70) {
            let mut t = MemoryTree::default();
            for i in 0..start {
                t.push(&i.to_be_bytes());
            }
            let mut f = Frontier::load(&t, start).unwrap();
            prop_assert_eq!(f.root(), root(&t, start).unwrap());
            for i in start..start + more {
                let completed = f.push(leaf_hash(&i.to_be_bytes()));
                t.push(&i.to_be_bytes());
                for (level, index, hash) in completed {
                    prop_assert_eq!(hash, t.perfect(level, index).unwrap());
                }
                prop_assert_eq!(f.root(), root(&t, i + 1).unwrap());
            }
            prop_assert_eq!(f.size(), start + more);
        }

        #[test]
        fn what_a_proof_asks_for_is_all_it_needs(size in 1u64..70, a in 0u64..70, b in 0u64..70) {
            let mut t = MemoryTree::default();
            for i in 0..size {
                t.push(&i.to_be_bytes());
            }
            let (index, old) = (a % size, 1 + b % size);
            let read = |asked: Vec<(u32, u64)>| {
                Prefetched(asked.into_iter().map(|(l, i)| ((l, i), t.perfect(l, i).unwrap())).collect())
            };
            let p = read(Asked::by(|s| inclusion_proof(s, index, size)));
            prop_assert_eq!(inclusion_proof(&p, index, size).unwrap(), inclusion_proof(&t, index, size).unwrap());
            let p = read(Asked::by(|s| consistency_proof(s, old, size)));
            prop_assert_eq!(consistency_proof(&p, old, size).unwrap(), consistency_proof(&t, old, size).unwrap());
            let p = read(Asked::by(|s| root(s, size)));
            prop_assert_eq!(root(&p, size).unwrap(), root(&t, size).unwrap());
            prop_assert_eq!(Asked::by(|s| root(s, size)), Frontier::parts(size).into_iter().collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>());
        }
    }
}
