//! The limits on My Portal's sign-in and activation: how many tries an address gets,
//! how an account under attack is slowed without being locked against its owner, and
//! how much password hashing may run at once.
//!
//! - Every try is counted **before** its password is hashed, in one transaction of the
//!   store under one lock (`store::TryCounts`), so a hundred simultaneous tries, at one
//!   `serve` or several on the same database, cannot slip past the count; a try that
//!   succeeds is refunded. A restart forgets nothing.
//! - The account is the **parsed** medical ID, so other spellings of it (separators,
//!   full-width digits) count as the same account.
//! - An **address** gets `ADDRESS_TRIES` failed tries per `WINDOW`, then waits out the
//!   window. An **account** gets `ACCOUNT_FREE_TRIES` from anywhere, then every further
//!   try must wait twice as long as the last (up to `ACCOUNT_MAX_WAIT`): guessing from
//!   many addresses is slowed to a crawl, and the owner is slowed, never shut out.
//! - The counts are bounded (`MAX_TRACKED`): stale ones are forgotten every minute,
//!   and when the store is full of fresh ones, unknown addresses are refused rather
//!   than remembered.
//! - Argon2 costs ~19 MiB and tens of milliseconds a hash; `HASHING_AT_ONCE` bound how
//!   many run together, and a try that cannot start within `HASH_WAIT` is refused.

use crate::store::{StoreError, TryCount, TryCounts};
use iryo_proto::MedicalId;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Failed tries an address may make in `WINDOW`.
pub const ADDRESS_TRIES: u32 = 5;
/// The window of the address limit.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed tries an account may take, from any addresses, before it is slowed.
pub const ACCOUNT_FREE_TRIES: u32 = 5;
/// The longest wait between tries an account is slowed to.
pub const ACCOUNT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Addresses and accounts remembered at most.
pub const MAX_TRACKED: u64 = 100_000;
/// Password hashes computed at once.
pub const HASHING_AT_ONCE: usize = 2;
/// How long a try may wait for a hashing slot.
pub const HASH_WAIT: Duration = Duration::from_secs(10);
/// How often stale counts are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Why a try is refused, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// This address has failed too often; it may try again after the wait.
    Address(Duration),
    /// This account is being guessed at; the next try may come after the wait.
    Account(Duration),
    /// Too many tries are being checked at once; try again shortly.
    Busy,
}

/// A try that was admitted and counted as a failure until `Limits::succeeded`.
#[derive(Debug)]
#[must_use = "a try that succeeds is handed back to `Limits::succeeded`"]
pub struct Ticket {
    subjects: Vec<String>,
}

pub struct Limits {
    hashing: Arc<tokio::sync::Semaphore>,
    /// When this process last forgot stale counts (milliseconds since the epoch).
    swept: Mutex<Option<i64>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            hashing: Arc::new(tokio::sync::Semaphore::new(HASHING_AT_ONCE)),
            swept: Mutex::new(None),
        }
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The wait an account owes after `failures` failed tries.
fn account_wait(failures: u32) -> Duration {
    if failures < ACCOUNT_FREE_TRIES {
        return Duration::ZERO;
    }
    let doublings = (failures - ACCOUNT_FREE_TRIES).min(16);
    (Duration::from_secs(1) * (1u32 << doublings)).min(ACCOUNT_MAX_WAIT)
}

/// The subjects a try is counted against: its address, and its account if it named one.
fn subjects(address: IpAddr, account: Option<MedicalId>) -> Vec<String> {
    let mut s = vec![format!("a:{address}")];
    if let Some(a) = account {
        s.push(format!("m:{}", a.as_u64()));
    }
    s
}

