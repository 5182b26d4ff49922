//! Idempotency keys: what an EMR sends with a check or a fetch so that retrying it,
//! after an error or no answer, is recorded once (docs/PROTOCOL.md, idempotency).
//!
//! The key is the EMR's own, as in the IETF `Idempotency-Key` header: a UUID or any
//! other short token it makes fresh for each new request and sends again, unchanged,
//! with each retry of that request.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest key accepted, in bytes; a UUID takes 36.
pub const MAX_KEY_BYTES: usize = 64;

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Nothing was given.
    #[error("idempotency key: empty")]
    Empty,
    /// Longer than `MAX_KEY_BYTES`.
    #[error("idempotency key: {0} bytes; at most {MAX_KEY_BYTES}")]
    TooLong(usize),
    /// A character outside letters, digits and `-._~:+/=`.
    #[error(
        "idempotency key: character {ch:?} at position {pos} is not allowed; use letters, digits and -._~:+/= (a UUID fits)"
    )]
    Character {
        /// The character.
        ch: char,
        /// Its position, from 0.
        pos: usize,
    },
}

/// A key an EMR gives a request, checked: 1 to 64 letters, digits and `-._~:+/=`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `s` as a key.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        if s.is_empty() {
            return Err(KeyError::Empty);
        }
        if s.len() > MAX_KEY_BYTES {
            return Err(KeyError::TooLong(s.len()));
        }
        if let Some((pos, ch)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || "-._~:+/=".contains(*c)))
        {
            return Err(KeyError::Character { ch, pos });
        }
        Ok(Self(s.to_string()))
    }

    /// The key as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What a retry is known by: the key together with who sent it, what kind of
    /// request it is and the request's own bytes. The same key sent with a different
    /// request names a different request, so a reused key never returns another
    /// request's answer.
    pub fn scope(&self, kind: &str, sender: u64, request: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        for part in [kind.as_bytes(), self.0.as_bytes()] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        h.update(sender.to_be_bytes());
        h.update(request);
        h.finalize().into()
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = KeyError;
    fn try_from(s: String) -> Result<Self, KeyError> {
        Self::parse(&s)
    }
}

impl From<IdempotencyKey> for String {
    fn from(k: IdempotencyKey) -> String {
        k.0
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn refusals_name_what_is_wrong() {
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(
            IdempotencyKey::parse(&"a".repeat(65)),
            Err(KeyError::TooLong(65))
        );
        assert_eq!(
            IdempotencyKey::parse("ab\"<"),
            Err(KeyError::Character { ch: '"', pos: 2 })
        );
        assert!(IdempotencyKey::parse("6f1c2a9e-1b7d-4c55-9a0e-3f2b8d7c1e44").is_ok());
    }

    #[test]
    fn a_hostile_key_does_not_decode() {
        let cbor = |s: &str| cbor4ii::serde::to_vec(Vec::new(), &s).unwrap();
        let decoded: Result<IdempotencyKey, _> = cbor4ii::serde::from_slice(&cbor("a\nb"));
        assert!(decoded.is_err());
        let long = "k".repeat(10_000);
        let decoded: Result<IdempotencyKey, _> = cbor4ii::serde::from_slice(&cbor(&long));
        assert!(decoded.is_err());
    }

    proptest! {
        #[test]
        fn valid_keys_round_trip(s in "[A-Za-z0-9._~:+/=-]{1,64}") {
            let k = IdempotencyKey::parse(&s).unwrap();
            let out = cbor4ii::serde::to_vec(Vec::new(), &k).unwrap();
            let back: IdempotencyKey = cbor4ii::serde::from_slice(&out).unwrap();
            prop_assert_eq!(back.as_str(), s.as_str());
            let json = serde_json::to_string(&k).unwrap();
            prop_assert_eq!(serde_json::from_str::<IdempotencyKey>(&json).unwrap(), k);
        }

        #[test]
        fn anything_else_is_refused_without_panic(s in "\\PC{0,80}") {
            let ok = !s.is_empty() && s.len() <= MAX_KEY_BYTES
                && s.chars().all(|c| c.is_ascii_alphanumeric() || "-._~:+/=".contains(c));
            prop_assert_eq!(IdempotencyKey::parse(&s).is_ok(), ok);
        }

        #[test]
        fn scopes_differ_by_request_and_sender(k in "[a-z]{1,8}", a in any::<u64>(), b in any::<u64>()) {
            let k = IdempotencyKey::parse(&k).unwrap();
            prop_assume!(a != b);
            prop_assert_ne!(k.scope("check", a, b"x"), k.scope("check", b, b"x"));
            prop_assert_ne!(k.scope("check", a, b"x"), k.scope("check", a, b"y"));
            prop_assert_ne!(k.scope("check", a, b"x"), k.scope("grant", a, b"x"));
        }
    }
}
