//! The limits on My Portal's sign-in and activation: how many tries an address gets,
//! how an account under attack is slowed without being locked against its owner, and
//! how much password hashing may run at once.
//!
//! - Every try is counted **before** its password is hashed, under one lock, so a
//!   hundred simultaneous tries cannot slip past the count; a try that succeeds is
//!   refunded.
//! - The account is the **parsed** medical ID, so other spellings of it (separators,
//!   full-width digits) count as the same account.
//! - An **address** gets `ADDRESS_TRIES` failed tries per `WINDOW`, then waits out the
//!   window. An **account** gets `ACCOUNT_FREE_TRIES` from anywhere, then every further
//!   try must wait twice as long as the last (up to `ACCOUNT_MAX_WAIT`): guessing from
//!   many addresses is slowed to a crawl, and the owner is slowed, never shut out.
//! - The counters are bounded (`MAX_TRACKED`); when full, unknown addresses are
//!   refused rather than remembered.
//! - Argon2 costs ~19 MiB and tens of milliseconds a hash; `HASHING_AT_ONCE` bound how
//!   many run together, and a try that cannot start within `HASH_WAIT` is refused.

use iryo_proto::MedicalId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failed tries an address may make in `WINDOW`.
pub const ADDRESS_TRIES: u32 = 5;
/// The window of the address limit.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Failed tries an account may take, from any addresses, before it is slowed.
pub const ACCOUNT_FREE_TRIES: u32 = 5;
/// The longest wait between tries an account is slowed to.
pub const ACCOUNT_MAX_WAIT: Duration = Duration::from_secs(15 * 60);
/// Addresses and accounts remembered at most.
pub const MAX_TRACKED: usize = 100_000;
/// Password hashes computed at once.
pub const HASHING_AT_ONCE: usize = 2;
/// How long a try may wait for a hashing slot.
pub const HASH_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Count {
    failures: u32,
    since: Instant,
    /// No try before this moment (accounts only).
    not_before: Instant,
}

#[derive(Default)]
struct Counts {
    addresses: HashMap<IpAddr, Count>,
    accounts: HashMap<u64, Count>,
}

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
    address: IpAddr,
    account: Option<u64>,
}

pub struct Limits {
    counts: Mutex<Counts>,
    hashing: Arc<tokio::sync::Semaphore>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            hashing: Arc::new(tokio::sync::Semaphore::new(HASHING_AT_ONCE)),
        }
    }
}

/// The wait an account owes after `failures` failed tries.
fn account_wait(failures: u32) -> Duration {
    if failures < ACCOUNT_FREE_TRIES {
        return Duration::ZERO;
    }
    let doublings = (failures - ACCOUNT_FREE_TRIES).min(16);
    (Duration::from_secs(1) * (1u32 << doublings)).min(ACCOUNT_MAX_WAIT)
}

impl Limits {
    /// Admits a try from `address` for `account` (the parsed medical ID, when the form
    /// held one) at `now`, counting it as a failure at once.
    pub fn admit(
        &self,
        address: IpAddr,
        account: Option<MedicalId>,
        now: Instant,
    ) -> Result<Ticket, Refused> {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = |k: &Count| now.duration_since(k.since) < WINDOW || k.not_before > now;
        if c.addresses.len() + c.accounts.len() >= MAX_TRACKED {
            c.addresses.retain(|_, k| fresh(k));
            c.accounts.retain(|_, k| fresh(k));
        }
        let account = account.map(MedicalId::as_u64);
        let known = c.addresses.contains_key(&address)
            && account.is_none_or(|a| c.accounts.contains_key(&a));
        if !known && c.addresses.len() + c.accounts.len() + 2 > MAX_TRACKED {
            return Err(Refused::Busy);
        }
        if let Some(k) = c.addresses.get_mut(&address) {
            if now.duration_since(k.since) >= WINDOW {
                *k = Count {
                    failures: 0,
                    since: now,
                    not_before: now,
                };
            } else if k.failures >= ADDRESS_TRIES {
                return Err(Refused::Address(
                    WINDOW.saturating_sub(now.duration_since(k.since)),
                ));
            }
        }
        if let Some(a) = account {
            if let Some(k) = c.accounts.get(&a) {
                if k.not_before > now {
                    return Err(Refused::Account(k.not_before.duration_since(now)));
                }
            }
        }
        let blank = Count {
            failures: 0,
            since: now,
            not_before: now,
        };
        c.addresses.entry(address).or_insert(blank).failures += 1;
        if let Some(a) = account {
            let k = c.accounts.entry(a).or_insert(blank);
            k.failures += 1;
            k.not_before = now + account_wait(k.failures);
        }
        Ok(Ticket { address, account })
    }

