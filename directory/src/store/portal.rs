//! Accounts of My Portal (proposal §4-3): the one-time activation code a person's letter
//! carries, kept only as a hash, and the passphrase they set with it, as an argon2id hash.

use super::registry_tx::RegistryTx;
use super::tables::PORTAL_ACCOUNTS;
use super::{decode, Result, Store, StoreError};
use crate::registry::Timestamp;
use iryo_proto::MedicalId;
use redb::ReadableDatabase;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub activation: Option<Activation>,
    /// PHC string of the argon2id hash; `None` until the person activates.
    pub passphrase: Option<String>,
    pub activated_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    pub hash: [u8; 32],
    pub expires: Timestamp,
    pub used: bool,
}

/// Letters that carry no look-alikes (no 0/O, 1/I/L), so a code read off paper is typed
/// right the first time.
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// A fresh activation code, `XXXX-XXXX-XXXX` (about 59 bits).
pub fn new_activation_code() -> Result<String> {
    let mut raw = [0u8; 12];
    getrandom::fill(&mut raw).map_err(|e| StoreError::Random(e.to_string()))?;
    let chars: Vec<char> = raw
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect();
    Ok(chars
        .chunks(4)
        .map(|c| c.iter().collect::<String>())
        .collect::<Vec<_>>()
        .join("-"))
}

/// The stored form of a code: bound to the person, so one hash never fits another.
pub fn activation_hash(pid: u64, code: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"iryo activation code\0");
    h.update(pid.to_be_bytes());
    h.update(iryo_proto::roles::code_as_typed(code).as_bytes());
    h.finalize().into()
}

impl Store {
    pub fn account(&self, pid: u64) -> Result<Option<Account>> {
        let tx = self.db.begin_read()?;
        let table = match tx.open_table(PORTAL_ACCOUNTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match table.get(pid)? {
            Some(v) => Ok(Some(decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Issues a new activation code to each person, replacing any unused one; returns
    /// the codes in the order of `pids` for printing. Only their hashes are stored.
    pub fn issue_activations(&self, pids: &[u64], expires: Timestamp) -> Result<Vec<String>> {
        let codes = pids
            .iter()
            .map(|_| new_activation_code())
            .collect::<Result<Vec<_>>>()?;
        self.write(|t| {
            for (pid, code) in pids.iter().zip(&codes) {
                set_activation(t, *pid, code, expires)?;
            }
            Ok(())
        })?;
        Ok(codes)
    }

    /// Uses the activation code once: sets the passphrase hash. Refuses a wrong, used or
    /// expired code without saying which, so the answer teaches a guesser nothing.
    pub fn activate(&self, holder: &Holder, code: &str, phc: &str, at: Timestamp) -> Result<()> {
        self.write(|t| activate(t, holder, code, phc, at))
    }
}

/// Who holds the account a code opens: the person or subject `pid`, and the medical
/// IDs they held, the current one last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u64,
    pub ids: Vec<MedicalId>,
}

/// The patient a medical ID names, as My Portal shows them: a person where the store
/// keeps persons, a subject on an exchange authority, which knows no name.
#[derive(Debug, Clone)]
pub enum Patient {
    Person(Box<crate::registry::Person>),
    /// A subject and the ID it holds now (the last of its IDs).
    Subject(super::subjects::Subject, MedicalId),
}

impl Patient {
    pub fn holder(&self) -> Holder {
        match self {
            Patient::Person(p) => Holder {
                pid: p.pid,
                ids: super::audit::ids_held(p),
            },
            Patient::Subject(s, _) => Holder {
                pid: s.pid,
                ids: s.ids.clone(),
            },
        }
    }

    /// The ID the patient holds now.
    pub fn medical_id(&self) -> MedicalId {
        match self {
            Patient::Person(p) => p.medical_id,
            Patient::Subject(_, current) => *current,
        }
    }

    pub fn id_state(&self, date: chrono::NaiveDate, retention: u32) -> crate::registry::IdState {
        match self {
            Patient::Person(p) => p.id_state(date, retention),
            Patient::Subject(s, _) => s.id_state(date, retention),
        }
    }

    /// The person's record, where this store keeps it.
    pub fn person(&self) -> Option<&crate::registry::Person> {
        match self {
            Patient::Person(p) => Some(p),
            Patient::Subject(..) => None,
        }
    }
}

/// Whether `code` is the one `hash` was made from for `holder`: bound to the person
/// where the registry printed the letter, or, where the exchange authority keeps the
/// account, to one of the medical IDs the registry's notice named.
fn fits(hash: &[u8; 32], holder: &Holder, code: &str) -> bool {
    *hash == activation_hash(holder.pid, code)
        || holder
            .ids
            .iter()
            .any(|id| *hash == iryo_proto::roles::portal_code_hash(*id, code))
}

/// Uses a person's activation code once and sets the passphrase hash, on either
/// backend.
pub(crate) fn activate(
    t: &mut (impl RegistryTx + ?Sized),
    holder: &Holder,
    code: &str,
    passphrase_phc: &str,
    at: Timestamp,
) -> Result<()> {
    let pid = holder.pid;
    let mut a = t.account(pid)?.ok_or_else(bad_code)?;
    match &mut a.activation {
        Some(act) if !act.used && act.expires > at && fits(&act.hash, holder, code) => {
            act.used = true;
        }
        _ => return Err(bad_code()),
    }
    a.passphrase = Some(passphrase_phc.to_string());
    a.activated_at = Some(at);
    t.put_account(pid, &a)
}

fn bad_code() -> StoreError {
    StoreError::BadActivation
}

/// Stores the hash of a person's new activation code, replacing any unused one.
pub(super) fn set_activation(
    t: &mut (impl RegistryTx + ?Sized),
    pid: u64,
    code: &str,
    expires: Timestamp,
) -> Result<()> {
    set_activation_hash(t, pid, activation_hash(pid, code), expires)
}

/// Stores a code's hash as the account's activation, replacing any unused one: the
/// registry's own, or the one its notice carried to the exchange authority. A new code
/// leaves the passphrase as it is: it works once, to set another.
pub(super) fn set_activation_hash(
    t: &mut (impl RegistryTx + ?Sized),
    pid: u64,
    hash: [u8; 32],
    expires: Timestamp,
) -> Result<()> {
    let mut a = t.account(pid)?.unwrap_or_default();
    a.activation = Some(Activation {
        hash,
        expires,
        used: false,
    });
    t.put_account(pid, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_hashes_bound_to_the_person() {
        let c = new_activation_code().unwrap();
        assert_eq!(c.len(), 14);
        assert!(c
            .chars()
            .all(|ch| ch == '-' || ALPHABET.contains(&(ch as u8))));
        assert_eq!(
            activation_hash(7, &c),
            activation_hash(7, &c.to_lowercase().replace('-', " "))
        );
        assert_ne!(activation_hash(7, &c), activation_hash(8, &c));
    }
}
