//! The linkage DB's service history (seed 4-1). Every eligibility check appends one
//! entry, so this is the directory's hottest write. Entries are appended to a log keyed
//! by sequence, which keeps each commit to the last few pages of one B-tree; once the log
//! is long they are folded into the per-person index in one sorted run, where a page
//! takes many entries at once instead of one page write per check.

use super::tables::*;
use super::{decode, encode, Result, Store};
use crate::registry::ServiceUse;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata};

/// Log entries that trigger a fold; a reader scans at most about this many log entries
/// for one person's history.
const FOLD_AT: u64 = 200_000;
/// Entries moved per fold transaction. Larger runs put more entries on each index page;
/// smaller ones keep the pause they cause to checks (one writer at a time) short.
const FOLD_CHUNK: usize = 200_000;

pub(super) fn append(t: &mut Tables<'_>, pid: u64, u: &ServiceUse) -> Result<()> {
    let seq = t.next(SERVICE_SEQ)?;
    t.service_log.insert(seq, encode(&(pid, u))?.as_slice())?;
    Ok(())
}

pub(super) fn of_person(tx: &ReadTransaction, pid: u64) -> Result<Vec<ServiceUse>> {
    let mut out = Vec::new();
    for item in tx
        .open_table(SERVICE_USE)?
        .range((pid, 0)..=(pid, u64::MAX))?
    {
        out.push(decode(item?.1.value())?);
    }
    // Everything in the log is newer than everything folded.
    for item in tx.open_table(SERVICE_LOG)?.iter()? {
        let (who, u): (u64, ServiceUse) = decode(item?.1.value())?;
        if who == pid {
            out.push(u);
        }
    }
    Ok(out)
}

pub(super) fn count(tx: &ReadTransaction) -> Result<u64> {
    Ok(tx.open_table(SERVICE_USE)?.len()? + tx.open_table(SERVICE_LOG)?.len()?)
}

impl Store {
    pub(super) fn fold_linkage_if_due(&self) -> Result<()> {
        let due = {
            let tx = redb::ReadableDatabase::begin_read(&self.db)?;
            tx.open_table(SERVICE_LOG)?.len()? >= FOLD_AT
        };
        if due {
            self.fold_linkage(FOLD_CHUNK)?;
        }
        Ok(())
    }

    /// Moves the oldest `limit` log entries into the per-person index, in one
    /// transaction. What stays in the log is newer than anything in the index.
    pub fn fold_linkage(&self, limit: usize) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let moved = {
            let mut log = tx.open_table(SERVICE_LOG)?;
            let mut index = tx.open_table(SERVICE_USE)?;
            let mut entries = Vec::new();
            for item in log.iter()?.take(limit) {
                let (seq, v) = item?;
                let (pid, u): (u64, ServiceUse) = decode(v.value())?;
                entries.push(((pid, seq.value()), encode(&u)?));
            }
            let last = entries.last().map(|e| e.0 .1);
            entries.sort_unstable_by_key(|e| e.0);
            for (k, v) in &entries {
                index.insert(*k, v.as_slice())?;
            }
            if let Some(last) = last {
                log.retain_in(..=last, |_, _| false)?;
            }
            entries.len() as u64
        };
        tx.commit()?;
        tracing::debug!(moved, "service-use log folded into the per-person index");
        Ok(moved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issuance::Method;

    #[test]
    fn history_reads_the_same_before_and_after_a_fold() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(&dir.path().join("d.redb"), 16, Method::Fpe).unwrap();
        let use_at = |day: u32| ServiceUse {
            institution: iryo_proto::InstitutionCode::parse("0110113719").unwrap(),
            date: chrono::NaiveDate::from_ymd_opt(2026, 1, day).unwrap(),
            eligible: true,
            at: 0,
        };
        s.write(|t| {
            for day in 1..=3 {
                append(t, 7, &use_at(day))?;
                append(t, 8, &use_at(day + 10))?;
            }
            Ok(())
        })
        .unwrap();
        let before = s.reader().unwrap().service_uses(7).unwrap();
        assert_eq!(before.len(), 3);
        assert_eq!(s.fold_linkage(4).unwrap(), 4);
        assert_eq!(s.reader().unwrap().service_uses(7).unwrap(), before);
        assert_eq!(s.fold_linkage(100).unwrap(), 2);
        s.write(|t| append(t, 7, &use_at(4))).unwrap();
        let after = s.reader().unwrap().service_uses(7).unwrap();
        assert_eq!(&after[..3], &before[..]);
        assert_eq!(after[3].date.to_string(), "2026-01-04");
        assert_eq!(s.counts().unwrap().service_uses, 7);
    }
}
