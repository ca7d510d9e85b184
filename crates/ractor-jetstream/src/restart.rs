//! When and how fast the supervisor restarts a consumer child.
//!
//! Two settings, named as in OTP and kameo:
//!
//! - [`RestartKind`], per child: `permanent` (always restarted), `transient`
//!   (restarted only after an abnormal end: a failure or a kill) or
//!   `temporary` (never restarted);
//! - [`RestartPolicy`], per supervisor: at most `max_restarts` within
//!   `within`, each after a growing, jittered backoff. A child that exceeds
//!   the intensity makes the supervisor itself fail, with an error naming the
//!   child and its last failure, so that the supervisor's own parent decides.
//!
//! ```
//! use ractor_jetstream::RestartPolicy;
//! use std::time::Duration;
//!
//! let policy = RestartPolicy {
//!     max_restarts: 5,
//!     within: Duration::from_secs(30),
//!     ..RestartPolicy::default()
//! };
//! assert!(policy.backoff(3) > policy.backoff(1));
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Whether a stopped child is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartKind {
    /// Always restarted, whether it failed or stopped. The default.
    #[default]
    Permanent,
    /// Restarted only after an abnormal end: a failure, a kill, or a stop
    /// from outside while it was working. An end it was asked for (a
    /// drain, `RemoveConsumer`) is final.
    Transient,
    /// Never restarted.
    Temporary,
}

impl RestartKind {
    /// Whether a child that ended this way is restarted.
    pub fn restarts_after(self, failed: bool) -> bool {
        match self {
            Self::Permanent => true,
            Self::Transient => failed,
            Self::Temporary => false,
        }
    }
}

/// Restart intensity and backoff of a supervisor's children.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartPolicy {
    /// At most this many restarts of one child within `within`; one more
    /// and the supervisor fails.
    pub max_restarts: u32,
    /// The window in which restarts are counted.
    #[serde(with = "humantime_serde")]
    pub within: Duration,
    /// Delay before the first restart.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay between restarts.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Each consecutive restart waits this many times longer.
    pub factor: f64,
    /// Random spread of each delay, as a fraction (0.2 = up to ±20 %).
    pub jitter: f64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            max_restarts: 10,
            within: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
            factor: 2.0,
            jitter: 0.2,
        }
    }
}

impl RestartPolicy {
    /// The delay before restart number `attempt` (1-based) of a run of
    /// consecutive failures, without jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let factor = if self.factor.is_finite() && self.factor >= 1.0 {
            self.factor
        } else {
            1.0
        };
        let secs = self.initial_backoff.as_secs_f64() * factor.powi(exponent);
        let max = self.max_backoff.max(self.initial_backoff);
        if !secs.is_finite() || secs >= max.as_secs_f64() {
            max
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// [`RestartPolicy::backoff`] with the jitter applied.
    pub fn jittered_backoff(&self, attempt: u32) -> Duration {
        let base = self.backoff(attempt);
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 || base.is_zero() {
            return base;
        }
        // A uniform value in [-1, 1).
        let unit = fastrand::f64() * 2.0 - 1.0;
        base.mul_f64((1.0 + jitter * unit).max(0.0))
    }
}

/// Counts one child's restarts against a [`RestartPolicy`].
#[derive(Debug, Default)]
pub(crate) struct RestartTracker {
    recent: VecDeque<Instant>,
    consecutive: u32,
}

impl RestartTracker {
    /// Records a failure at `now`. Returns the delay before the restart,
    /// or `None` when the intensity is exceeded.
    pub fn on_failure(&mut self, policy: &RestartPolicy, now: Instant) -> Option<Duration> {
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.within)
        {
            self.recent.pop_front();
        }
        if self.recent.is_empty() {
            // Quiet for a whole window: start the backoff over.
            self.consecutive = 0;
        }
        if self.recent.len() >= policy.max_restarts as usize {
            return None;
        }
        self.recent.push_back(now);
        self.consecutive = self.consecutive.saturating_add(1);
        Some(policy.jittered_backoff(self.consecutive))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            factor: 2.0,
            jitter: 0.0,
            ..RestartPolicy::default()
        };
        assert_eq!(policy.backoff(1), Duration::from_millis(100));
        assert_eq!(policy.backoff(2), Duration::from_millis(200));
        assert_eq!(policy.backoff(4), Duration::from_millis(800));
        assert_eq!(policy.backoff(5), Duration::from_secs(1));
        assert_eq!(policy.backoff(500), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let policy = RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            jitter: 0.5,
            ..RestartPolicy::default()
        };
        for attempt in 1..50 {
            let d = policy.jittered_backoff(1 + attempt % 2);
            let base = policy.backoff(1 + attempt % 2);
            assert!(
                d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5),
                "{d:?} vs {base:?}"
            );
        }
    }

    #[test]
    fn intensity_is_counted_in_a_window() {
        let policy = RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(10),
            jitter: 0.0,
            ..RestartPolicy::default()
        };
        let mut tracker = RestartTracker::default();
        let t0 = Instant::now();
        assert!(tracker.on_failure(&policy, t0).is_some());
        assert!(
            tracker
                .on_failure(&policy, t0 + Duration::from_secs(1))
                .is_some()
        );
        assert!(
            tracker
                .on_failure(&policy, t0 + Duration::from_secs(2))
                .is_some()
        );
        assert_eq!(
            tracker.on_failure(&policy, t0 + Duration::from_secs(3)),
            None
        );
        // After the window has passed, restarts are allowed again and the
        // backoff starts over.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(tracker.on_failure(&policy, later), Some(policy.backoff(1)));
    }

    #[test]
    fn kinds() {
        assert!(RestartKind::Permanent.restarts_after(false));
        assert!(RestartKind::Transient.restarts_after(true));
        assert!(!RestartKind::Transient.restarts_after(false));
        assert!(!RestartKind::Temporary.restarts_after(true));
    }
}
