//! My Portal's sessions, kept in the store (`store::front`) under the SHA-256 of their
//! token, so a restart or a second `serve` on the same database signs no one out. The
//! limits on sign-in are in `super::limits`.

use super::{blocking, Web, WebError};
use crate::registry::now;
use crate::store::{Front, SessionRecord, StoreError};
use iryo_proto::MedicalId;
use sha2::{Digest, Sha256};
use std::sync::Arc;

pub const SESSION_COOKIE: &str = "iryo_session";
/// A form's token before sign-in (double-submit cookie).
pub const FORM_COOKIE: &str = "iryo_form";
/// Seconds a session lives without being used.
pub const IDLE: i64 = 30 * 60;
/// A session is written back with a new expiry at most this often (seconds), so
/// reading pages does not write to the store at every click.
const TOUCH_EVERY: i64 = 60;

#[derive(Debug, Clone)]
pub struct Session {
    pub pid: u64,
    pub medical_id: MedicalId,
    /// Every form of the session carries it; a POST without it is refused.
    pub csrf: String,
}

/// 256 random bits as hex.
pub fn token() -> String {
    let mut b = [0u8; 32];
    if getrandom::fill(&mut b).is_err() {
        // No randomness means no safe token: fail closed with an unusable one.
        return String::new();
    }
    iryo_proto::merkle::to_hex(&b)
}

/// Compares secrets in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && !a.is_empty()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What the store keeps of a token.
fn key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Starts a session; returns its token (empty when there is no randomness: no session
/// rather than a guessable one). Expired sessions are swept at the same time.
pub fn create(store: &dyn Front, pid: u64, medical_id: MedicalId) -> Result<String, StoreError> {
    let t = token();
    let csrf = token();
    if t.is_empty() || csrf.is_empty() {
        return Ok(String::new());
    }
    let at = now();
    store.end_sessions_before(at)?;
    store.put_session(
        &key(&t),
        &SessionRecord {
            pid,
            medical_id,
            csrf,
            expires: at + IDLE,
        },
    )?;
    Ok(t)
}

/// The live session of `token`, kept alive for another idle period.
pub fn get(store: &dyn Front, token: &str) -> Result<Option<Session>, StoreError> {
    let k = key(token);
    let Some(mut s) = store.session(&k)? else {
        return Ok(None);
    };
    let at = now();
    if s.expires <= at {
        store.end_session(&k)?;
        return Ok(None);
    }
    if s.expires - at < IDLE - TOUCH_EVERY {
        s.expires = at + IDLE;
        store.put_session(&k, &s)?;
    }
    Ok(Some(Session {
        pid: s.pid,
        medical_id: s.medical_id,
        csrf: s.csrf,
    }))
}

pub fn end(store: &dyn Front, token: &str) -> Result<(), StoreError> {
    store.end_session(&key(token))
}

/// `get` from an async handler, on a blocking thread.
pub async fn current(web: &Arc<Web>, token: String) -> Result<Option<Session>, WebError> {
    let w = web.clone();
    blocking(move || Ok(get(&*w.store, &token)?)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::create(
            &dir.path().join("s.redb"),
            16,
            crate::issuance::Method::Random,
        )
        .unwrap();
        let id = MedicalId::from_body(123456789012345);
        let t = create(&store, 1, id).unwrap();
        let sess = get(&store, &t).unwrap().unwrap();
        assert_eq!(sess.pid, 1);
        assert!(same(&sess.csrf, &sess.csrf.clone()));
        assert!(!same(&sess.csrf, &token()));
        assert!(!same("", ""));
        assert!(get(&store, &token()).unwrap().is_none());
        end(&store, &t).unwrap();
        assert!(get(&store, &t).unwrap().is_none());
    }
}
