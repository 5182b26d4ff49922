//! The PostgreSQL store's side of the exchange: memberships, consent, grants,
//! notifications and refusal reports, and the audit log's
//! reads and proofs.

use super::PgStore;
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use crate::postgres::audit;
use crate::registry::Person;
use crate::store::federation::{self, GrantQuery, NotifyOutcome, ReportsTaken};
use crate::store::{AuditReport, GrantRecord, InstitutionRecord, Result, StoreError};
use ed25519_dalek::{SigningKey, VerifyingKey};
use iryo_proto::federation::{
    Membership, Notification, RefusalReport, Registration, Role, Time, TreeHead,
};
use iryo_proto::merkle::Hash;
use iryo_proto::signed::Signed;
use iryo_proto::wire::Refusal;
use iryo_proto::{InstitutionCode, MedicalId};

impl PgStore {
    /// Issues a membership for a node's registration request (`Store::add_institution`).
    pub fn add_institution(
        &self,
        request: &Signed<Registration>,
        roles: Vec<Role>,
        valid_days: u32,
        agency: &SigningKey,
        now: Time,
        operator: &str,
    ) -> Result<Membership> {
        let reg = federation::registration(request)?;
        self.write(|t| {
            federation::add_institution(t, &reg, roles, valid_days, agency, now, operator)
        })
    }

    pub fn revoke_institution(
        &self,
        code: InstitutionCode,
        now: Time,
        operator: &str,
    ) -> Result<()> {
        self.write(|t| federation::revoke_institution(t, code, now, operator))
    }

    pub fn institutions(&self) -> Result<Vec<InstitutionRecord>> {
        self.values("SELECT record FROM institutions ORDER BY code", &[])
    }

    pub fn institution(&self, code: InstitutionCode) -> Result<Option<InstitutionRecord>> {
        let code = crate::postgres::sql(code.as_u64())?;
        Ok(self
            .values("SELECT record FROM institutions WHERE code = $1", &[&code])?
            .pop())
    }

