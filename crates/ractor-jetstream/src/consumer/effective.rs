//! The settings a child works with, read from the consumer as the server
//! reports it after binding.
//!
//! A spec says what a consumer should look like when it is created; the
//! server says what it is. They differ when the durable already existed
//! with other settings (created by another service, or by an older version
//! of the spec), and in one case always: with `backoff` set, the server
//! waits `backoff[0]` for the first ack, whatever `ack_wait` says, and
//! `backoff[n]` after the n-th redelivery. So every timing the child relies
//! on comes from [`Effective::from_server`], never from the spec alone.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer;

use crate::spec::{ConsumerSpec, DEFAULT_ACK_WAIT};

/// How often a held delivery is kept alive, as a fraction of the server's
/// ack wait: at half of it, one lost or late `+WPI` still leaves the
/// other half before the server would deliver the message again.
const KEEP_ALIVE_FRACTION: f64 = 0.5;

/// The shortest keep-alive period, so that a tiny ack wait cannot turn the
/// keep-alive into a flood.
const MIN_KEEP_ALIVE: Duration = Duration::from_millis(20);

/// What a child works with, as the server has the consumer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Effective {
    /// The shortest time the server waits for an ack before it delivers a
    /// message again: `ack_wait`, or the shortest `backoff` step.
    pub ack_wait: Duration,
    /// How often a delivery the target still holds is kept alive with
    /// `+WPI`.
    pub keep_alive: Duration,
    /// How long the target may hold a delivery without a decision (the
    /// spec's `max_hold`); past it, the child nak's it.
    pub max_hold: Duration,
    /// The server's `max_deliver`, when it sets a limit.
    pub max_deliver: Option<u64>,
    /// The server's `max_ack_pending`, when it sets a limit.
    pub max_ack_pending: Option<u64>,
    /// The server's `max_batch` for pull requests, when it sets a limit.
    pub max_batch: Option<u64>,
    /// The server's `max_expires` for pull requests, when it sets a limit.
    pub max_expires: Option<Duration>,
    /// Whether every ack is sent for confirmation (the spec's
    /// `confirm_acks`).
    pub confirm_acks: bool,
}

impl Effective {
    /// The settings of a consumer the server reports as `config`, with the
    /// child's own knobs from `spec`.
    pub fn from_server(spec: &ConsumerSpec, config: &consumer::Config) -> Self {
        let ack_wait = if config.ack_wait.is_zero() {
            DEFAULT_ACK_WAIT
        } else {
            config.ack_wait
        };
        // With backoff, each redelivery waits its own step; the shortest
        // one bounds them all.
        let ack_wait = config
            .backoff
            .iter()
            .copied()
            .filter(|step| !step.is_zero())
            .fold(ack_wait, Duration::min);
        let positive = |v: i64| u64::try_from(v).ok().filter(|v| *v > 0);
        Self {
            ack_wait,
            keep_alive: ack_wait.mul_f64(KEEP_ALIVE_FRACTION).max(MIN_KEEP_ALIVE),
            max_hold: spec.effective_max_hold(),
            max_deliver: positive(config.max_deliver),
            max_ack_pending: positive(config.max_ack_pending),
            max_batch: positive(config.max_batch),
            max_expires: Some(config.max_expires).filter(|d| !d.is_zero()),
            confirm_acks: spec.child.confirm_acks,
        }
    }
}

/// The settings in effect, shared by a child and its worker: the worker
/// reads them afresh from the server when the server says they changed
/// (a fetch refused for a `max_batch` lowered after binding), and the
/// child checks the next requests against what the worker learned.
#[derive(Debug, Clone)]
pub(crate) struct SharedEffective(Arc<Mutex<Effective>>);

impl SharedEffective {
    pub fn new(effective: Effective) -> Self {
        Self(Arc::new(Mutex::new(effective)))
    }

    /// The settings now.
    pub fn get(&self) -> Effective {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the settings.
    pub fn set(&self, effective: Effective) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = effective;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_sets_the_ack_wait() {
        let spec = ConsumerSpec::pull("S", "d", "t");
        let config = consumer::Config {
            ack_wait: Duration::from_secs(30),
            backoff: vec![Duration::from_secs(1), Duration::from_secs(5)],
            max_deliver: 4,
            max_ack_pending: -1,
            ..Default::default()
        };
        let effective = Effective::from_server(&spec, &config);
        assert_eq!(effective.ack_wait, Duration::from_secs(1));
        assert_eq!(effective.keep_alive, Duration::from_millis(500));
        assert_eq!(effective.max_deliver, Some(4));
        assert_eq!(effective.max_ack_pending, None);
        assert_eq!(effective.max_expires, None);
    }

    #[test]
    fn tiny_ack_waits_keep_a_floor() {
        let spec = ConsumerSpec::pull("S", "d", "t");
        let config = consumer::Config {
            ack_wait: Duration::from_millis(10),
            ..Default::default()
        };
        let effective = Effective::from_server(&spec, &config);
        assert_eq!(effective.keep_alive, MIN_KEEP_ALIVE);
    }
}