    /// The try succeeded: the account starts afresh and the address gets its try back.
    pub fn succeeded(&self, ticket: Ticket) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(a) = ticket.account {
            c.accounts.remove(&a);
        }
        if let Some(k) = c.addresses.get_mut(&ticket.address) {
            k.failures = k.failures.saturating_sub(1);
        }
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

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn an_address_gets_five_tries_a_window() {
        let l = Limits::default();
        let t0 = Instant::now();
        for i in 0..ADDRESS_TRIES {
            let at = t0 + Duration::from_secs(u64::from(i) * 100);
            assert!(l.admit(ip(1), None, at).is_ok(), "try {i}");
        }
        assert!(matches!(
            l.admit(ip(1), None, t0 + Duration::from_secs(500)),
            Err(Refused::Address(_))
        ));
        assert!(l
            .admit(ip(1), None, t0 + WINDOW + Duration::from_secs(1))
            .is_ok());
    }

    #[test]
    fn an_account_is_slowed_from_every_address_but_never_locked() {
        let l = Limits::default();
        let id = MedicalId::from_body(42);
        let t0 = Instant::now();
        // Five guesses from five addresses go through at once.
        for n in 0..ACCOUNT_FREE_TRIES {
            assert!(l.admit(ip(n as u8), Some(id), t0).is_ok());
        }
        // The sixth has to wait, from any address, and the wait grows.
        assert_eq!(
            l.admit(ip(9), Some(id), t0).err(),
            Some(Refused::Account(Duration::from_secs(1)))
        );
        let later = t0 + Duration::from_secs(1);
        assert!(l.admit(ip(10), Some(id), later).is_ok());
        assert_eq!(
            l.admit(ip(11), Some(id), later).err(),
            Some(Refused::Account(Duration::from_secs(2)))
        );
        // The owner, after the wait, signs in; the account starts afresh.
        let t = l
            .admit(ip(200), Some(id), later + Duration::from_secs(2))
            .unwrap();
        l.succeeded(t);
        assert!(l
            .admit(ip(201), Some(id), later + Duration::from_secs(2))
            .is_ok());
        // The wait never exceeds the cap.
        assert_eq!(account_wait(1000), ACCOUNT_MAX_WAIT);
    }

    #[test]
    fn simultaneous_tries_are_counted_before_any_is_checked() {
        let l = Arc::new(Limits::default());
        let now = Instant::now();
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    let l = l.clone();
                    s.spawn(move || l.admit(ip(7), None, now).is_ok())
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
    fn memory_is_bounded() {
        let l = Limits::default();
        let now = Instant::now();
        let mut refused = 0;
        for n in 0..(MAX_TRACKED as u32 + 10) {
            let addr = IpAddr::from(std::net::Ipv6Addr::from(u128::from(n)));
            if l.admit(addr, None, now).is_err() {
                refused += 1;
            }
        }
        assert!(refused >= 10);
        let c = l.counts.lock().unwrap();
        assert!(c.addresses.len() + c.accounts.len() <= MAX_TRACKED);
    }
}
