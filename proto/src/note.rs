//! Signed notes (c2sp.org/signed-note): a text ending in a newline, a blank line, and
//! one signature line per key, `— NAME base64(key ID ‖ signature)`. The audit log's
//! checkpoints and the witnesses' cosignatures are notes, so that witnesses already
//! run for other transparency logs can serve this one unchanged.
//!
//! Two signature types are spoken: Ed25519 over the text (type 0x01), and the
//! timestamped Ed25519 cosignature of c2sp.org/tlog-cosignature (type 0x04), whose
//! message is `cosignature/v1\ntime T\n` followed by the text.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// Ed25519 over the note text.
pub const ED25519: u8 = 0x01;
/// A timestamped Ed25519 checkpoint cosignature (cosignature/v1).
pub const COSIGNATURE_V1: u8 = 0x04;

/// The most signature lines a note may carry; the specification asks verifiers to
/// accept at least 16.
pub const MAX_SIGNATURES: usize = 64;
/// The longest note accepted, in bytes.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// Why a note, a key or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // Each variant's message says what it is.
pub enum NoteError {
    #[error("a note must be at most {MAX_NOTE_BYTES} bytes")]
    TooLong,
    #[error("a note may hold no control characters but newlines")]
    ControlCharacter,
    #[error("a note must end its text in a newline, then a blank line, then signature lines")]
    Shape,
    #[error("a note may carry at most {MAX_SIGNATURES} signatures")]
    TooManySignatures,
    #[error("signature line {0:?} is not `— NAME BASE64`")]
    SignatureLine(String),
    #[error("key name {0:?} is empty or holds a space or a plus")]
    KeyName(String),
    #[error("verifier key {0:?} is not NAME+HEX_ID+BASE64_KEY")]
    VerifierKey(String),
    #[error("verifier key {0:?}: its ID does not match its name and key")]
    KeyIdMismatch(String),
    #[error("verifier key {name:?} is of signature type {kind:#04x}, not one spoken here")]
    UnknownType { name: String, kind: u8 },
    #[error("the signature of {0} does not verify")]
    BadSignature(String),
    #[error("no signature of a known key verifies")]
    Unverified,
}

/// `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`, big-endian.
pub fn key_id(name: &str, kind: u8, public: &[u8; 32]) -> u32 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind]);
    h.update(public);
    let d = h.finalize();
    u32::from_be_bytes([d[0], d[1], d[2], d[3]])
}

fn check_name(name: &str) -> Result<(), NoteError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c == '+') {
        return Err(NoteError::KeyName(name.to_string()));
    }
    Ok(())
}

/// One signature line of a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key's name.
    pub name: String,
    /// The key's ID, from the first four bytes.
    pub key_id: u32,
    /// What follows the ID: the signature, and for a cosignature its timestamp first.
    pub bytes: Vec<u8>,
}

impl fmt::Display for NoteSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = self.key_id.to_be_bytes().to_vec();
        raw.extend_from_slice(&self.bytes);
        writeln!(f, "\u{2014} {} {}", self.name, B64.encode(raw))
    }
}

impl NoteSignature {
    /// Reads one signature line, without its newline.
    pub fn parse_line(line: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::SignatureLine(line.chars().take(80).collect());
        let rest = line.strip_prefix("\u{2014} ").ok_or_else(bad)?;
        let (name, sig) = rest.split_once(' ').ok_or_else(bad)?;
        check_name(name).map_err(|_| bad())?;
        let raw = B64.decode(sig).map_err(|_| bad())?;
        if raw.len() < 5 {
            return Err(bad());
        }
        Ok(Self {
            name: name.to_string(),
            key_id: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            bytes: raw[4..].to_vec(),
        })
    }
}

/// A note: its text (ending in a newline) and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The signed text, final newline included.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.text)?;
        for s in &self.signatures {
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

impl Note {
    /// Reads a note; its signatures are not verified here (`verify`).
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        if s.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLong);
        }
        if s.bytes().any(|b| b < 0x20 && b != b'\n') {
            return Err(NoteError::ControlCharacter);
        }
        // The text ends at the last blank line: "\n\n" before the signatures.
        let split = s.rfind("\n\n").ok_or(NoteError::Shape)?;
        let (text, sigs) = (&s[..=split], &s[split + 2..]);
        if !sigs.ends_with('\n') {
            return Err(NoteError::Shape);
        }
        let lines: Vec<&str> = sigs[..sigs.len() - 1].split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures);
        }
        let signatures = lines
            .into_iter()
            .map(NoteSignature::parse_line)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: text.to_string(),
            signatures,
        })
    }

    /// Checks every signature of a known key (by name and ID; others are ignored, as
    /// the specification asks): one that fails refuses the whole note, and at least
    /// one must verify. Returns the keys that signed, with each cosignature's time.
    pub fn verify<'k>(
        &self,
        keys: &'k [VerifierKey],
    ) -> Result<Vec<(&'k VerifierKey, Option<u64>)>, NoteError> {
        let mut signed = Vec::new();
        for sig in &self.signatures {
            let Some(key) = keys
                .iter()
                .find(|k| k.name == sig.name && k.id() == sig.key_id)
            else {
                continue;
            };
            let time = key
                .check(&self.text, &sig.bytes)
                .map_err(|()| NoteError::BadSignature(key.name.clone()))?;
            signed.push((key, time));
        }
        if signed.is_empty() {
            return Err(NoteError::Unverified);
        }
        Ok(signed)
    }
}

