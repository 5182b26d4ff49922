//! The check intake on PostgreSQL (`check_intake`, migration 0003): where a check that
//! appends to the logs and changes nothing else becomes durable before its answer,
//! without the audit log's lock. Whoever holds that lock next moves the rows into the
//! logs and deletes them in the same transaction, so each is moved exactly once,
//! whichever process answered it and whichever moves it.

use super::{db, PgTx};
use crate::store::{decode, encode, Result};

pub(crate) const INTAKE_WRITE: &str = "INSERT INTO check_intake (pid, entries)
     SELECT * FROM unnest($1::bigint[], $2::bytea[])";

/// The oldest `$1` rows, taken out: the caller holds the append lock, so no other
/// mover takes the same rows, and rows committed meanwhile wait for the next move.
const INTAKE_TAKE: &str = "DELETE FROM check_intake WHERE seq IN
     (SELECT seq FROM check_intake ORDER BY seq LIMIT $1)
     RETURNING seq, entries";

impl PgTx<'_> {
    /// Keeps a check's entries for the intake, written at commit.
    pub(crate) fn keep_for_intake(
        &mut self,
        entries: &crate::store::checks::Entries,
    ) -> Result<()> {
        let pid = entries
            .1
            .as_ref()
            .map(|(pid, _)| crate::postgres::sql(*pid))
            .transpose()?;
        self.out.intake.push((pid, encode(entries)?));
        Ok(())
    }

    /// Takes up to `n` of the oldest rows of the intake, in the order they were
    /// written; they are gone once this transaction commits.
    pub(crate) fn take_intake(&mut self, n: i64) -> Result<Vec<crate::store::checks::Entries>> {
        let mut rows = self
            .rt
            .block_on(self.tx.query(INTAKE_TAKE, &[&n]))
            .map_err(db)?;
        rows.sort_by_key(|r| r.get::<_, i64>(0));
        rows.iter().map(|r| decode(r.get::<_, &[u8]>(1))).collect()
    }
}
