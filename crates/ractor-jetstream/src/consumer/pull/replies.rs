//! The worker's one reply subscription, shared by all its fetches.
//!
//! Each fetch's pull request names its own reply subject under one
//! wildcard inbox (`_INBOX.<id>.<n>`), subscribed once per worker. So a
//! fetch costs the server no subscribe and unsubscribe of its own (a raw
//! async-nats fetch pays both, and the server's share of a small fetch is
//! most of its cost). A status names its request by that subject, so one
//! for an earlier fetch cannot end the current one. JetStream messages
//! carry their own subject instead: one that comes while no fetch is open
//! (a late reply to a request the child gave up on) is read here and
//! nak'ed at once, instead of being dropped by the server for want of a
//! subscriber and coming back only after `ack_wait`.

use std::time::Duration;

use async_nats::Message;

use crate::consumer::inflight::{GuardedSubscription, InFlight, UnreadSink};

/// The shared reply subscription; see the module docs.
pub(super) struct Replies {
    subscription: GuardedSubscription,
    /// Where messages for no current fetch go to be nak'ed.
    strays: UnreadSink,
    prefix: String,
    next: u64,
}

impl Replies {
    /// Subscribes a fresh wildcard inbox, guarded by `in_flight` (what is
    /// unread when it is dropped is nak'ed).
    pub async fn open(
        client: &async_nats::Client,
        in_flight: &InFlight,
    ) -> Result<Self, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let subscription = client.subscribe(format!("{prefix}.*")).await?;
        Ok(Self {
            subscription: in_flight.guard(subscription),
            strays: in_flight.unread_sink(),
            prefix,
            next: 0,
        })
    }

    /// A reply subject no earlier fetch used.
    pub fn next_subject(&mut self) -> String {
        self.next += 1;
        format!("{}.{}", self.prefix, self.next)
    }

    /// Notes the pull request about to be sent on `subject`, so that a
    /// dropped subscription waits for what it may still deliver (see
    /// `consumer/guard.rs`).
    pub fn expect(&mut self, subject: &str, batch: usize, expires: Duration) {
        self.subscription.expect(subject, batch, expires);
    }

    /// The next message; `None` when the subscription is closed.
    pub async fn next(&mut self) -> Option<Message> {
        self.subscription.next().await
    }

    /// A message that has already arrived: `Some(Some(_))`, `Some(None)`
    /// when the subscription is closed, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<Message>> {
        self.subscription.try_next()
    }

    /// A message that came while no fetch was open: a JetStream message is
    /// nak'ed (it was delivered, and nobody will forward it), a status is
    /// dropped.
    pub fn stray(&self, message: &Message) {
        tracing::debug!(subject = %message.subject, status = ?message.status, "a reply for a fetch already answered");
        self.strays.nak(message);
    }

    /// Stops the subscription and nak's whatever it still delivers (used
    /// by drain). Returns how many messages were nak'ed.
    pub async fn drain_and_nak(&mut self) -> usize {
        self.subscription.drain_and_nak().await
    }
}