/// A public key that verifies notes: `NAME+HEX_ID+BASE64(type ‖ key)` as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key's name.
    pub name: String,
    /// The signature type: `ED25519` or `COSIGNATURE_V1`.
    pub kind: u8,
    /// The Ed25519 public key.
    pub key: VerifyingKey,
}

impl VerifierKey {
    /// A key of `kind` for `key`, named `name`.
    pub fn new(name: &str, kind: u8, key: VerifyingKey) -> Result<Self, NoteError> {
        check_name(name)?;
        if kind != ED25519 && kind != COSIGNATURE_V1 {
            return Err(NoteError::UnknownType {
                name: name.to_string(),
                kind,
            });
        }
        Ok(Self {
            name: name.to_string(),
            kind,
            key,
        })
    }

    /// The key's ID.
    pub fn id(&self) -> u32 {
        key_id(&self.name, self.kind, self.key.as_bytes())
    }

    /// Reads a verifier key from its text.
    pub fn parse(s: &str) -> Result<Self, NoteError> {
        let bad = || NoteError::VerifierKey(s.chars().take(120).collect());
        // The base64 key may hold plus signs itself: only the first two separate.
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if id.len() != 8 {
            return Err(bad());
        }
        let id = u32::from_str_radix(id, 16).map_err(|_| bad())?;
        let raw = B64.decode(key).map_err(|_| bad())?;
        let (&kind, public) = raw.split_first().ok_or_else(bad)?;
        let public: [u8; 32] = public.try_into().map_err(|_| bad())?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad())?;
        let vkey = Self::new(name, kind, key)?;
        if vkey.id() != id {
            return Err(NoteError::KeyIdMismatch(name.to_string()));
        }
        Ok(vkey)
    }

    /// Whether `bytes` is this key's signature over `text`: `Ok(time)` if it is, with
    /// the time of a cosignature (`None` for a plain Ed25519 signature).
    fn check(&self, text: &str, bytes: &[u8]) -> Result<Option<u64>, ()> {
        match self.kind {
            ED25519 => {
                let sig = ed25519_dalek::Signature::from_slice(bytes).map_err(drop)?;
                self.key
                    .verify_strict(text.as_bytes(), &sig)
                    .map_err(drop)
                    .map(|()| None)
            }
            COSIGNATURE_V1 => {
                let (time, sig) = bytes.split_at_checked(8).ok_or(())?;
                let time = u64::from_be_bytes(time.try_into().map_err(drop)?);
                if time > i64::MAX as u64 {
                    return Err(());
                }
                let sig = ed25519_dalek::Signature::from_slice(sig).map_err(drop)?;
                self.key
                    .verify_strict(&cosigned_message(text, time), &sig)
                    .map_err(drop)
                    .map(|()| Some(time))
            }
            _ => Err(()),
        }
    }
}

impl fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut raw = vec![self.kind];
        raw.extend_from_slice(self.key.as_bytes());
        write!(f, "{}+{:08x}+{}", self.name, self.id(), B64.encode(raw))
    }
}

/// What a cosignature/v1 signs: the header, the time, then the checkpoint's text.
fn cosigned_message(text: &str, time: u64) -> Vec<u8> {
    format!("cosignature/v1\ntime {time}\n{text}").into_bytes()
}

/// A key that signs notes under a name, by one of the two signature types.
pub struct NoteSigner {
    name: String,
    kind: u8,
    key: SigningKey,
}

