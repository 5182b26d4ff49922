//! This node's clock against the agency's. Grants carry the moment the directory issued
//! them, so each grant that arrives tells how far apart the two clocks are (give or take
//! the round trip). A node whose clock drifts past the tolerance refuses good grants and
//! accepts stale ones; it warns once its clock is half-way there, in the log and in
//! `/metrics`, while there is still time to fix it.

use crate::metrics::metrics;
use std::sync::atomic::{AtomicBool, Ordering};

/// The clock tolerance and what was last seen of the agency's clock.
pub struct Clock {
    tolerance: i64,
    far: AtomicBool,
}

impl Clock {
    /// A clock tolerating `tolerance` seconds of difference with the agency's.
    pub fn new(tolerance: i64) -> Self {
        Self {
            tolerance,
            far: AtomicBool::new(false),
        }
    }

    /// Seconds of difference with the agency tolerated.
    pub fn tolerance(&self) -> i64 {
        self.tolerance
    }

    /// Notes the agency's time `theirs` as seen at this node's time `ours`. Warns when
    /// the difference passes half the tolerance, and once more when it is back within.
    /// Returns the difference (positive: the agency's clock is ahead).
    pub fn observe(&self, theirs: i64, ours: i64) -> i64 {
        let drift = theirs.saturating_sub(ours);
        metrics().clock_drift_seconds.set(drift);
        let far = drift.saturating_abs().saturating_mul(2) > self.tolerance;
        if far != self.far.swap(far, Ordering::AcqRel) {
            if far {
                tracing::warn!(
                    drift_seconds = drift,
                    tolerance_seconds = self.tolerance,
                    "this node's clock differs from the agency's by more than half the \
                     tolerance: grants will be refused past the tolerance; check NTP"
                );
            } else {
                tracing::info!(
                    drift_seconds = drift,
                    "this node's clock agrees with the agency's again"
                );
            }
        }
        drift
    }

    /// Whether the last difference seen was past half the tolerance.
    pub fn is_far(&self) -> bool {
        self.far.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_past_half_the_tolerance_is_reported_and_its_end_too() {
        let clock = Clock::new(30);
        assert_eq!(clock.observe(1_000, 1_000), 0);
        assert!(!clock.is_far());
        assert_eq!(
            clock.observe(1_015, 1_000),
            15,
            "half the tolerance is still near"
        );
        assert!(!clock.is_far());
        assert_eq!(clock.observe(1_000, 1_016), -16, "this node ahead");
        assert!(clock.is_far());
        assert_eq!(metrics().clock_drift_seconds.get(), -16);
        assert!(metrics().render().contains("iryo_node_clock_drift_seconds"));
        clock.observe(2_000, 2_001);
        assert!(!clock.is_far());
        assert!(!Clock::new(30).observe(i64::MAX, i64::MIN).is_negative());
    }
}
