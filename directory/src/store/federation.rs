//! The federation's state: institutions and their memberships, patients' consent,
//! grants issued, and notifications received (proposal §4-2, 4-3).

use super::registry_tx::RegistryTx;
use super::tables::*;
use super::{decode, encode, Result, Store, StoreError};
use crate::access::ConsentRecord;
use crate::audit::LogEntry;
use ed25519_dalek::SigningKey;
use iryo_proto::federation::{
    Grant, LoggedGrant, Membership, Notification, Purpose, Registration, Role, Side, Time,
};
use iryo_proto::signed::Signed;
use iryo_proto::wire::Refusal;
use iryo_proto::{InstitutionCode, MedicalId};
use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

pub(crate) use super::grants::{grant_in, IssuedGrant};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstitutionRecord {
    pub membership: Signed<Membership>,
    pub revoked_at: Option<Time>,
}

impl InstitutionRecord {
    pub fn membership(&self) -> Result<Membership> {
        self.membership
            .open_unverified()
            .map_err(|e| StoreError::Inconsistent(e.to_string()))
    }

    /// A membership that may act now: not revoked and within its validity.
    pub fn active(&self, now: Time) -> Result<Option<Membership>> {
        let m = self.membership()?;
        Ok((self.revoked_at.is_none() && m.valid_at(now)).then_some(m))
    }
}

/// A grant and which ends have reported using it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRecord {
    pub grant: Grant,
    pub disclosed: Option<(u64, Time)>,
    pub received: Option<(u64, Time)>,
}

impl GrantRecord {
    /// Which end of an unmatched grant reported and which did not, in words.
    pub fn unmatched_side(&self) -> &'static str {
        if self.disclosed.is_some() {
            "disclosed, receipt never reported"
        } else {
            "received, disclosure never reported"
        }
    }
}

/// Splits a batch over the machine's cores; verification is the costly half of intake.
fn verify_parallel(
    batch: &[Signed<Notification>],
    key: &ed25519_dalek::VerifyingKey,
) -> Vec<std::result::Result<Notification, iryo_proto::signed::SignError>> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    if cores < 2 || batch.len() < 64 {
        return verify_all(batch, key);
    }
    let per = batch.len().div_ceil(cores);
    std::thread::scope(|scope| {
        let parts: Vec<_> = batch
            .chunks(per)
            .map(|part| (part.len(), scope.spawn(move || verify_all(part, key))))
            .collect();
        parts
            .into_iter()
            .flat_map(|(n, h)| {
                h.join()
                    .unwrap_or_else(|_| vec![Err(iryo_proto::signed::SignError::BadSignature); n])
            })
            .collect()
    })
}

/// Verifies a batch signed by one node: all signatures at once (Ed25519 batch
/// verification with the key's terms folded into one, `signatures`), and one by one
/// only when the batch fails, to tell the bad ones from the good.
fn verify_all(
    batch: &[Signed<Notification>],
    key: &ed25519_dalek::VerifyingKey,
) -> Vec<std::result::Result<Notification, iryo_proto::signed::SignError>> {
    let sigs: Option<Vec<ed25519_dalek::Signature>> = batch
        .iter()
        .map(|s| {
            let b: [u8; 64] = s.signature.as_slice().try_into().ok()?;
            (s.signer == key.to_bytes()).then(|| ed25519_dalek::Signature::from_bytes(&b))
        })
        .collect();
    if let Some(sigs) = sigs {
        let messages: Vec<Vec<u8>> = batch
            .iter()
            .map(iryo_proto::signed::Signed::signed_message)
            .collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        if crate::signatures::verify_one_signer(key, &refs, &sigs) {
            return batch
                .iter()
                .map(iryo_proto::signed::Signed::open_unverified)
                .collect();
        }
    }
    batch.iter().map(|s| s.verify(key)).collect()
}

/// Notifications whose signature and sender check out, decoded, ready to append.
pub type Verified = Vec<(Signed<Notification>, Notification)>;