/// Decides one try on the counts of its address (`counts[0]`) and account
/// (`counts[1]`, when it named one), counting it as a failure when admitted.
fn decide(counts: &mut [Option<TryCount>], tracked: u64, now: i64) -> Result<(), Refused> {
    let known = counts.iter().all(Option::is_some);
    if !known && tracked + 2 > MAX_TRACKED {
        return Err(Refused::Busy);
    }
    let blank = TryCount {
        failures: 0,
        since_ms: now,
        not_before_ms: now,
    };
    if let Some(Some(k)) = counts.first_mut() {
        let age = now.saturating_sub(k.since_ms);
        if age >= ms(WINDOW) {
            *k = blank;
        } else if k.failures >= ADDRESS_TRIES {
            return Err(Refused::Address(duration(ms(WINDOW) - age)));
        }
    }
    if let Some(Some(k)) = counts.get(1) {
        if k.not_before_ms > now {
            return Err(Refused::Account(duration(k.not_before_ms - now)));
        }
    }
    if let Some(address) = counts.first_mut() {
        address.get_or_insert(blank).failures += 1;
    }
    if let Some(account) = counts.get_mut(1) {
        let k = account.get_or_insert(blank);
        k.failures += 1;
        k.not_before_ms = now + ms(account_wait(k.failures));
    }
    Ok(())
}

impl Limits {
    /// Admits a try from `address` for `account` (the parsed medical ID, when the form
    /// held one) at `now` (milliseconds since the epoch), counting it as a failure at
    /// once. Blocks on the store: call it from a blocking thread.
    pub fn admit(
        &self,
        store: &dyn TryCounts,
        address: IpAddr,
        account: Option<MedicalId>,
        now: i64,
    ) -> Result<Result<Ticket, Refused>, StoreError> {
        self.sweep(store, now, SWEEP_EVERY)?;
        let subjects = subjects(address, account);
        let mut outcome = Err(Refused::Busy);
        store.count_tries(&subjects, &mut |c, tracked| {
            outcome = decide(c, tracked, now);
        })?;
        if outcome == Err(Refused::Busy) && self.sweep(store, now, Duration::from_secs(1))? {
            store.count_tries(&subjects, &mut |c, tracked| {
                outcome = decide(c, tracked, now);
            })?;
        }
        Ok(outcome.map(|()| Ticket { subjects }))
    }

    /// The try succeeded: the account starts afresh and the address gets its try back.
    pub fn succeeded(&self, store: &dyn TryCounts, ticket: Ticket) -> Result<(), StoreError> {
        store.count_tries(&ticket.subjects, &mut |c, _| {
            if let Some(account) = c.get_mut(1) {
                *account = None;
            }
            if let Some(Some(k)) = c.first_mut() {
                k.failures = k.failures.saturating_sub(1);
            }
        })
    }

    /// Forgets stale counts unless this process did within `every`; says if it did.
    fn sweep(&self, store: &dyn TryCounts, now: i64, every: Duration) -> Result<bool, StoreError> {
        {
            let mut swept = self.swept.lock().unwrap_or_else(PoisonError::into_inner);
            if swept.is_some_and(|at| now.saturating_sub(at) < ms(every)) {
                return Ok(false);
            }
            *swept = Some(now);
        }
        let gone = store.forget_tries(now - ms(WINDOW), now)?;
        if gone > 0 {
            tracing::debug!(gone, "stale sign-in counts forgotten");
        }
        Ok(true)
    }

