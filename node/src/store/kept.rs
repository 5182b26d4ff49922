//! Answers kept for EMR retries: a fetch sent with an idempotency key keeps the Bundle
//! it returned, written in the transaction that queues its receipt, so a retry of that
//! fetch (the same key and the same request) gets the same Bundle and nothing is asked
//! or recorded again. Kept `KEPT_SECONDS`, then forgotten: they are patients' records.

use super::{put_outbox, Result, Store};
use iryo_proto::federation::Notification;
use iryo_proto::signed::Signed;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

/// Scope (`IdempotencyKey::scope`) → (kept until, the Bundle's bytes).
pub(super) const KEPT: TableDefinition<[u8; 32], (i64, &[u8])> =
    TableDefinition::new("kept_answers");
/// (kept until, scope) → (), to forget them in order.
pub(super) const KEPT_BY_EXPIRY: TableDefinition<(i64, [u8; 32]), ()> =
    TableDefinition::new("kept_answers_by_expiry");

/// How long a fetch's answer is kept for a retry: long enough for an EMR's retries,
/// short, as it holds a patient's records twice.
pub const KEPT_SECONDS: i64 = 900;

/// Kept answers forgotten at most per commit.
const FORGET_AT_ONCE: usize = 64;

/// A fetch's answer to keep with its receipt.
pub struct Keep<'a> {
    pub scope: [u8; 32],
    pub bundle: &'a [u8],
    pub now: i64,
}

impl Store {
    /// The Bundle a fetch in `scope` returned, while it is kept.
    pub fn kept_answer(&self, scope: &[u8; 32], now: i64) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read()?;
        // Made at open (`with_db`).
        let t = tx.open_table(KEPT)?;
        Ok(t.get(scope)?.and_then(|v| {
            let (until, bundle) = v.value();
            (now < until).then(|| bundle.to_vec())
        }))
    }

    /// Queues a receipt and keeps the answer it records, in one durable commit: a
    /// retry finds the answer exactly when the receipt was recorded.
    pub fn queue_keeping(&self, n: &Signed<Notification>, keep: Keep<'_>) -> Result<()> {
        let queued = (|| {
            let tx = self.db.begin_write()?;
            put_outbox(&tx, n)?;
            {
                let until = keep.now + KEPT_SECONDS;
                tx.open_table(KEPT)?
                    .insert(keep.scope, (until, keep.bundle))?;
                tx.open_table(KEPT_BY_EXPIRY)?
                    .insert((until, keep.scope), ())?;
            }
            forget_in(&tx, keep.now)?;
            tx.commit()?;
            Ok(())
        })();
        self.wrote(&queued);
        queued
    }

    /// Forgets kept answers past their time; the outbox's idle turns call it.
    /// Returns how many were forgotten.
    pub fn forget_kept(&self, now: i64) -> Result<usize> {
        let waiting = {
            let tx = self.db.begin_read()?;
            let t = tx.open_table(KEPT_BY_EXPIRY)?;
            let first = t.first()?.map(|(k, _)| k.value().0);
            first.is_some_and(|until| until <= now)
        };
        if !waiting {
            return Ok(0);
        }
        let tx = self.db.begin_write()?;
        let n = forget_in(&tx, now)?;
        tx.commit()?;
        Ok(n)
    }
}

fn forget_in(tx: &redb::WriteTransaction, now: i64) -> Result<usize> {
    let mut by_expiry = tx.open_table(KEPT_BY_EXPIRY)?;
    let old: Vec<(i64, [u8; 32])> = by_expiry
        .range(..=(now, [0xffu8; 32]))?
        .take(FORGET_AT_ONCE)
        .map(|item| item.map(|(k, _)| k.value()))
        .collect::<std::result::Result<_, _>>()?;
    let mut kept = tx.open_table(KEPT)?;
    for key in &old {
        by_expiry.remove(key)?;
        kept.remove(key.1)?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_kept_with_its_receipt_and_forgotten_in_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("node.redb")).unwrap();
        let keep = |scope, now| Keep {
            scope,
            bundle: b"{\"resourceType\":\"Bundle\"}",
            now,
        };
        s.queue_keeping(&super::super::tests::receipt(), keep([1; 32], 100))
            .unwrap();
        assert_eq!(s.outbox_len().unwrap(), 1, "the receipt is queued with it");
        let kept = s.kept_answer(&[1; 32], 100 + KEPT_SECONDS - 1).unwrap();
        assert_eq!(kept.as_deref(), Some(&b"{\"resourceType\":\"Bundle\"}"[..]));
        assert_eq!(s.kept_answer(&[2; 32], 100).unwrap(), None);
        // Past its time it is not answered, and the idle sweep removes it.
        assert_eq!(s.kept_answer(&[1; 32], 100 + KEPT_SECONDS).unwrap(), None);
        assert_eq!(s.forget_kept(100 + KEPT_SECONDS - 1).unwrap(), 0);
        assert_eq!(s.forget_kept(100 + KEPT_SECONDS).unwrap(), 1);
        let tx = s.db.begin_read().unwrap();
        assert!(tx.open_table(KEPT).unwrap().get([1; 32]).unwrap().is_none());
    }
}
