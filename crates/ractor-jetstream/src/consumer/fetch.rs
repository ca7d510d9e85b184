//! The vocabulary of a fetch: what a caller asks for, the bounds it is
//! checked against, and the [`FetchOutcome`] it gets back, with a typed
//! [`FetchEnd`] that says why the fetch ended.
//!
//! A caller that loops on fetch must be able to tell "nothing there" from
//! "the server refused": an expiry is [`FetchEnd::Expired`], a partial
//! batch the server had nothing more for is [`FetchEnd::NoMoreMessages`],
//! and a request the server refused outright (a batch above a `max_batch`
//! set after the child bound, a malformed request) is an
//! [`Error::FetchRefused`] carrying the server's code and text. A status
//! the server sends while other requests wait on the consumer
//! (`409 Exceeded MaxWaiting`, `409 Leadership Change`) does not end the
//! fetch at once: the child asks again, spaced out, until `expires` has
//! passed, so a loop of fetches never spins on it.

use std::sync::Arc;
use std::time::Duration;

use ractor::RpcReplyPort;
use tokio::time::Instant;

use super::effective::Effective;
use super::inflight::Settled;
use crate::error::{Error, show_duration};
use crate::spec::DEFAULT_FETCH_EXPIRES;

/// The largest `batch` a fetch may ask for when the consumer sets no
/// `max_batch`: the server reads it as a signed 64-bit count, and a fetch
/// keeps its whole batch in flight, so anything near that is a mistake.
pub const MAX_FETCH_BATCH: u64 = 1 << 20;

/// The longest `expires` a fetch may ask for when the consumer sets no
/// `max_expires`. A fetch holds its caller that long; past a day it is a
/// mistake, and far past it the deadline arithmetic would overflow.
pub const MAX_FETCH_EXPIRES: Duration = Duration::from_secs(24 * 60 * 60);

/// How many fetches may wait for a pull child while it serves another;
/// one more is answered [`Error::Busy`] at once. Fetches to one child are
/// served one at a time, so a longer queue only makes callers wait longer.
pub const MAX_QUEUED_FETCHES: u64 = 32;

/// Why a fetch ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum FetchEnd {
    /// `batch` messages were delivered.
    Filled,
    /// The server delivered what it had (fewer than `batch`) and had no
    /// more at the moment (`404 No Messages` after a partial batch).
    NoMoreMessages,
    /// `expires` passed before `batch` messages came. With nothing
    /// delivered, this is the clean empty outcome.
    #[default]
    Expired,
    /// The server ended the request with this status, and the fetch could
    /// not wait it out within `expires` (for example `409 Exceeded
    /// MaxWaiting` while other workers' requests fill the consumer's
    /// waiting list, or `409 Leadership Change`).
    Status {
        /// The status code.
        code: u16,
        /// The server's description.
        description: String,
    },
    /// A drain stopped the fetch; what was delivered was settled or nak'ed.
    Drained,
}

/// The reply to a fetch.
///
/// `delivered == acked + naked + termed + abandoned + timed_out`: every
/// delivered message was settled before the reply was sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Messages forwarded to the target.
    pub delivered: u64,
    /// Of those, acknowledged.
    pub acked: u64,
    /// Of those, nak'ed by the target (delivered again).
    pub naked: u64,
    /// Of those, terminated by the target (never delivered again).
    pub termed: u64,
    /// Of those, dropped by the target without a decision, or nak'ed by a
    /// drain (delivered again).
    pub abandoned: u64,
    /// Of those, not decided within the decision timeout (nak'ed).
    pub timed_out: u64,
    /// The fetch ended because `expires` passed before `batch` messages
    /// came (`end == FetchEnd::Expired`). With `delivered == 0` this is the
    /// clean empty outcome.
    pub expired: bool,
    /// Why the fetch ended.
    pub end: FetchEnd,
}

impl FetchOutcome {
    pub(crate) fn record(&mut self, settled: Settled) {
        match settled {
            Settled::Acked => self.acked += 1,
            Settled::Naked => self.naked += 1,
            Settled::Termed => self.termed += 1,
            Settled::Abandoned => self.abandoned += 1,
            Settled::TimedOut => self.timed_out += 1,
        }
    }

    /// Whether nothing was delivered.
    pub fn is_empty(&self) -> bool {
        self.delivered == 0
    }
}

/// A fetch waiting to be served. Dropped unanswered (the child stopped or
/// crashed), it answers [`Error::FetchInterrupted`] by itself.
pub(crate) struct FetchRequest {
    pub batch: usize,
    pub expires: Duration,
    /// When the child took the request: the caller's timeout runs from
    /// about then.
    pub queued_at: Instant,
    reply: Option<RpcReplyPort<Result<FetchOutcome, Error>>>,
    durable: Arc<str>,
}

/// What is left of a caller's own timeout that a fetch leaves for the
/// reply to travel back.
const REPLY_MARGIN: Duration = Duration::from_millis(50);

impl FetchRequest {
    pub fn new(
        batch: u64,
        expires: Duration,
        reply: RpcReplyPort<Result<FetchOutcome, Error>>,
        durable: Arc<str>,
    ) -> Self {
        Self {
            // Bounded by `validate_fetch` (by `MAX_FETCH_BATCH`, or by the
            // consumer's `max_batch`, which the server keeps in an i64).
            batch: usize::try_from(batch).unwrap_or(usize::MAX),
            expires,
            queued_at: Instant::now(),
            reply: Some(reply),
            durable,
        }
    }

    /// Whether the caller is gone (its call timed out, or it dropped the
    /// call): then nobody reads the outcome, and nothing is fetched for it.
    pub fn abandoned(&self) -> bool {
        self.reply.as_ref().is_none_or(RpcReplyPort::is_closed)
    }