impl NoteSigner {
    /// A signer of plain Ed25519 note signatures (a log signing its checkpoints).
    pub fn ed25519(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_string(),
            kind: ED25519,
            key,
        })
    }

    /// A signer of cosignature/v1 signatures (a witness).
    pub fn cosigner(name: &str, key: SigningKey) -> Result<Self, NoteError> {
        check_name(name)?;
        Ok(Self {
            name: name.to_string(),
            kind: COSIGNATURE_V1,
            key,
        })
    }

    /// The verifier key of this signer.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            kind: self.kind,
            key: self.key.verifying_key(),
        }
    }

    /// Signs `text` (a cosigner at `time`, seconds since the epoch).
    pub fn sign(&self, text: &str, time: u64) -> NoteSignature {
        let bytes = match self.kind {
            COSIGNATURE_V1 => {
                let sig = self.key.sign(&cosigned_message(text, time));
                let mut b = time.to_be_bytes().to_vec();
                b.extend_from_slice(&sig.to_bytes());
                b
            }
            _ => self.key.sign(text.as_bytes()).to_bytes().to_vec(),
        };
        NoteSignature {
            name: self.name.clone(),
            key_id: key_id(&self.name, self.kind, self.key.verifying_key().as_bytes()),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The example of c2sp.org/signed-note.
    const VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    #[test]
    fn the_specification_example_verifies() {
        let key = VerifierKey::parse(VKEY).unwrap();
        assert_eq!(key.to_string(), VKEY);
        let note = Note::parse(NOTE).unwrap();
        assert_eq!(note.text, "This is an example message.\n");
        assert_eq!(note.to_string(), NOTE);
        let signed = note.verify(std::slice::from_ref(&key)).unwrap();
        assert_eq!(signed.len(), 1);
        // One changed letter, and the note is refused.
        let changed = NOTE.replace("example message", "example massage");
        assert_eq!(
            Note::parse(&changed).unwrap().verify(&[key]),
            Err(NoteError::BadSignature("example.com/foo".into()))
        );
    }

    #[test]
    fn unknown_keys_are_ignored_but_one_must_verify() {
        let signer =
            NoteSigner::ed25519("log.example/a", SigningKey::from_bytes(&[1; 32])).unwrap();
        let other = NoteSigner::ed25519("log.example/b", SigningKey::from_bytes(&[2; 32])).unwrap();
        let text = "hello\n";
        let note = Note {
            text: text.into(),
            signatures: vec![other.sign(text, 0), signer.sign(text, 0)],
        };
        let parsed = Note::parse(&note.to_string()).unwrap();
        assert_eq!(parsed, note);
        assert_eq!(parsed.verify(&[signer.verifier()]).unwrap().len(), 1);
        let stranger =
            NoteSigner::ed25519("log.example/c", SigningKey::from_bytes(&[3; 32])).unwrap();
        assert_eq!(
            parsed.verify(&[stranger.verifier()]),
            Err(NoteError::Unverified)
        );
        // Same name, another key: its ID differs, so it is ignored, not failed.
        let impostor =
            NoteSigner::ed25519("log.example/a", SigningKey::from_bytes(&[4; 32])).unwrap();
        assert_eq!(
            parsed.verify(&[impostor.verifier()]),
            Err(NoteError::Unverified)
        );
    }

    #[test]
    fn a_cosignature_carries_its_time_and_signs_it() {
        let w =
            NoteSigner::cosigner("witness.example/w1", SigningKey::from_bytes(&[5; 32])).unwrap();
        let text = "log.example/a\n5\nAAAA\n";
        let sig = w.sign(text, 1_679_315_147);
        let note = Note {
            text: text.into(),
            signatures: vec![sig.clone()],
        };
        let key = w.verifier();
        assert_eq!(key.kind, COSIGNATURE_V1);
        assert_eq!(
            note.verify(std::slice::from_ref(&key)).unwrap()[0].1,
            Some(1_679_315_147)
        );
        // Another time in the same signature does not verify.
        let mut moved = sig;
        moved.bytes[7] ^= 1;
        let note = Note {
            text: text.into(),
            signatures: vec![moved],
        };
        assert!(note.verify(&[key]).is_err());
    }

    #[test]
    fn malformed_notes_and_keys_are_refused() {
        for bad in [
            "no blank line\n\u{2014} a AAAAAAA=\n",
            "text\n\n",
            "text\n\n\u{2014} a\n",
            "text\n\nsomething else\n",
            "text\n\n\u{2014} a !!!\n",
            "tab\there\n\n\u{2014} a AAAAAAAA\n",
            "text\n\n\u{2014} a AAAAAAAA",
        ] {
            assert!(Note::parse(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "name+530d903a",
            "na me+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
            "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2",
        ] {
            assert!(VerifierKey::parse(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_NOTE_BYTES) + "\n\n\u{2014} a AAAAAAAA\n";
        assert_eq!(Note::parse(&long), Err(NoteError::TooLong));
    }

    proptest! {
        #[test]
        fn any_text_survives_signing_and_reading(text in "[^\\x00-\\x1f]{0,200}", seed in any::<[u8; 32]>()) {
            let text = format!("{text}\n");
            let s = NoteSigner::ed25519("n.example/x", SigningKey::from_bytes(&seed)).unwrap();
            let note = Note { text: text.clone(), signatures: vec![s.sign(&text, 0)] };
            let parsed = Note::parse(&note.to_string()).unwrap();
            prop_assert_eq!(&parsed, &note);
            prop_assert!(parsed.verify(&[s.verifier()]).is_ok());
        }

        #[test]
        fn verifier_keys_read_back_as_written(seed in any::<[u8; 32]>(), cosigner in any::<bool>()) {
            let key = SigningKey::from_bytes(&seed);
            let s = if cosigner {
                NoteSigner::cosigner("w.example/1", key)
            } else {
                NoteSigner::ed25519("log.example", key)
            }
            .unwrap();
            let v = s.verifier();
            prop_assert_eq!(VerifierKey::parse(&v.to_string()).unwrap(), v);
        }

        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,300}") {
            let _ = Note::parse(&s);
            let _ = VerifierKey::parse(&s);
        }
    }
}