/// The costly, lock-free half of intake: each notification must be signed by the
/// sender's membership key and describe the sender's own end of the exchange.
/// Returns the valid ones and an outcome listing the refused.
pub fn verify_notifications(
    from: &Membership,
    batch: &[Signed<Notification>],
) -> Result<(Verified, NotifyOutcome)> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(&from.public_key).map_err(|_| {
        StoreError::Inconsistent(format!("membership key of {} is malformed", from.code))
    })?;
    let mut out = NotifyOutcome::default();
    let mut valid = Vec::with_capacity(batch.len());
    for (s, checked) in batch.iter().zip(verify_parallel(batch, &key)) {
        match checked {
            Ok(n) => {
                let own_end = match n.side {
                    Side::Disclosed => n.source == from.code,
                    Side::Received => n.requester == from.code,
                };
                if own_end {
                    valid.push((s.clone(), n));
                } else {
                    out.refused.push((
                        n.id,
                        "a node reports only its own end of an exchange".into(),
                    ));
                }
            }
            Err(e) => {
                let id = s.open_unverified().map(|n| n.id).unwrap_or_default();
                out.refused.push((id, e.to_string()));
            }
        }
    }
    Ok((valid, out))
}

/// The writer's half: logs each notification not logged before, pairs it with its
/// grant, and returns the ids the sender may drop from its outbox.
pub(crate) fn append_notifications(
    t: &mut (impl RegistryTx + ?Sized),
    from: InstitutionCode,
    valid: &[(Signed<Notification>, Notification)],
) -> Result<Vec<[u8; 16]>> {
    let mut acknowledged = Vec::with_capacity(valid.len());
    for (signed, n) in valid {
        if t.notification_leaf(&n.id)?.is_none() {
            let leaf = t.audit_append(&LogEntry::Notification {
                from,
                notification: signed.clone(),
            })?;
            t.put_notification_leaf(n.id, leaf)?;
            if let Some(mut g) = t.grant(&n.grant_id)? {
                match n.side {
                    Side::Disclosed => g.disclosed = Some((leaf, n.at)),
                    Side::Received => g.received = Some((leaf, n.at)),
                }
                t.put_grant(&g)?;
            }
        }
        acknowledged.push(n.id);
    }
    Ok(acknowledged)
}

/// Logs verified refusal reports not logged before; the ids the sender may drop.
pub(crate) fn append_refusals(
    t: &mut (impl RegistryTx + ?Sized),
    from: InstitutionCode,
    valid: &[(
        Signed<iryo_proto::federation::RefusalReport>,
        iryo_proto::federation::RefusalReport,
    )],
) -> Result<Vec<[u8; 16]>> {
    let mut ids = Vec::with_capacity(valid.len());
    for (signed, r) in valid {
        if t.notification_leaf(&r.id)?.is_none() {
            let leaf = t.audit_append(&LogEntry::AccessRefused {
                from,
                report: signed.clone(),
            })?;
            t.put_notification_leaf(r.id, leaf)?;
        }
        ids.push(r.id);
    }
    Ok(ids)
}

/// Checks a node's refusal reports: signed by its member key, naming it as the source.
pub(crate) type CheckedReports = (
    Vec<(
        Signed<iryo_proto::federation::RefusalReport>,
        iryo_proto::federation::RefusalReport,
    )>,
    Vec<([u8; 16], String)>,
);

pub(crate) fn verify_refusals(
    member: &Membership,
    reports: &[Signed<iryo_proto::federation::RefusalReport>],
) -> Result<CheckedReports> {
    let key = ed25519_dalek::VerifyingKey::from_bytes(&member.public_key)
        .map_err(|e| StoreError::Inconsistent(format!("a member's key: {e}")))?;
    let mut valid = Vec::new();
    let mut refused = Vec::new();
    for signed in reports {
        match signed.verify(&key) {
            Ok(r) if r.source == member.code => valid.push((signed.clone(), r)),
            Ok(r) => refused.push((r.id, format!("reports for {}, not its sender", r.source))),
            Err(e) => {
                let id = signed.open_unverified().map_or([0; 16], |r| r.id);
                refused.push((id, e.to_string()));
            }
        }
    }
    Ok((valid, refused))
}

/// The ids of refusal reports logged (now or before), and those refused with why.
pub type ReportsTaken = (Vec<[u8; 16]>, Vec<([u8; 16], String)>);

