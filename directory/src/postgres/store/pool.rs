//! The store's connections: `pool_size` of them, each with the single-threaded runtime
//! that drives it, so the group-commit thread, the HTTPS front and an operator's read
//! do not queue behind one another on one connection. Each is made on first use and
//! made again when it was lost (the server restarted, failed over, or the network
//! dropped it), so a process outlives its database's outages without a restart.

use super::off_async;
use crate::postgres::prepared::Prepared;
use crate::postgres::DatabaseUrl;
use crate::store::{Result, StoreError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio_postgres::Client;

/// One connection and the runtime that drives it: whichever thread waits on the
/// connection (`block_on`) drives it, rather than a worker thread of its own. Every
/// round trip would otherwise wake that thread and then the caller, and on a busy
/// machine each wake-up waits for the scheduler — about 10 ms per group commit under
/// the network benchmark's load.
pub(super) struct Conn {
    rt: Option<tokio::runtime::Runtime>,
    client: Client,
    /// Statements prepared on this connection; a new connection prepares its own.
    prepared: Prepared,
}

impl Conn {
    pub(super) fn connect(url: &DatabaseUrl) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Inconsistent(format!("cannot start a runtime: {e}")))?;
        let client = off_async(|| rt.block_on(url.connect()))?;
        Ok(Self {
            rt: Some(rt),
            client,
            prepared: Prepared::default(),
        })
    }

    /// The runtime to wait on this connection with (`Runtime::block_on`, never a
    /// handle's, since only it drives the connection) and the connection.
    pub(super) fn parts(&mut self) -> Result<(&tokio::runtime::Runtime, &mut Client)> {
        let (rt, client, _) = self.all()?;
        Ok((rt, client))
    }

    /// `parts`, and the statements prepared on the connection.
    pub(super) fn all(&mut self) -> Result<(&tokio::runtime::Runtime, &mut Client, &Prepared)> {
        let rt = self
            .rt
            .as_ref()
            .ok_or_else(|| StoreError::Inconsistent("the store's runtime has stopped".into()))?;
        Ok((rt, &mut self.client, &self.prepared))
    }
}

impl Drop for Conn {
    /// Stopped without waiting: a store may be dropped on an async thread, where
    /// waiting is not allowed.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub(super) struct Pool {
    url: DatabaseUrl,
    slots: Vec<Mutex<Option<Conn>>>,
    next: AtomicUsize,
}

/// A connection held for one transaction or read.
pub(super) struct Held<'a>(MutexGuard<'a, Option<Conn>>);

impl Held<'_> {
    pub(super) fn conn(&mut self) -> Result<&mut Conn> {
        self.0
            .as_mut()
            .ok_or_else(|| StoreError::Inconsistent("a pooled connection is missing".into()))
    }
}

impl Pool {
    /// A pool of `size` connections (at least one), `first` among them.
    pub(super) fn new(url: &DatabaseUrl, first: Conn, size: usize) -> Self {
        let mut slots: Vec<Mutex<Option<Conn>>> =
            (0..size.max(1)).map(|_| Mutex::new(None)).collect();
        slots[0] = Mutex::new(Some(first));
        Self {
            url: url.clone(),
            slots,
            next: AtomicUsize::new(0),
        }
    }

    /// A free connection, or the next one in turn when all are busy; connected (again)
    /// first if it is not. While the database cannot be reached, each caller gets the
    /// connection's error after at most the connect timeout.
    pub(super) fn get(&self) -> Result<Held<'_>> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let free = (0..n).find_map(|i| self.slots[(start + i) % n].try_lock().ok());
        // A panic while holding a connection leaves it usable: every transaction that
        // was open is rolled back when its handle drops.
        let mut guard = free.unwrap_or_else(|| {
            self.slots[start]
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
            let again = guard.is_some();
            // The old runtime goes before the new connection is made.
            *guard = None;
            *guard = Some(Conn::connect(&self.url)?);
            if again {
                tracing::info!(database = %self.url, "connected to the database again");
            }
        }
        Ok(Held(guard))
    }
}
