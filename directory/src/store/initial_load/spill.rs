//! The initial load's spill file: every row gathered, in application order, with what
//! it writes if it is fresh already encoded.
//!
//! A person's record and a card's standing both begin with the pid (postcard writes
//! fields in order, a `u64` as a varint), and nothing after it depends on the pid. So
//! while the files are read, each row's new person is encoded with pid 0 (one byte,
//! left out), its card's standing likewise; once the load gives a fresh row its pid,
//! the record is the pid's varint followed by those bytes. Applying a fresh row is
//! then copying bytes rather than decoding a row and encoding a person, and the
//! encoding happens beside the reader and FF1 threads instead of after them.

use super::Repeated;
use crate::registry::eligibility::CardStanding;
use crate::registry::merge::new_person;
use crate::registry::{EnrollmentRow, Timestamp};
use iryo_proto::MedicalId;
use std::fs::File;
use std::io::{self, BufReader, Read};

/// The fixed part of a spilled row: file (4), candidate (8), My Number (8), then the
/// lengths of the row, the card key, the record and the standing (4 each).
const HEAD: usize = 36;

fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(value).map_err(io::Error::other)
}

fn len(bytes: &[u8]) -> io::Result<[u8; 4]> {
    Ok(u32::try_from(bytes.len())
        .map_err(io::Error::other)?
        .to_le_bytes())
}

/// Appends the spilled form of `row` to `out`.
pub(super) fn put(
    out: &mut Vec<u8>,
    file: u32,
    candidate: MedicalId,
    row: &EnrollmentRow,
    at: Timestamp,
) -> io::Result<()> {
    let body = encode(row)?;
    let key = row.card.key();
    let person = new_person(0, row, candidate, 0, at);
    let coverage = person
        .coverages
        .first()
        .ok_or_else(|| io::Error::other("a new person without a coverage"))?;
    let record = encode(&person)?;
    let standing = encode(&CardStanding::of(&person, coverage))?;
    let (Some((0, record)), Some((0, standing))) = (record.split_first(), standing.split_first())
    else {
        return Err(io::Error::other("pid 0 not encoded as one zero byte"));
    };
    out.extend_from_slice(&file.to_le_bytes());
    out.extend_from_slice(&candidate.as_u64().to_le_bytes());
    out.extend_from_slice(&row.my_number.as_u64().to_le_bytes());
    for part in [&body[..], &key, record, standing] {
        out.extend_from_slice(&len(part)?);
    }
    for part in [&body[..], &key, record, standing] {
        out.extend_from_slice(part);
    }
    Ok(())
}

/// A row that takes the ordinary rules, read back.
pub(crate) struct LoadRow {
    pub rank: u64,
    pub file: usize,
    pub candidate: MedicalId,
    pub row: EnrollmentRow,
}

/// A fresh row, read back: its keys, and its record and standing without their pid.
pub(crate) struct FreshRow {
    pub rank: u64,
    pub file: usize,
    pub candidate: MedicalId,
    pub my_number: u64,
    pub card_key: Vec<u8>,
    record: Vec<u8>,
    standing: Vec<u8>,
}

impl FreshRow {
    /// The new person's record, once its pid is known: what `encode` of the person
    /// `new_person` makes gives.
    pub(crate) fn record(&self, pid: u64) -> Vec<u8> {
        with_pid(pid, &self.record)
    }

    /// The card's standing, likewise.
    pub(crate) fn standing(&self, pid: u64) -> Vec<u8> {
        with_pid(pid, &self.standing)
    }
}

/// `pid` as postcard writes a `u64` (a varint), then `rest`.
fn with_pid(mut pid: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + rest.len());
    while pid >= 0x80 {
        out.push((pid as u8) | 0x80);
        pid >>= 7;
    }
    out.push(pid as u8);
    out.extend_from_slice(rest);
    out
}

/// What the next spilled row is.
pub(crate) enum Next {
    Fresh(FreshRow),
    Ruled(LoadRow),
    /// A fresh row passed over.
    Skipped {
        rank: u64,
        file: usize,
    },
}

/// The spill file read back in application order.
pub(crate) struct Spilled {
    reader: BufReader<File>,
    next: u64,
    rows: u64,
}

impl Spilled {
    pub(super) fn new(file: File, rows: u64) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 20, file),
            next: 0,
            rows,
        }
    }

    /// The next row, or `None` after the last: a fresh one decoded only if
    /// `fresh_too`, else passed over.
    pub(crate) fn next(
        &mut self,
        repeated: &Repeated,
        fresh_too: bool,
    ) -> io::Result<Option<Next>> {
        if self.next == self.rows {
            return Ok(None);
        }
        let rank = self.next;
        self.next += 1;
        let mut head = [0u8; HEAD];
        self.reader.read_exact(&mut head)?;
        let word = |at: usize| u64::from_le_bytes(array(&head[at..]));
        let size = |at: usize| u32::from_le_bytes(array(&head[at..])) as usize;
        let file = u32::from_le_bytes(array(&head[..])) as usize;
        let candidate = MedicalId::from_u64(word(4)).map_err(io::Error::other)?;
        let lens = [size(20), size(24), size(28), size(32)];
        let rest = lens[1] + lens[2] + lens[3];
        if !repeated.fresh(rank) {
            let row = postcard::from_bytes(&self.take(lens[0])?).map_err(io::Error::other)?;
            self.skip(rest)?;
            return Ok(Some(Next::Ruled(LoadRow {
                rank,
                file,
                candidate,
                row,
            })));
        }
        if !fresh_too {
            self.skip(lens[0] + rest)?;
            return Ok(Some(Next::Skipped { rank, file }));
        }
        self.skip(lens[0])?;
        Ok(Some(Next::Fresh(FreshRow {
            rank,
            file,
            candidate,
            my_number: word(12),
            card_key: self.take(lens[1])?,
            record: self.take(lens[2])?,
            standing: self.take(lens[3])?,
        })))
    }

    fn take(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut bytes = vec![0u8; n];
        self.reader.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Passes over `n` bytes; within the buffer, without a system call.
    fn skip(&mut self, n: usize) -> io::Result<()> {
        self.reader
            .seek_relative(i64::try_from(n).map_err(io::Error::other)?)
    }
}

/// The first bytes of `s` as an array; zeros past its end (the head is read whole).
fn array<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    let n = N.min(s.len());
    a[..n].copy_from_slice(&s[..n]);
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_pid_goes_before_the_rest_as_postcard_writes_it(pid in any::<u64>(), rest in prop::collection::vec(any::<u8>(), 0..8)) {
            let mut expected = postcard::to_allocvec(&pid).unwrap();
            expected.extend_from_slice(&rest);
            prop_assert_eq!(with_pid(pid, &rest), expected);
        }
    }
}