impl Store {
    /// Logs a source's signed refusal reports: each must be signed by the sender's
    /// member key and name the sender as the source; one seen before is not logged
    /// again. Returns the ids the sender may drop, refused ones included (they will
    /// never become valid), and why each refused one was.
    pub fn log_refusals(
        &self,
        member: &Membership,
        reports: &[Signed<iryo_proto::federation::RefusalReport>],
    ) -> Result<ReportsTaken> {
        let (valid, refused) = verify_refusals(member, reports)?;
        let ids = self.write(|t| append_refusals(t, member.code, &valid))?;
        Ok((ids, refused))
    }
}

/// What a requester asks for: one patient's records at one source, for one purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantQuery {
    pub medical_id: MedicalId,
    pub source: InstitutionCode,
    pub purpose: Purpose,
    pub reason: Option<String>,
    /// The EMR's key: the same query with the same key gets the same grant while it
    /// has time left (`idempotency`).
    pub idempotency_key: Option<iryo_proto::IdempotencyKey>,
}

/// The outcome of a batch of notifications.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifyOutcome {
    /// Logged now or before: the sender may drop them from its outbox.
    pub acknowledged: Vec<[u8; 16]>,
    /// Refused, with the reason; the sender should not retry them.
    pub refused: Vec<([u8; 16], String)>,
}

/// Records one of a person's consent decisions, after every earlier one.
pub(crate) fn add_consent_for(
    t: &mut (impl RegistryTx + ?Sized),
    pid: u64,
    r: &ConsentRecord,
) -> Result<()> {
    let seq = t.next(CONSENT_SEQ)?;
    t.put_consent(pid, seq, r)
}

impl Store {
    /// Issues a membership for a node's registration request, signed by the agency.
    /// Registering a code again replaces its membership (a new key, new addresses).
    pub fn add_institution(
        &self,
        request: &Signed<Registration>,
        roles: Vec<Role>,
        valid_days: u32,
        agency: &SigningKey,
        now: Time,
        operator: &str,
    ) -> Result<Membership> {
        let reg = registration(request)?;
        self.forget_members();
        let out =
            self.write(|t| add_institution(t, &reg, roles, valid_days, agency, now, operator));
        self.forget_members();
        out
    }

    pub fn revoke_institution(
        &self,
        code: InstitutionCode,
        now: Time,
        operator: &str,
    ) -> Result<()> {
        let out = self.write(|t| revoke_institution(t, code, now, operator));
        self.forget_members();
        out
    }

