//! The EMR's idempotency keys (docs/PROTOCOL.md, idempotency): the `Idempotency-Key`
//! header of a check or a fetch, and the fetches under way by key, so that a retry
//! sent while the first attempt still runs waits for nothing and changes nothing.

use axum::http::HeaderMap;
use iryo_proto::federation::Purpose;
use iryo_proto::idempotency::KeyError;
use iryo_proto::{IdempotencyKey, InstitutionCode, MedicalId};
use std::collections::HashSet;
use std::sync::Mutex;

/// The header, as in the IETF draft "The Idempotency-Key HTTP Header Field".
pub const HEADER: &str = "idempotency-key";

/// The request's key, if it sent one. A key is a token, sent bare or as a quoted
/// structured-field string.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, KeyError> {
    let Some(v) = headers.get(HEADER) else {
        return Ok(None);
    };
    let text = v
        .to_str()
        .map_err(|_| KeyError::Character { ch: '?', pos: 0 })?;
    let text = text.trim();
    let bare = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(text);
    IdempotencyKey::parse(bare).map(Some)
}

/// What a keyed fetch is known by: the key, this institution and what is asked.
pub fn fetch_scope(
    key: &IdempotencyKey,
    me: InstitutionCode,
    (medical_id, source, purpose, reason): (MedicalId, InstitutionCode, Purpose, Option<&str>),
) -> [u8; 32] {
    let ask = postcard::to_allocvec(&(medical_id, source, purpose, reason)).unwrap_or_default();
    key.scope("fetch", me.as_u64(), &ask)
}

/// Keyed fetches under way.
#[derive(Default)]
pub struct InFlight(Mutex<HashSet<[u8; 32]>>);

/// A keyed fetch under way; the key is free again when this drops, however the fetch
/// ends.
pub struct Claim<'a> {
    set: &'a InFlight,
    scope: [u8; 32],
}

impl InFlight {
    /// Claims `scope`, or `None` while another request holds it.
    pub fn claim(&self, scope: [u8; 32]) -> Option<Claim<'_>> {
        let mut set = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Made only when inserted: a Claim dropped here would free a key it never held
        // (and wait for the lock this function holds).
        if set.insert(scope) {
            Some(Claim { set: self, scope })
        } else {
            None
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut set = self
            .set
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_read_bare_or_quoted_and_a_bad_one_is_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(from_headers(&h), Ok(None));
        h.insert(HEADER, "\"8e03978e-40d5-43e8\"".parse().unwrap());
        assert_eq!(
            from_headers(&h).unwrap().unwrap().as_str(),
            "8e03978e-40d5-43e8"
        );
        h.insert(HEADER, "a b".parse().unwrap());
        assert!(from_headers(&h).is_err());
        h.insert(HEADER, "".parse().unwrap());
        assert!(from_headers(&h).is_err());
    }

    #[test]
    fn a_claim_is_held_until_dropped() {
        let f = InFlight::default();
        let c = f.claim([1; 32]);
        assert!(c.is_some());
        assert!(f.claim([1; 32]).is_none());
        assert!(f.claim([2; 32]).is_some());
        drop(c);
        assert!(f.claim([1; 32]).is_some());
    }
}
