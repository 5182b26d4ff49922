//! Signed envelopes: a value's canonical encoding, the Ed25519 key that signed it, and
//! the signature over a domain tag and those bytes. The domain tag keeps a signature
//! made for one kind of statement (a grant) from being replayed as another (a membership).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
/// Why a signed statement was refused.
pub enum SignError {
    #[error("the signed body does not decode: {0}")]
    /// The signed bytes are not a statement of the expected kind.
    Decode(String),
    #[error("signed by an unexpected key")]
    /// Signed by a key other than the one expected.
    WrongSigner,
    #[error("the signature does not verify")]
    /// The signature does not verify.
    BadSignature,
    #[error("the signer's public key is malformed")]
    /// The signer's public key is not a valid Ed25519 key.
    BadKey,
}

/// The kinds of signed statement, each with its own domain tag.
pub trait Statement: Serialize + DeserializeOwned {
    /// The domain tag signed before the body, e.g. `iryo/grant/1`.
    const DOMAIN: &'static str;
}

/// The canonical encoding of statements: postcard, which has exactly one encoding for
/// each value of a type.
pub fn canonical<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialising plain data into a Vec cannot fail.
    postcard::to_allocvec(v).unwrap_or_default()
}

#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
/// A statement of kind `T`, its signer and signature (docs/PROTOCOL.md, section 4).
pub struct Signed<T> {
    #[serde(with = "serde_bytes")]
    /// The statement's canonical (postcard) encoding.
    pub body: Vec<u8>,
    /// The signer's Ed25519 public key.
    pub signer: [u8; 32],
    #[serde(with = "serde_bytes")]
    /// Ed25519 over domain ‖ 0x00 ‖ body.
    pub signature: Vec<u8>,
    #[serde(skip)]
    _kind: PhantomData<fn() -> T>,
}

// Written out because derives would demand the same of `T`, which only names the kind.
impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Self {
            body: self.body.clone(),
            signer: self.signer,
            signature: self.signature.clone(),
            _kind: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.body == o.body && self.signer == o.signer && self.signature == o.signature
    }
}

impl<T> Eq for Signed<T> {}

impl<T> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("body_len", &self.body.len())
            .field("signer", &crate::merkle::to_hex(&self.signer))
            .finish()
    }
}

fn message(domain: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(domain.len() + 1 + body.len());
    m.extend_from_slice(domain.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

impl<T: Statement> Signed<T> {
    /// Signs `value` with `key`.
    pub fn sign(value: &T, key: &SigningKey) -> Self {
        let body = canonical(value);
        let signature = key.sign(&message(T::DOMAIN, &body)).to_bytes().to_vec();
        Self {
            body,
            signer: key.verifying_key().to_bytes(),
            signature,
            _kind: PhantomData,
        }
    }

    /// Verifies the signature against `expected` and returns the statement.
    pub fn verify(&self, expected: &VerifyingKey) -> Result<T, SignError> {
        if self.signer != expected.to_bytes() {
            return Err(SignError::WrongSigner);
        }
        self.verify_any()
    }

    /// Verifies the signature against the key named in the envelope; the caller decides
    /// whether that key may make this statement.
    pub fn verify_any(&self) -> Result<T, SignError> {
        let key = VerifyingKey::from_bytes(&self.signer).map_err(|_| SignError::BadKey)?;
        let signature: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignError::BadSignature)?;
        key.verify(
            &message(T::DOMAIN, &self.body),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| SignError::BadSignature)?;
        self.open_unverified()
    }

    /// The statement without checking the signature, for display of stored records
    /// that were verified on the way in.
    pub fn open_unverified(&self) -> Result<T, SignError> {
        postcard::from_bytes(&self.body).map_err(|e| SignError::Decode(e.to_string()))
    }

    /// The message the signature covers, for batch verification.
    pub fn signed_message(&self) -> Vec<u8> {
        message(T::DOMAIN, &self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct A(u32);
    impl Statement for A {
        const DOMAIN: &'static str = "test/a";
    }
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct B(u32);
    impl Statement for B {
        const DOMAIN: &'static str = "test/b";
    }

    /// RFC 8032 §7.1, test 1: the empty message.
    #[test]
    fn rfc8032_test_vector_1() {
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec,
            0x2c, 0xc4, 0x44, 0x49, 0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03,
            0x1c, 0xae, 0x7f, 0x60,
        ];
        let key = SigningKey::from_bytes(&seed);
        assert_eq!(
            crate::merkle::to_hex(key.verifying_key().as_bytes()),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
        let sig = key.sign(b"").to_bytes();
        assert_eq!(
            crate::merkle::to_hex(&sig),
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        );
    }

    #[test]
    fn signatures_bind_the_domain_and_the_key() {
        let k = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let s = Signed::sign(&A(7), &k);
        assert_eq!(s.verify(&k.verifying_key()).unwrap(), A(7));
        assert_eq!(
            s.verify(&other.verifying_key()),
            Err(SignError::WrongSigner)
        );
        // The same bytes presented as another kind of statement do not verify.
        let as_b: Signed<B> = Signed {
            body: s.body.clone(),
            signer: s.signer,
            signature: s.signature.clone(),
            _kind: PhantomData,
        };
        assert_eq!(
            as_b.verify(&k.verifying_key()),
            Err(SignError::BadSignature)
        );
        let mut tampered = s.clone();
        tampered.body[0] ^= 1;
        assert_eq!(
            tampered.verify(&k.verifying_key()),
            Err(SignError::BadSignature)
        );
    }

    proptest::proptest! {
        /// Whatever arrives off the network, opening or verifying an envelope answers
        /// with an error or a value, never a panic; only a real signature verifies.
        #[test]
        fn hostile_envelopes_never_panic_nor_verify(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
            signer in proptest::array::uniform32(proptest::num::u8::ANY),
            signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let env: Signed<A> = Signed { body, signer, signature, _kind: PhantomData };
            let _ = env.open_unverified();
            proptest::prop_assert!(env.verify_any().is_err());
            let key = SigningKey::from_bytes(&[5; 32]);
            proptest::prop_assert!(env.verify(&key.verifying_key()).is_err());
        }
    }
}