    /// A slot to hash a password in; `Busy` when none frees up within `HASH_WAIT`.
    pub async fn hashing(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Refused> {
        let slot = self.hashing.clone().acquire_owned();
        match tokio::time::timeout(HASH_WAIT, slot).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Refused::Busy),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The counts in a map under one lock: these tests are of the decisions; the
    /// stores' own transactions are tried by the end-to-end tests.
    #[derive(Default)]
    struct Counts(Mutex<HashMap<String, TryCount>>);

    impl TryCounts for Counts {
        fn count_tries(
            &self,
            subjects: &[String],
            decide: &mut dyn FnMut(&mut [Option<TryCount>], u64),
        ) -> crate::store::Result<()> {
            let mut map = self.0.lock().unwrap();
            let mut counts: Vec<_> = subjects.iter().map(|s| map.get(s).copied()).collect();
            decide(&mut counts, map.len() as u64);
            for (s, c) in subjects.iter().zip(counts) {
                match c {
                    Some(c) => map.insert(s.clone(), c),
                    None => map.remove(s),
                };
            }
            Ok(())
        }

        fn forget_tries(&self, window_before: i64, wait_before: i64) -> crate::store::Result<u64> {
            let mut map = self.0.lock().unwrap();
            let before = map.len();
            map.retain(|_, c| c.since_ms >= window_before || c.not_before_ms >= wait_before);
            Ok((before - map.len()) as u64)
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    fn secs(n: u64) -> i64 {
        ms(Duration::from_secs(n))
    }

    fn admit(
        l: &Limits,
        c: &Counts,
        a: IpAddr,
        id: Option<MedicalId>,
        at: i64,
    ) -> Result<Ticket, Refused> {
        l.admit(c, a, id, at).unwrap()
    }

    #[test]
    fn an_address_gets_five_tries_a_window() {
        let (l, c) = (Limits::default(), Counts::default());
        let t0 = now_ms();
        for i in 0..ADDRESS_TRIES {
            let at = t0 + secs(u64::from(i) * 100);
            assert!(admit(&l, &c, ip(1), None, at).is_ok(), "try {i}");
        }
        assert!(matches!(
            admit(&l, &c, ip(1), None, t0 + secs(500)),
            Err(Refused::Address(_))
        ));
        assert!(admit(&l, &c, ip(1), None, t0 + ms(WINDOW) + secs(1)).is_ok());
    }

    #[test]
    fn an_account_is_slowed_from_every_address_but_never_locked() {
        let (l, c) = (Limits::default(), Counts::default());
        let id = MedicalId::from_body(42);
        let t0 = now_ms();
        // Five guesses from five addresses go through at once.
        for n in 0..ACCOUNT_FREE_TRIES {
            assert!(admit(&l, &c, ip(n as u8), Some(id), t0).is_ok());
        }
        // The sixth has to wait, from any address, and the wait grows.
        assert_eq!(
            admit(&l, &c, ip(9), Some(id), t0).err(),
            Some(Refused::Account(Duration::from_secs(1)))
        );
        let later = t0 + secs(1);
        assert!(admit(&l, &c, ip(10), Some(id), later).is_ok());
        assert_eq!(
            admit(&l, &c, ip(11), Some(id), later).err(),
            Some(Refused::Account(Duration::from_secs(2)))
        );
        // The owner, after the wait, signs in; the account starts afresh.
        let t = admit(&l, &c, ip(200), Some(id), later + secs(2)).unwrap();
        l.succeeded(&c, t).unwrap();
        assert!(admit(&l, &c, ip(201), Some(id), later + secs(2)).is_ok());
        // The wait never exceeds the cap.
        assert_eq!(account_wait(1000), ACCOUNT_MAX_WAIT);
    }

    #[test]
    fn simultaneous_tries_are_counted_before_any_is_checked() {
        let l = Arc::new(Limits::default());
        let c = Arc::new(Counts::default());
        let now = now_ms();
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    let (l, c) = (l.clone(), c.clone());
                    s.spawn(move || l.admit(&*c, ip(7), None, now).unwrap().is_ok())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(admitted, ADDRESS_TRIES as usize);
    }

    #[test]
    fn what_is_remembered_is_bounded() {
        let (l, c) = (Limits::default(), Counts::default());
        let now = now_ms();
        let mut refused = 0;
        for n in 0..(MAX_TRACKED + 10) {
            let addr = IpAddr::from(std::net::Ipv6Addr::from(u128::from(n)));
            if admit(&l, &c, addr, None, now).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 10);
        assert!(c.0.lock().unwrap().len() as u64 <= MAX_TRACKED);
        // Once their window has passed, the counts are forgotten and new addresses
        // are admitted again.
        let later = now + ms(WINDOW) + secs(61);
        assert!(admit(&l, &c, ip(1), None, later).is_ok());
        assert!(c.0.lock().unwrap().len() < 10);
    }
}
