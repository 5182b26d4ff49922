//! The linkage DB's service history (proposal §4-1). Every eligibility check appends one entry
//! to a log keyed by sequence in the main database; `folding` derives the per-person
//! history from it.

use super::folding::{about, SERVICE_USE};
use super::tables::*;
use super::{decode, Result, Store};
use crate::registry::ServiceUse;
use redb::{ReadTransaction, ReadableTableMetadata};

pub(super) fn append(t: &mut Tables<'_>, pid: u64, u: &ServiceUse) -> Result<()> {
    let seq = t.next(SERVICE_SEQ)?;
    t.service_log
        .open_mut()?
        .insert(seq, super::encode(&(pid, u))?.as_slice())?;
    Ok(())
}

pub(super) fn of_person(
    linkage: &ReadTransaction,
    main: &ReadTransaction,
    pid: u64,
) -> Result<Vec<ServiceUse>> {
    about(linkage, main, &SERVICE_USE, pid)?
        .iter()
        .map(|(_, v)| decode(v))
        .collect()
}

pub(super) fn count(main: &ReadTransaction) -> Result<u64> {
    Ok(main.open_table(SERVICE_LOG)?.len()?)
}

impl Store {
    /// Copies up to `limit` service-use entries into the per-person index.
    pub fn fold_linkage(&self, limit: usize) -> Result<u64> {
        self.fold(&SERVICE_USE, limit)
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
        assert_eq!(s.unfolded_linkage().unwrap(), 6);
        assert_eq!(s.fold_linkage(4).unwrap(), 4);
        assert_eq!(s.reader().unwrap().service_uses(7).unwrap(), before);
        assert_eq!(s.fold_linkage(100).unwrap(), 2);
        assert_eq!(s.unfolded_linkage().unwrap(), 0);
        s.write(|t| append(t, 7, &use_at(4))).unwrap();
        let after = s.reader().unwrap().service_uses(7).unwrap();
        assert_eq!(&after[..3], &before[..]);
        assert_eq!(after[3].date.to_string(), "2026-01-04");
        assert_eq!(s.counts().unwrap().service_uses, 7);
        drop(s);
        let reopened = Store::open(&dir.path().join("d.redb"), 16).unwrap();
        assert_eq!(reopened.reader().unwrap().service_uses(7).unwrap(), after);
    }
}
