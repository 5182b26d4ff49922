//! `verify-store`: every record read back and decoded, and the audit log checked. The
//! files' page checksums are checked by redb when the store is opened
//! (`set_check_integrity_on_open`), so a store that opens is one whose pages are as redb
//! wrote them; this pass finds what the checksums cannot: a record that no longer
//! decodes, a log that no longer verifies.

use super::{Operations, Result, Store};
use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

/// What `verify_records` read.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VerifyReport {
    pub persons: u64,
    pub conflicts: u64,
    pub mismatches: u64,
    pub institutions: u64,
    pub audit_entries: u64,
    pub audit_heads: u64,
    /// What does not hold, each naming the record; empty for a sound store.
    pub problems: Vec<String>,
}

impl Store {
    /// Reads and decodes every person, case and institution, and verifies the audit log
    /// against the agency's key. A record that does not decode is a problem named in
    /// the report, never a panic.
    pub fn verify_records(&self, agency: &VerifyingKey) -> Result<VerifyReport> {
        verify_records(self, self.persons()?, agency)
    }
}

/// `Store::verify_records` on either backend, over `persons`, every person it holds.
pub(crate) fn verify_records(
    store: &(impl Operations + ?Sized),
    persons: Vec<crate::registry::Person>,
    agency: &VerifyingKey,
) -> Result<VerifyReport> {
    let mut r = VerifyReport {
        persons: persons.len() as u64,
        ..VerifyReport::default()
    };
    for p in &persons {
        match store.person_by_medical_id(p.medical_id) {
            Ok(q) if q.pid == p.pid => {}
            Ok(q) => r.problems.push(format!(
                "medical ID {} leads to person {} instead of {}",
                p.medical_id, q.pid, p.pid
            )),
            Err(e) => r.problems.push(format!(
                "person {}: medical ID {}: {e}",
                p.pid, p.medical_id
            )),
        }
    }
    r.conflicts = store.conflicts(false)?.len() as u64;
    r.mismatches = store.mismatches(false)?.len() as u64;
    r.institutions = store.institutions()?.len() as u64;
    let audit = store.audit_verify(agency)?;
    r.audit_entries = audit.entries;
    r.audit_heads = audit.heads;
    r.problems.extend(audit.problems);
    Ok(r)
}