    pub fn institutions(&self) -> Result<Vec<InstitutionRecord>> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in tx.open_table(INSTITUTIONS)?.iter()? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    pub fn institution(&self, code: InstitutionCode) -> Result<Option<InstitutionRecord>> {
        let tx = self.db.begin_read()?;
        match tx.open_table(INSTITUTIONS)?.get(code.as_u64())? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// The institution a node's authenticated key speaks for, if any.
    /// Every request to the directory asks this first, so answers are kept in memory;
    /// registering or revoking an institution through this store clears them.
    pub fn institution_by_key(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>> {
        if let Ok(cache) = self.members.lock() {
            if let Some(r) = cache.get(key) {
                return Ok(Some(r.clone()));
            }
        }
        let found = self.institution_by_key_uncached(key)?;
        if let (Some(r), Ok(mut cache)) = (&found, self.members.lock()) {
            cache.insert(*key, r.clone());
        }
        Ok(found)
    }

    /// The record of `key` if `institution_by_key` has read it since the last change:
    /// never touches the database, so it may run on an async thread.
    pub fn cached_member(&self, key: &[u8; 32]) -> Option<InstitutionRecord> {
        self.members.lock().ok()?.get(key).cloned()
    }

    fn forget_members(&self) {
        if let Ok(mut cache) = self.members.lock() {
            cache.clear();
        }
    }

    fn institution_by_key_uncached(&self, key: &[u8; 32]) -> Result<Option<InstitutionRecord>> {
        let tx = self.db.begin_read()?;
        let code = tx
            .open_table(INSTITUTION_KEYS)?
            .get(*key)?
            .map(|g| g.value());
        match code {
            Some(c) => match tx.open_table(INSTITUTIONS)?.get(c)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Records a consent decision for the patient holding `id`.
    pub fn add_consent(&self, id: MedicalId, record: &ConsentRecord) -> Result<()> {
        self.write(|t| add_consent(t, id, record))
    }

    pub fn consents(&self, id: MedicalId) -> Result<Vec<ConsentRecord>> {
        let pid = match self.reader()?.id_entry(id)? {
            Some(e) => e.pid,
            // An ID the authority has not dealt with has no consent recorded.
            None if self.role == crate::config::ServiceRole::Authority => return Ok(Vec::new()),
            None => return Err(StoreError::UnknownMedicalId(id)),
        };
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CONSENTS)?;
        let mut out = Vec::new();
        for item in t.range((pid, 0)..=(pid, u64::MAX))? {
            out.push(decode(item?.1.value())?);
        }
        Ok(out)
    }

    /// Decides a grant, logs the decision, and signs the grant when it is given.
    pub fn request_grant(
        &self,
        requester: &Membership,
        query: &GrantQuery,
        agency: &SigningKey,
        now: Time,
    ) -> Result<std::result::Result<LoggedGrant, Refusal>> {
        let rules = (
            self.retention_years,
            self.policy.default,
            self.policy.grant_seconds,
        );
        let decided = self.write(|t| grant_in(t, requester, query, now, rules))?;
        Ok(decided.map(|g| g.sign(agency)))
    }

    /// Verifies, de-duplicates and logs notifications sent by `from`.
    pub fn accept_notifications(
        &self,
        from: &Membership,
        batch: &[Signed<Notification>],
    ) -> Result<NotifyOutcome> {
        let (valid, mut out) = verify_notifications(from, batch)?;
        out.acknowledged = self.write(|t| append_notifications(t, from.code, &valid))?;
        Ok(out)
    }

    /// Grants used by one end whose other end has not reported within `window` seconds.
    pub fn unmatched(&self, now: Time, window: i64) -> Result<Vec<GrantRecord>> {
        let tx = self.db.begin_read()?;
        let closed = match tx.open_table(CLOSED_GRANTS) {
            Ok(t) => Some(t),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut out = Vec::new();
        for item in tx.open_table(GRANTS)?.iter()? {
            let g: GrantRecord = decode(item?.1.value())?;
            let one_sided = one_sided(&g, now, window);
            let is_closed = match &closed {
                Some(t) => t.get(g.grant.id)?.is_some(),
                None => false,
            };
            if one_sided && !is_closed {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Closes an unmatched grant whose other end will never report (the node died
    /// before it could): `unmatched` no longer lists it, and the audit log keeps who
    /// closed it and why.
    pub fn close_unmatched(
        &self,
        grant_id: [u8; 16],
        reason: &str,
        by: &str,
        at: Time,
    ) -> Result<GrantRecord> {
        self.write(|t| close_unmatched(t, grant_id, reason, by, at))
    }
}

/// The rules of `Store::add_institution` once the request is verified, for either
/// backend.
pub(crate) fn add_institution(
    t: &mut (impl RegistryTx + ?Sized),
    reg: &Registration,
    roles: Vec<Role>,
    valid_days: u32,
    agency: &SigningKey,
    now: Time,
    operator: &str,
) -> Result<Membership> {
    if let Some(old) = t.institution(reg.code)? {
        t.forget_institution_key(&old.membership()?.public_key)?;
    }
    let membership = Membership {
        code: reg.code,
        name: reg.name.clone(),
        kind: reg.code.kind(),
        public_key: reg.public_key,
        addresses: reg.addresses.clone(),
        roles,
        serial: t.next(MEMBERSHIP_SERIAL)?,
        not_before: now,
        not_after: now + i64::from(valid_days) * 86_400,
    };
    let record = InstitutionRecord {
        membership: Signed::sign(&membership, agency),
        revoked_at: None,
    };
    t.put_institution(reg.code, &record)?;
    t.put_institution_key(reg.public_key, reg.code)?;
    t.audit_append(&LogEntry::Operator {
        operator: operator.into(),
        action: format!("institution {} ({}) registered", reg.code, reg.name),
        at: now,
    })?;
    Ok(membership)
}

/// Verifies a registration request: signed by the key it registers.
pub(crate) fn registration(request: &Signed<Registration>) -> Result<Registration> {
    let reg = request
        .verify_any()
        .map_err(|e| StoreError::BadRegistration(e.to_string()))?;
    if reg.public_key != request.signer {
        return Err(StoreError::BadRegistration(
            "it is not signed by the key it registers".into(),
        ));
    }
    Ok(reg)
}

/// The rules of `Store::revoke_institution`, for either backend.
pub(crate) fn revoke_institution(
    t: &mut (impl RegistryTx + ?Sized),
    code: InstitutionCode,
    now: Time,
    operator: &str,
) -> Result<()> {
    let mut r = t
        .institution(code)?
        .ok_or(StoreError::UnknownInstitution(code))?;
    if r.revoked_at.is_none() {
        r.revoked_at = Some(now);
        t.put_institution(code, &r)?;
        t.audit_append(&LogEntry::Operator {
            operator: operator.into(),
            action: format!("institution {code} revoked"),
            at: now,
        })?;
    }
    Ok(())
}

/// The rules of `Store::add_consent`, for either backend.
pub(crate) fn add_consent(
    t: &mut (impl RegistryTx + ?Sized),
    id: MedicalId,
    record: &ConsentRecord,
) -> Result<()> {
    // The person's or the subject's number: consents follow it through ID changes.
    let pid = match t.id_entry(id)? {
        Some(e) => e.pid,
        // The authority does not learn which IDs were issued (docs/roles.md).
        None if t.role() == crate::config::ServiceRole::Authority => {
            super::subjects::subject_for(t, id)?.pid
        }
        None => return Err(StoreError::UnknownMedicalId(id)),
    };
    add_consent_for(t, pid, record)?;
    if let crate::access::ConsentOrigin::Operator(op) = &record.origin {
        t.audit_append(&LogEntry::Operator {
            operator: op.clone(),
            action: format!(
                "consent {} for {} ({}) of {}",
                if record.allow { "granted" } else { "revoked" },
                record
                    .institution
                    .map_or("all institutions".into(), |c| c.to_string()),
                record.purpose.map_or("all purposes", |p| p.as_str()),
                id
            ),
            at: record.at,
        })?;
    }
    Ok(())
}

/// Whether a grant is used by one end only, `window` seconds after that end reported.
pub(crate) fn one_sided(g: &GrantRecord, now: Time, window: i64) -> bool {
    match (g.disclosed, g.received) {
        (Some((_, at)), None) | (None, Some((_, at))) => now - at > window,
        _ => false,
    }
}

/// The rules of `Store::close_unmatched`, for either backend.
pub(crate) fn close_unmatched(
    t: &mut (impl RegistryTx + ?Sized),
    grant_id: [u8; 16],
    reason: &str,
    by: &str,
    at: Time,
) -> Result<GrantRecord> {
    if reason.trim().is_empty() {
        return Err(StoreError::ReasonRequired("closing an unmatched grant"));
    }
    let hex = iryo_proto::merkle::to_hex(&grant_id);
    let g = t
        .grant(&grant_id)?
        .ok_or_else(|| StoreError::NoGrant(hex.clone()))?;
    if !matches!((g.disclosed, g.received), (Some(_), None) | (None, Some(_))) {
        return Err(StoreError::Inconsistent(format!(
            "grant {hex} is not unmatched: {}",
            if g.disclosed.is_some() {
                "both ends reported it"
            } else {
                "neither end used it"
            }
        )));
    }
    if !t.close_grant(grant_id, &encode(&(by, reason.trim(), at))?)? {
        return Err(StoreError::Inconsistent(format!(
            "grant {hex} is closed already"
        )));
    }
    t.audit_append(&LogEntry::Operator {
        operator: by.into(),
        action: format!(
            "closed unmatched grant {hex} ({} -> {}, medical ID {}, {}): {}",
            g.grant.source,
            g.grant.requester,
            g.grant.medical_id.grouped(),
            g.unmatched_side(),
            reason.trim()
        ),
        at,
    })?;
    Ok(g)
}
