//! My Portal's sessions. They live in memory: a restart signs everyone out, which
//! loses nothing a person cannot redo. The limits on sign-in are in `super::limits`.

use iryo_proto::MedicalId;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SESSION_COOKIE: &str = "iryo_session";
/// A form's token before sign-in (double-submit cookie).
pub const FORM_COOKIE: &str = "iryo_form";
const IDLE: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
pub struct Session {
    pub pid: u64,
    pub medical_id: MedicalId,
    /// Every form of the session carries it; a POST without it is refused.
    pub csrf: String,
    expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
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

impl Sessions {
    pub fn create(&self, pid: u64, medical_id: MedicalId) -> (String, Session) {
        let s = Session {
            pid,
            medical_id,
            csrf: token(),
            expires: Instant::now() + IDLE,
        };
        let t = token();
        if t.is_empty() {
            // No randomness: no session rather than a guessable one.
            return (t, s);
        }
        if let Ok(mut map) = self.sessions.lock() {
            map.retain(|_, v| v.expires > Instant::now());
            map.insert(t.clone(), s.clone());
        }
        (t, s)
    }

    /// The live session of `token`, kept alive for another idle period.
    pub fn get(&self, token: &str) -> Option<Session> {
        let mut map = self.sessions.lock().ok()?;
        let s = map.get_mut(token)?;
        if s.expires <= Instant::now() {
            map.remove(token);
            return None;
        }
        s.expires = Instant::now() + IDLE;
        Some(s.clone())
    }

    pub fn end(&self, token: &str) {
        if let Ok(mut map) = self.sessions.lock() {
            map.remove(token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_and_tokens() {
        let s = Sessions::default();
        let id = MedicalId::from_body(123456789012345);
        let (t, sess) = s.create(1, id);
        assert_eq!(s.get(&t).map(|x| x.pid), Some(1));
        assert!(same(&sess.csrf, &sess.csrf.clone()));
        assert!(!same(&sess.csrf, &token()));
        assert!(!same("", ""));
        s.end(&t);
        assert!(s.get(&t).is_none());
    }
}