    /// The institution a node's authenticated key speaks for, if any. Kept in memory
    /// for `MEMBER_SECONDS`: another process (an operator's command) may revoke it, and
    /// nothing here would hear of it sooner.
    pub fn institution_by_key(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>> {
        let found: Option<InstitutionRecord> = self
            .values(
                "SELECT i.record FROM institution_keys k JOIN institutions i ON i.code = k.code
                 WHERE k.public_key = $1",
                &[&key.as_slice()],
            )?
            .pop();
        if let (Some(r), Ok(mut cache)) = (&found, self.members.lock()) {
            cache.insert(*key, (std::time::Instant::now(), r.clone()));
        }
        Ok(found)
    }

    /// The record of `key` read by `institution_by_key` less than `MEMBER_SECONDS` ago.
    pub fn cached_member(&self, key: &[u8; 32]) -> Option<InstitutionRecord> {
        let cache = self.members.lock().ok()?;
        let (read, r) = cache.get(key)?;
        (read.elapsed() < super::MEMBER_SECONDS).then(|| r.clone())
    }

    /// Records a consent decision for the patient holding `id` (`Store::add_consent`).
    pub fn add_consent(&self, id: MedicalId, record: &ConsentRecord) -> Result<()> {
        self.write(|t| federation::add_consent(t, id, record))
    }

    /// Applies the registry's notices in order (docs/roles.md); the number expected next.
    pub fn accept_registry_notices(
        &self,
        notices: &[Signed<iryo_proto::roles::RegistryNotice>],
        registry: &ed25519_dalek::VerifyingKey,
    ) -> Result<u64> {
        self.write(|t| crate::store::subjects::apply_notices(t, notices, registry))
    }

    /// Up to `n` of this registry's notices from number `from` on, oldest first.
    pub fn notices_to_tell(
        &self,
        from: u64,
        n: usize,
    ) -> Result<Vec<iryo_proto::roles::RegistryNotice>> {
        let from = crate::postgres::sql(from)?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.values(
            "SELECT notice FROM registry_outbox WHERE seq >= $1 ORDER BY seq LIMIT $2",
            &[&from, &n],
        )
    }

    /// Forgets the notices numbered below `expected`, which the authority applied.
    pub fn forget_told(&self, expected: u64) -> Result<()> {
        let expected = crate::postgres::sql(expected)?;
        // One statement, committed on its own.
        self.read(async |c| {
            c.execute("DELETE FROM registry_outbox WHERE seq < $1", &[&expected])
                .await?;
            Ok(())
        })
    }

    /// The subject `id` names, if this store has one.
    pub fn subject_by_medical_id(
        &self,
        id: MedicalId,
    ) -> Result<Option<crate::store::subjects::Subject>> {
        let id = crate::postgres::sql(id.as_u64())?;
        Ok(self
            .values(
                "SELECT s.body FROM medical_ids m JOIN subjects s ON s.pid = m.pid
                 WHERE m.medical_id = $1",
                &[&id],
            )?
            .pop())
    }

    /// A patient's consent decisions, in the order they were made.
    pub fn consents(&self, id: MedicalId) -> Result<Vec<ConsentRecord>> {
        let known: Vec<i64> = self.read(async |c| {
            Ok(c.query(
                "SELECT pid FROM medical_ids WHERE medical_id = $1",
                &[&crate::postgres::sql(id.as_u64())?],
            )
            .await?
            .into_iter()
            .map(|r| r.get(0))
            .collect())
        })?;
        let Some(pid) = known.first() else {
            // An ID the authority has not dealt with has no consent recorded.
            if self.role == crate::config::ServiceRole::Authority {
                return Ok(Vec::new());
            }
            return Err(StoreError::UnknownMedicalId(id));
        };
        self.values(
            "SELECT record FROM consents WHERE pid = $1 ORDER BY seq",
            &[pid],
        )
    }

    /// Decides a grant, logs the decision, and signs the grant when it is given.
    pub fn request_grant(
        &self,
        requester: &Membership,
        query: &GrantQuery,
        agency: &SigningKey,
        now: Time,
    ) -> Result<std::result::Result<iryo_proto::federation::LoggedGrant, Refusal>> {
        let rules = (
            self.retention_years,
            self.policy.default,
            self.policy.grant_seconds,
        );
        let decided = self.write(|t| federation::grant_in(t, requester, query, now, rules))?;
        Ok(decided.map(|g| g.sign(agency)))
    }

    /// Verifies, de-duplicates and logs notifications sent by `from`.
    pub fn accept_notifications(
        &self,
        from: &Membership,
        batch: &[Signed<Notification>],
    ) -> Result<NotifyOutcome> {
        let (valid, mut out) = federation::verify_notifications(from, batch)?;
        out.acknowledged =
            self.write(|t| federation::append_notifications(t, from.code, &valid))?;
        Ok(out)
    }

    /// Logs a source's signed refusal reports (`Store::log_refusals`).
    pub fn log_refusals(
        &self,
        member: &Membership,
        reports: &[Signed<RefusalReport>],
    ) -> Result<ReportsTaken> {
        let (valid, refused) = federation::verify_refusals(member, reports)?;
        let ids = self.write(|t| federation::append_refusals(t, member.code, &valid))?;
        Ok((ids, refused))
    }

    /// Grants used by one end whose other end has not reported within `window` seconds.
    pub fn unmatched(&self, now: Time, window: i64) -> Result<Vec<GrantRecord>> {
        let grants: Vec<GrantRecord> = self.values(
            "SELECT g.record FROM grants g
             WHERE NOT EXISTS (SELECT 1 FROM closed_grants c WHERE c.grant_id = g.grant_id)
             ORDER BY g.grant_id",
            &[],
        )?;
        Ok(grants
            .into_iter()
            .filter(|g| federation::one_sided(g, now, window))
            .collect())
    }

    /// Closes an unmatched grant whose other end will never report.
    pub fn close_unmatched(
        &self,
        grant_id: [u8; 16],
        reason: &str,
        by: &str,
        at: Time,
    ) -> Result<GrantRecord> {
        self.write(|t| federation::close_unmatched(t, grant_id, reason, by, at))
    }

    /// Writes that `operator` read `what` of each of these people, one entry each.
    pub fn log_reads(&self, operator: &str, people: &[MedicalId], what: &str) -> Result<()> {
        if people.is_empty() {
            return Ok(());
        }
        if self.signer.is_none() {
            return Err(StoreError::NoSigner);
        }
        let at = crate::registry::now();
        self.write(|t| crate::store::audit::log_reads(t, operator, people, what, at))
    }

    /// The key that signed the log's first head, if it has one.
    pub fn first_head_signer(&self) -> Result<Option<[u8; 32]>> {
        let first: Option<Signed<TreeHead>> = self
            .values("SELECT head FROM audit_heads ORDER BY size LIMIT 1", &[])?
            .pop();
        Ok(first.map(|h| h.signer))
    }

    /// The audit log's size.
    pub fn audit_size(&self) -> Result<u64> {
        self.read(async |c| audit::size(c).await)
    }

    /// The latest signed head and the size it covers. Every transaction that appends
    /// signs a head for what it appended, so the latest head covers the whole log.
    pub fn current_head(&self) -> Result<(Signed<TreeHead>, u64)> {
        let head = self
            .read(async |c| audit::latest_head(c).await)?
            .ok_or(StoreError::EmptyLog)?;
        let size = head
            .open_unverified()
            .map_err(|e| StoreError::Inconsistent(e.to_string()))?
            .size;
        Ok((head, size))
    }

    /// Keeps a checkpoint of `size` with witnesses' cosignatures (a signed note).
    pub fn keep_witnessed(&self, size: u64, note: &str) -> Result<()> {
        let size = crate::postgres::sql(size)?;
        self.raw_transaction(async |tx| {
            tx.execute(
                "INSERT INTO witnessed_checkpoints (size, note) VALUES ($1, $2)
                 ON CONFLICT (size) DO UPDATE SET note = EXCLUDED.note",
                &[&size as &(dyn tokio_postgres::types::ToSql + Sync), &note],
            )
            .await?;
            Ok(())
        })
    }

    /// The kept cosigned checkpoint of `size`, or the largest one kept.
    pub fn witnessed(&self, size: Option<u64>) -> Result<Option<(u64, String)>> {
        let size = size.map(crate::postgres::sql).transpose()?;
        let row: Option<(i64, String)> = self.read(async |c| {
            Ok(c.query_opt(
                "SELECT size, note FROM witnessed_checkpoints
                 WHERE $1::bigint IS NULL OR size = $1 ORDER BY size DESC LIMIT 1",
                &[&size],
            )
            .await?
            .map(|r| (r.get(0), r.get(1))))
        })?;
        Ok(row.map(|(s, n)| (s as u64, n)))
    }

    pub fn audit_root(&self, size: u64) -> Result<Hash> {
        self.read(async |c| audit::root(c, size).await)
    }

    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.read(async |c| audit::inclusion_proof(c, index, size).await)
    }

    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>> {
        self.read(async |c| audit::consistency_proof(c, old, new).await)
    }

    pub fn audit_entry(&self, index: u64) -> Result<LogEntry> {
        let i = crate::postgres::sql(index)?;
        self.values("SELECT entry FROM audit_leaves WHERE leaf = $1", &[&i])?
            .pop()
            .ok_or(StoreError::NoAuditEntry(index))
    }

    /// The entries about a person, under every medical ID the person has held.
    pub fn audit_for_person(&self, person: &Person) -> Result<Vec<(u64, LogEntry)>> {
        self.audit_for_patient(&crate::store::ids_held(person))
    }

    /// The entries about a patient who held these medical IDs.
    pub fn audit_for_patient(&self, ids: &[MedicalId]) -> Result<Vec<(u64, LogEntry)>> {
        self.read(async |c| audit::for_patient(c, ids).await)
    }

    /// `audit verify`: the same checks as on redb, on one snapshot of the log.
    pub fn audit_verify(&self, agency: &VerifyingKey) -> Result<AuditReport> {
        let mut held = self.pool.get()?;
        let (rt, client) = held.conn()?.parts()?;
        Ok(super::off_async(|| {
            rt.block_on(audit::verify(client, agency))
        })?)
    }
}