    /// The `expires` to ask the server for: the caller's own, cut to what
    /// is left of the caller's timeout, if its call has one. `None` when
    /// nothing is left, so the caller will not read the outcome.
    pub fn expires_now(&self) -> Option<Duration> {
        let timeout = self.reply.as_ref().and_then(RpcReplyPort::get_timeout);
        let Some(timeout) = timeout else {
            return Some(self.expires);
        };
        let left = timeout
            .saturating_sub(self.queued_at.elapsed())
            .saturating_sub(REPLY_MARGIN);
        (left >= Duration::from_millis(1)).then(|| self.expires.min(left))
    }

    pub fn answer(mut self, result: Result<FetchOutcome, Error>) {
        if let Some(port) = self.reply.take() {
            // The caller may have given up waiting; nothing to do then.
            let _ = port.send(result);
        }
    }
}

/// The answer to a fetch whose child stopped or crashed before it ended.
pub(crate) fn interrupted(durable: &str) -> Error {
    Error::FetchInterrupted {
        durable: durable.to_string(),
        reason: "the consumer child stopped or crashed; what was in flight was nak'ed".into(),
    }
}

impl FetchRequest {
    /// Takes the caller's reply port back out of a request the worker never
    /// took, so that the caller can send the fetch elsewhere.
    pub fn into_reply(mut self) -> Option<RpcReplyPort<Result<FetchOutcome, Error>>> {
        self.reply.take()
    }
}

impl Drop for FetchRequest {
    fn drop(&mut self) {
        if let Some(port) = self.reply.take() {
            let _ = port.send(Err(interrupted(&self.durable)));
        }
    }
}

/// Checks a fetch request against the consumer's limits as the server has
/// them; returns the `expires` to use. Every count and duration that
/// reaches the wire or deadline arithmetic is bounded here.
pub(crate) fn validate_fetch(
    batch: u64,
    expires: Option<Duration>,
    limits: &Effective,
) -> Result<Duration, Error> {
    if batch == 0 {
        return Err(Error::invalid(
            "batch",
            0,
            "a fetch must ask for at least one message",
        ));
    }
    match limits.max_batch {
        Some(max_batch) if batch > max_batch => {
            return Err(Error::invalid(
                "batch",
                batch,
                format!("above the consumer's max_batch ({max_batch})"),
            ));
        }
        None if batch > MAX_FETCH_BATCH => {
            return Err(Error::invalid(
                "batch",
                batch,
                format!("above {MAX_FETCH_BATCH}, the most one fetch may ask for"),
            ));
        }
        _ => {}
    }
    let max_expires = limits.max_expires.unwrap_or(MAX_FETCH_EXPIRES);
    // The default is fitted to the consumer's own limit.
    let expires = expires.unwrap_or(DEFAULT_FETCH_EXPIRES.min(max_expires));
    if expires < Duration::from_millis(1) {
        return Err(Error::invalid(
            "expires",
            show_duration(expires),
            "must be at least 1ms",
        ));
    }
    if expires > max_expires {
        let whose = if limits.max_expires.is_some() {
            "the consumer's max_expires"
        } else {
            "the longest a fetch may wait"
        };
        return Err(Error::invalid(
            "expires",
            show_duration(expires),
            format!("above {whose} ({})", show_duration(max_expires)),
        ));
    }
    Ok(expires)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ConsumerSpec;
    use async_nats::jetstream::consumer;

    fn limits(max_batch: Option<u64>, max_expires: Option<Duration>) -> Effective {
        let config = consumer::Config {
            max_batch: max_batch.map_or(0, |b| b as i64),
            max_expires: max_expires.unwrap_or_default(),
            ..Default::default()
        };
        Effective::from_server(&ConsumerSpec::pull("S", "d", "t"), &config)
    }

    #[test]
    fn fetch_validation() {
        let max = Duration::from_secs(10);
        let open = limits(None, None);
        let bounded = limits(Some(10), Some(max));
        assert!(validate_fetch(0, None, &open).is_err());
        assert_eq!(
            validate_fetch(1, None, &open).ok(),
            Some(DEFAULT_FETCH_EXPIRES)
        );
        let err = validate_fetch(11, None, &bounded).expect_err("above max_batch");
        assert!(
            err.validation().is_some_and(|e| e.has_field("batch")),
            "{err}"
        );
        let err = validate_fetch(1, Some(Duration::ZERO), &bounded).expect_err("zero expires");
        assert!(
            err.validation().is_some_and(|e| e.has_field("expires")),
            "{err}"
        );
        let err = validate_fetch(1, Some(Duration::from_secs(11)), &bounded)
            .expect_err("above max_expires");
        assert!(err.to_string().contains("max_expires"), "{err}");
        assert!(validate_fetch(10, Some(max), &bounded).is_ok());
    }

    #[test]
    fn fetch_bounds_without_consumer_limits() {
        let open = limits(None, None);
        for (batch, expires) in [
            (u64::MAX, None),
            (MAX_FETCH_BATCH + 1, None),
            (1, Some(Duration::MAX)),
            (1, Some(MAX_FETCH_EXPIRES + Duration::from_nanos(1))),
        ] {
            assert!(
                validate_fetch(batch, expires, &open).is_err(),
                "{batch} {expires:?}"
            );
        }
        assert!(validate_fetch(MAX_FETCH_BATCH, Some(MAX_FETCH_EXPIRES), &open).is_ok());
    }

    #[test]
    fn default_expires_fits_the_consumers_limit() {
        let short = limits(None, Some(Duration::from_secs(2)));
        assert_eq!(
            validate_fetch(1, None, &short).ok(),
            Some(Duration::from_secs(2))
        );
    }
}
