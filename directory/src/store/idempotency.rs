//! Idempotency keys (docs/PROTOCOL.md, idempotency): a check or a grant asked again
//! with the same key and the same request, by the same institution, is answered as
//! the first time and recorded once. What was answered is kept a day under the key's
//! scope (`IdempotencyKey::scope`), written in the transaction that records the
//! request, and looked up in the writer, so two copies of one request in one group
//! commit are recorded once too.
//!
//! Keyed checks take the main writer rather than an intake file: a retry may reach
//! either intake file, and only the main writer sees every earlier answer.

use super::registry_tx::RegistryTx;
use super::tables::Tables;
use super::{decode, encode, Result};
use crate::registry::eligibility::{CheckAnswer, CheckRequest};
use crate::registry::Timestamp;
use iryo_proto::federation::Grant;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// Scope → `Entry`: what a keyed request was answered.
pub(super) const KEPT: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("idempotency");
/// (when kept, scope) → (), to forget entries in the order they were kept.
pub(super) const KEPT_BY_TIME: TableDefinition<(i64, [u8; 32]), ()> =
    TableDefinition::new("idempotency_by_time");

/// How long an answer is kept for a retry: a day, as EMRs retry within minutes.
pub(crate) const KEPT_SECONDS: i64 = 86_400;

/// Entries one commit forgets at most, to keep every commit small.
pub(crate) const FORGET_AT_ONCE: usize = 64;

/// A grant is handed out again only while this much of it is left; a retry after that
/// gets a new grant, which the source still has time to accept.
const GRANT_LEFT_SECONDS: i64 = 60;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Kept {
    Check(CheckAnswer),
    /// The grant issued; a retry gets it again while it has time left. Kept entries
    /// written before grant positions were kept; read, never written.
    Grant(Box<Grant>),
    /// The grant issued and the index of its audit entry.
    LoggedGrant(Box<Grant>, u64),
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    at: Timestamp,
    kept: Kept,
}

/// The scope of a keyed check: its key, the institution and the check as sent.
pub(super) fn check_scope(req: &CheckRequest) -> Result<Option<[u8; 32]>> {
    let Some(key) = &req.idempotency_key else {
        return Ok(None);
    };
    let bare = CheckRequest {
        idempotency_key: None,
        ..req.clone()
    };
    Ok(Some(key.scope(
        "check",
        req.institution.as_u64(),
        &encode(&bare)?,
    )))
}

/// The scope of a keyed grant request.
pub(super) fn grant_scope(
    requester: iryo_proto::InstitutionCode,
    query: &super::federation::GrantQuery,
) -> Result<Option<[u8; 32]>> {
    let Some(key) = &query.idempotency_key else {
        return Ok(None);
    };
    let ask = (
        query.medical_id,
        query.source,
        query.purpose,
        query.reason.as_deref(),
    );
    Ok(Some(key.scope("grant", requester.as_u64(), &encode(&ask)?)))
}

/// What a request in `scope` was answered, if it was within `KEPT_SECONDS`.
fn kept(
    t: &mut (impl RegistryTx + ?Sized),
    scope: &[u8; 32],
    now: Timestamp,
) -> Result<Option<Kept>> {
    match t.kept_entry(scope)? {
        Some(v) => {
            let e: Entry = decode(&v)?;
            Ok((now - e.at < KEPT_SECONDS).then_some(e.kept))
        }
        None => Ok(None),
    }
}

/// The answer a check in `scope` got before.
pub(super) fn kept_check(
    t: &mut (impl RegistryTx + ?Sized),
    scope: &[u8; 32],
    now: Timestamp,
) -> Result<Option<CheckAnswer>> {
    Ok(match kept(t, scope, now)? {
        Some(Kept::Check(a)) => Some(a),
        _ => None,
    })
}

/// The grant a request in `scope` got before, while it has time left.
pub(super) fn kept_grant(
    t: &mut (impl RegistryTx + ?Sized),
    scope: &[u8; 32],
    now: Timestamp,
) -> Result<Option<super::federation::IssuedGrant>> {
    let (grant, index) = match kept(t, scope, now)? {
        Some(Kept::Grant(g)) => (*g, None),
        Some(Kept::LoggedGrant(g, index)) => (*g, Some(index)),
        _ => return Ok(None),
    };
    Ok((grant.expires_at - now >= GRANT_LEFT_SECONDS)
        .then_some(super::federation::IssuedGrant { grant, index }))
}

