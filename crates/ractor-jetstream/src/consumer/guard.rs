//! A subscription whose unread messages are nak'ed when it is dropped.
//!
//! On drop it takes the JetStream messages still buffered in it and hands
//! them to its [`InFlight`](super::inflight::InFlight) registry, which
//! nak's them together with its own deliveries, in stream order.
//!
//! Unsubscribing is not instant, and a pull request outlives its worker:
//! the server may have messages for it queued to send, or send more until
//! the request is filled or expires. A message the server routes after it
//! saw the unsubscribe is dropped for want of a subscriber, yet counted
//! delivered, so it would come back only after `ack_wait`. So a dropped
//! subscription is closed by a short task of its own, its **tail**:
//!
//! 1. while the pull request it expects may still deliver (until the
//!    request is filled, ended by a status, or expired, and never longer
//!    than half the ack wait), the tail keeps the subscription and holds
//!    what arrives, without nak'ing it (a nak'ed message would be
//!    delivered straight back into the same dead request);
//! 2. then it unsubscribes, and hands what it held to the registry, whose
//!    nak's (the buffered messages and the in-flight deliveries) waited
//!    for exactly this, so that none goes out while the dead request could
//!    still take it back;
//! 3. and nak's whatever still arrives before the server confirms the
//!    unsubscribe.
//!
//! A push subscription expects no request: its tail unsubscribes at once.

use std::time::Duration;

use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::delivery::{ORPHAN, Settlement, Verdict};
use async_nats::jetstream::AckKind;

/// How long past a pull request's `expires` its tail still waits for it:
/// the server's expiry is not to the millisecond.
const HOLD_GRACE: Duration = Duration::from_millis(200);

/// How long a tail waits for the server to confirm the unsubscribe.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A subscription whose unread messages are nak'ed when it is dropped; see
/// the module docs.
pub(crate) struct GuardedSubscription {
    subscription: Option<async_nats::Subscriber>,
    orphans: mpsc::UnboundedSender<Settlement>,
    client: async_nats::Client,
    /// The pull request that may still deliver into this subscription.
    expected: Option<Expected>,
    /// The longest a tail holds the subscription for it: half the ack wait,
    /// so that nothing it holds is sent again by the server meanwhile.
    hold_max: Duration,
}

/// A pull request that may still deliver.
#[derive(Debug, Clone)]
struct Expected {
    subject: String,
    remaining: usize,
    until: Instant,
}

impl Expected {
    /// Takes one message of the subscription into account; true when the
    /// request is over (filled, or ended by a status).
    fn over_after(&mut self, message: &async_nats::Message) -> bool {
        if js_reply(message).is_some() {
            self.remaining = self.remaining.saturating_sub(1);
            return self.remaining == 0;
        }
        match message.status {
            None | Some(StatusCode::OK | StatusCode::IDLE_HEARTBEAT) => false,
            Some(_) => message.subject.as_str() == self.subject,
        }
    }

    fn live(&self, now: Instant) -> bool {
        self.remaining > 0 && now < self.until + HOLD_GRACE
    }
}

impl GuardedSubscription {
    pub fn new(
        subscription: async_nats::Subscriber,
        orphans: mpsc::UnboundedSender<Settlement>,
        client: async_nats::Client,
        hold_max: Duration,
    ) -> Self {
        Self {
            subscription: Some(subscription),
            orphans,
            client,
            expected: None,
            hold_max,
        }
    }

    /// Tells the guard that a pull request for `batch` messages within
    /// `expires` is about to be sent with reply subject `subject` (it
    /// replaces any earlier one: a worker has one request open at a time).
    pub fn expect(&mut self, subject: &str, batch: usize, expires: Duration) {
        self.expected = Some(Expected {
            subject: subject.to_string(),
            remaining: batch,
            until: Instant::now() + expires,
        });
    }

    /// The next message; `None` when the subscription is closed.
    pub async fn next(&mut self) -> Option<async_nats::Message> {
        let message = match self.subscription.as_mut() {
            Some(subscription) => subscription.next().await,
            None => None,
        };
        if let Some(message) = &message {
            self.observe(message);
        }
        message
    }

