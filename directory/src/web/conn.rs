//! What one client may hold of the HTTPS front: a few connections per address (so one
//! client cannot take every slot), and a connection only while it moves — one that
//! sends and receives nothing for `idle`, or trickles slower than `min_rate` bytes a
//! second once its grace is over, is closed. Handshake and header times are bounded
//! where the connection is served (`super::start`).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The limits, from `[https]` in the configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub per_address: usize,
    pub idle: Duration,
    pub min_rate: u64,
}

/// Connections open per client address.
#[derive(Default)]
pub struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in `PerAddress`, given back when dropped.
pub struct Held {
    table: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    /// A place for one more connection from `ip`, if it has fewer than `max`.
    pub fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Held> {
        let mut m = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            table: self.clone(),
            ip,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// A stream that fails once it has moved nothing for `idle`, or has moved, on
/// average, fewer than `min_rate` bytes a second after the first `idle`.
pub struct Moving<S> {
    inner: S,
    limits: ConnLimits,
    started: Instant,
    moved: u64,
    last: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<S> Moving<S> {
    pub fn new(inner: S, limits: ConnLimits) -> Self {
        let now = Instant::now();
        Self {
            inner,
            limits,
            started: now,
            moved: 0,
            last: now,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle)),
        }
    }

    /// The moment the connection must have moved again: the idle limit from its last
    /// progress, and no later than the rate allows for what it has moved so far.
    fn deadline(&self) -> Instant {
        let by_rate = self.started
            + self.limits.idle
            + Duration::from_secs(self.moved / self.limits.min_rate.max(1));
        (self.last + self.limits.idle).min(by_rate.max(self.last))
    }

    fn progressed(&mut self, n: usize) {
        if n > 0 {
            self.moved += n as u64;
            self.last = Instant::now();
        }
    }

    /// `Pending` while within the limits (the timer wakes the task at the deadline),
    /// an error once past them.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let deadline = self.deadline();
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped moving, or moved too slowly",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Moving<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                let n = buf.filled().len() - before;
                self.progressed(n);
                Poll::Ready(r)
            }
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Moving<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.progressed(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: ConnLimits = ConnLimits {
        per_address: 2,
        idle: Duration::from_millis(200),
        min_rate: 100,
    };

    #[test]
    fn an_address_holds_at_most_its_share() {
        let t = Arc::new(PerAddress::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let a = t.take(ip, 2).unwrap();
        let _b = t.take(ip, 2).unwrap();
        assert!(t.take(ip, 2).is_none());
        assert!(t.take([127, 0, 0, 2].into(), 2).is_some());
        drop(a);
        assert!(t.take(ip, 2).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_or_trickling_peer_is_cut_off() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = Moving::new(server, LIMITS);
        let mut buf = [0u8; 8];
        let silent = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(matches!(silent, Ok(Err(_))), "idle past the limit");
        drop(client);

        let (mut client, server) = tokio::io::duplex(64);
        let mut s = Moving::new(server, LIMITS);
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                if client.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let mut total = 0;
        let cut = loop {
            match s.read(&mut buf).await {
                Ok(0) => break false,
                Ok(n) => total += n,
                Err(_) => break true,
            }
        };
        assert!(
            cut && total < 20,
            "a byte every 150 ms is below 100 B/s: {total}"
        );
        trickle.abort();
    }
}