/// Keeps what a request in `scope` was answered; the store forgets entries older
/// than `KEPT_SECONDS` a few at a time.
pub(super) fn keep(
    t: &mut (impl RegistryTx + ?Sized),
    scope: [u8; 32],
    kept: Kept,
    at: Timestamp,
) -> Result<()> {
    t.keep_entry(scope, at, &encode(&Entry { at, kept })?)
}

impl Tables<'_> {
    pub(super) fn kept_raw(&self, scope: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .idempotency
            .open()?
            .get(scope)?
            .map(|v| v.value().to_vec()))
    }

    pub(super) fn keep_raw(&mut self, scope: [u8; 32], at: Timestamp, entry: &[u8]) -> Result<()> {
        let before = self
            .idempotency
            .open_mut()?
            .insert(scope, entry)?
            .map(|old| decode::<Entry>(old.value()))
            .transpose()?;
        let by_time = self.idempotency_by_time.open_mut()?;
        if let Some(old) = before {
            by_time.remove((old.at, scope))?;
        }
        by_time.insert((at, scope), ())?;
        let old: Vec<(i64, [u8; 32])> = by_time
            .range(..(at - KEPT_SECONDS, [0u8; 32]))?
            .take(FORGET_AT_ONCE)
            .map(|item| item.map(|(k, _)| k.value()))
            .collect::<std::result::Result<_, _>>()?;
        for key in &old {
            by_time.remove(key)?;
        }
        let kept = self.idempotency.open_mut()?;
        for (_, scope) in old {
            kept.remove(scope)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{one_person_check, store};
    use crate::store::Job;

    fn keyed(req: &CheckRequest, key: &str) -> CheckRequest {
        CheckRequest {
            idempotency_key: Some(iryo_proto::IdempotencyKey::parse(key).unwrap()),
            ..req.clone()
        }
    }

    fn logged(s: &crate::store::Store) -> (u64, u64) {
        (s.audit_size().unwrap(), s.counts().unwrap().service_uses)
    }

    #[test]
    fn a_retried_check_is_answered_again_and_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let req = one_person_check(&s);
        let before = logged(&s);
        let a = keyed(&req, "visit-1");
        let first = s.check(&a, 100).unwrap();
        assert_eq!(logged(&s), (before.0 + 1, before.1 + 1));
        // A retry, and two copies in one group commit: nothing more is recorded.
        assert_eq!(s.check(&a, 160).unwrap(), first);
        assert_eq!(
            s.check_batch(&[a.clone(), a.clone()], 170).unwrap(),
            [first.clone(), first.clone()]
        );
        assert_eq!(logged(&s), (before.0 + 1, before.1 + 1));
        // Another key, or the same key with another check, is a new check.
        s.check(&keyed(&req, "visit-2"), 180).unwrap();
        let other_day = CheckRequest {
            date: req.date.pred_opt().unwrap(),
            ..a.clone()
        };
        s.check(&other_day, 190).unwrap();
        // Without a key every check is recorded, as before.
        s.check(&req, 200).unwrap();
        assert_eq!(logged(&s), (before.0 + 4, before.1 + 4));
        // A day later the key is forgotten: the same check is recorded again.
        s.check(&a, 100 + KEPT_SECONDS).unwrap();
        assert_eq!(logged(&s), (before.0 + 5, before.1 + 5));
    }

    #[test]
    fn keyed_checks_take_the_main_writer_and_old_keys_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(&dir);
        let req = one_person_check(&s);
        assert!(crate::store::intake::fits(&Job::Check(req.clone())));
        assert!(!crate::store::intake::fits(&Job::Check(keyed(&req, "k"))));
        for i in 0..10 {
            s.check(&keyed(&req, &format!("k{i}")), i).unwrap();
        }
        let kept = |s: &crate::store::Store| {
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let tx = s.db.begin_read().unwrap();
            let n = tx.open_table(KEPT).unwrap().len().unwrap();
            assert_eq!(n, tx.open_table(KEPT_BY_TIME).unwrap().len().unwrap());
            n
        };
        assert_eq!(kept(&s), 10);
        s.check(&keyed(&req, "later"), KEPT_SECONDS + 5).unwrap();
        // The five kept more than a day before go; the other five and the new one stay.
        assert_eq!(kept(&s), 6);
    }
}
