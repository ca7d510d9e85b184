//! A subscription whose unread messages are nak'ed when it is dropped.
//!
//! On drop it takes the JetStream messages still buffered in it, hands them
//! to its [`InFlight`](super::inflight::InFlight) registry (which nak's
//! them together with its own deliveries, in stream order), and only then
//! unsubscribes, so that nothing nak'ed is pushed straight back into the
//! dying subscription.

use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::delivery::{Settlement, Token, Verdict};
use async_nats::jetstream::AckKind;

/// The token of an unread message handed over by a subscription guard.
pub(crate) const ORPHAN: Token = Token::MAX;

/// A subscription whose unread messages are nak'ed when it is dropped; see
/// the module docs.
pub(crate) struct GuardedSubscription {
    subscription: Option<async_nats::Subscriber>,
    orphans: mpsc::UnboundedSender<Settlement>,
    client: async_nats::Client,
}

impl GuardedSubscription {
    pub fn new(
        subscription: async_nats::Subscriber,
        orphans: mpsc::UnboundedSender<Settlement>,
        client: async_nats::Client,
    ) -> Self {
        Self {
            subscription: Some(subscription),
            orphans,
            client,
        }
    }
}

impl GuardedSubscription {
    /// The next message; `None` when the subscription is closed.
    pub async fn next(&mut self) -> Option<async_nats::Message> {
        match self.subscription.as_mut() {
            Some(subscription) => subscription.next().await,
            None => None,
        }
    }

    /// A message that has already arrived: `Some(Some(_))`, `Some(None)` when
    /// the subscription is closed, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<async_nats::Message>> {
        match self.subscription.as_mut() {
            Some(subscription) => subscription.next().now_or_never(),
            None => Some(None),
        }
    }

    /// Stops the subscription and nak's whatever it still delivers, without
    /// forwarding it (used by drain). Bounded: gives up after two seconds.
    /// Returns how many messages were nak'ed.
    pub async fn drain_and_nak(&mut self) -> usize {
        let Some(mut subscription) = self.subscription.take() else {
            return 0;
        };
        if subscription.drain().await.is_err() {
            return 0;
        }
        let mut naked = 0;
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.next()).await {
            if let Some(reply) = js_reply(&message) {
                let _ = self
                    .client
                    .publish(reply, Bytes::from(AckKind::Nak(None)))
                    .await;
                naked += 1;
            }
        }
        naked
    }
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
            if let Some(reply) = js_reply(&message) {
                // The registry outlives this guard (declared first, dropped
                // last); if it is gone, the message returns after ack_wait.
                let _ = self.orphans.send(Settlement {
                    token: ORPHAN,
                    verdict: Verdict::Unread(reply),
                });
            }
        }
        // Dropping the subscriber unsubscribes.
        drop(subscription);
    }
}