    /// A message that has already arrived: `Some(Some(_))`, `Some(None)` when
    /// the subscription is closed, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<async_nats::Message>> {
        let next = match self.subscription.as_mut() {
            Some(subscription) => subscription.next().now_or_never(),
            None => Some(None),
        };
        if let Some(Some(message)) = &next {
            self.observe(message);
        }
        next
    }

    fn observe(&mut self, message: &async_nats::Message) {
        if self
            .expected
            .as_mut()
            .is_some_and(|expected| expected.over_after(message))
        {
            self.expected = None;
        }
    }

    /// The request that may still deliver, if any.
    fn take_expected(&mut self) -> Option<Expected> {
        let now = Instant::now();
        self.expected.take().filter(|expected| expected.live(now))
    }

    /// Stops the subscription and nak's whatever it still delivers, without
    /// forwarding it (used by drain): held while its pull request may still
    /// deliver, then unsubscribed (see the module docs). Returns how many
    /// messages were nak'ed.
    pub async fn drain_and_nak(&mut self) -> usize {
        let Some(subscription) = self.subscription.take() else {
            return 0;
        };
        let expected = self.take_expected();
        let (held, mut subscription) = hold(subscription, expected, self.hold_max).await;
        let held_count = held.len();
        if subscription.drain().await.is_err() {
            return 0;
        }
        for reply in held {
            let _ = self
                .client
                .publish(reply, Bytes::from(AckKind::Nak(None)))
                .await;
        }
        held_count + nak_until_closed(subscription, &self.client).await
    }
}

/// Keeps a dropped subscription while `expected` may still deliver (at most
/// `hold_max`), holding the reply subjects of what arrives.
async fn hold(
    mut subscription: async_nats::Subscriber,
    expected: Option<Expected>,
    hold_max: Duration,
) -> (Vec<Subject>, async_nats::Subscriber) {
    let mut held = Vec::new();
    if let Some(mut expected) = expected {
        let deadline = (expected.until + HOLD_GRACE).min(Instant::now() + hold_max);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.next()).await {
            let over = expected.over_after(&message);
            if let Some(reply) = js_reply(&message) {
                held.push(reply);
            }
            if over {
                break;
            }
        }
        if !held.is_empty() {
            tracing::debug!(
                held = held.len(),
                "held what a dead pull request still delivered"
            );
        }
    }
    (held, subscription)
}

/// Nak's every JetStream message that still arrives on a subscription being
/// drained, until the server confirms the unsubscribe (at most
/// [`CLOSE_WAIT`]). Returns how many were nak'ed.
async fn nak_until_closed(
    mut subscription: async_nats::Subscriber,
    client: &async_nats::Client,
) -> usize {
    let mut naked = 0;
    let deadline = Instant::now() + CLOSE_WAIT;
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.next()).await {
        if let Some(reply) = js_reply(&message) {
            let _ = client.publish(reply, Bytes::from(AckKind::Nak(None))).await;
            naked += 1;
        }
    }
    if naked > 0 {
        tracing::debug!(
            naked,
            "nak'ed messages that arrived as a subscription closed"
        );
        let _ = client.flush().await;
    }
    naked
}

/// Hands messages that were read but never forwarded over to an
/// [`InFlight`](super::inflight::InFlight), which nak's them (at once, or
/// when it is dropped).
pub(crate) struct UnreadSink(mpsc::UnboundedSender<Settlement>);

impl UnreadSink {
    pub fn new(sender: mpsc::UnboundedSender<Settlement>) -> Self {
        Self(sender)
    }

    /// Hands one message over to be nak'ed.
    pub fn nak(&self, message: &async_nats::Message) {
        if let Some(reply) = js_reply(message) {
            // The registry is gone only once the worker ends; then the
            // message returns after ack_wait.
            let _ = self.0.send(Settlement {
                token: ORPHAN,
                stream_sequence: 0,
                verdict: Verdict::Unread(reply),
            });
        }
    }
}

/// The `$JS.ACK` reply subject of a JetStream message (not of a status
/// message).
pub(crate) fn js_reply(message: &async_nats::Message) -> Option<Subject> {
    message
        .reply
        .clone()
        .filter(|reply| message.status.is_none() && reply.as_str().starts_with("$JS.ACK."))
}

impl Drop for GuardedSubscription {
    fn drop(&mut self) {
        let Some(mut subscription) = self.subscription.take() else {
            return;
        };
        while let Some(Some(message)) = subscription.next().now_or_never() {
            self.observe(&message);
            if let Some(reply) = js_reply(&message) {
                // The registry outlives this guard (declared first, dropped
                // last); if it is gone, the message returns after ack_wait.
                let _ = self.orphans.send(Settlement {
                    token: ORPHAN,
                    stream_sequence: 0,
                    verdict: Verdict::Unread(reply),
                });
            }
        }
        // Without a runtime to run the tail, dropping the subscriber
        // unsubscribes at once.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The registry's nak's wait for the tail's unsubscribe.
        let (unsubscribed, barrier) = oneshot::channel();
        let _ = self.orphans.send(Settlement {
            token: ORPHAN,
            stream_sequence: 0,
            verdict: Verdict::Tail(barrier),
        });
        let expected = self.take_expected();
        let hold_max = self.hold_max;
        let client = self.client.clone();
        runtime.spawn(async move {
            let (held, mut subscription) = hold(subscription, expected, hold_max).await;
            let drained = subscription.drain().await.is_ok();
            let _ = unsubscribed.send(held);
            if drained {
                nak_until_closed(subscription, &client).await;
            }
        });
    }
}
