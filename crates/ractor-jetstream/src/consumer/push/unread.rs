//! Messages the push child has read from its subscription but not yet
//! forwarded, because the window at the target is full.
//!
//! The server started each one's ack timer when it sent it. A message that
//! waits here longer than the consumer's ack wait would be sent again while
//! its first copy is still waiting, and the target would get both. So every
//! message that has waited a third of the ack wait is extended with `+WPI`
//! (at most once per third, however many wait), and one that waited is
//! extended once more as it is forwarded, so that the target gets the whole
//! ack wait for it.
//!
//! Dropped (the child stops, crashes, or is aborted), the buffer hands what
//! it holds to the in-flight registry, which nak's it with its own
//! deliveries, so it comes back at once.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::consumer::inflight::UnreadSink;
use async_nats::jetstream::AckKind;

/// The shortest extension period: a tiny ack wait must not turn keeping
/// messages alive into a busy loop.
const MIN_PERIOD: Duration = Duration::from_millis(20);

struct Waiting {
    message: async_nats::Message,
    /// When the server's ack timer last started (arrival or last `+WPI`).
    since: Instant,
}

/// The unread buffer; see the [module docs](self).
pub(super) struct Unread {
    waiting: VecDeque<Waiting>,
    client: async_nats::Client,
    sink: UnreadSink,
    period: Duration,
}

impl Unread {
    /// A buffer for a consumer whose messages are sent again after
    /// `ack_wait` (the shortest of the consumer's ack wait and backoff, as
    /// the server reports them).
    pub fn new(client: async_nats::Client, sink: UnreadSink, ack_wait: Duration) -> Self {
        Self {
            waiting: VecDeque::new(),
            client,
            sink,
            period: (ack_wait / 3).max(MIN_PERIOD),
        }
    }

    /// How many messages wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Keeps a message that just arrived.
    pub fn push(&mut self, message: async_nats::Message) {
        self.waiting.push_back(Waiting {
            message,
            since: Instant::now(),
        });
    }

    /// The oldest message, to be forwarded now. One that waited more than
    /// a moment is extended first, so that the target gets the whole ack
    /// wait.
    pub async fn pop(&mut self) -> Option<async_nats::Message> {
        let Waiting { message, since } = self.waiting.pop_front()?;
        if since.elapsed() >= self.period / 10 {
            self.extend(&message).await;
        }
        Some(message)
    }

    /// How often [`keep_alive`](Self::keep_alive) should run while
    /// anything waits.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Extends every message that has waited a period since its timer last
    /// started. Run every period, it extends each message before it has
    /// waited two periods, a third less than the ack wait.
    pub async fn keep_alive(&mut self) {
        let now = Instant::now();
        let mut extended = Vec::new();
        for waiting in self
            .waiting
            .iter_mut()
            .filter(|w| now >= w.since + self.period)
        {
            waiting.since = now;
            extended.push(waiting.message.reply.clone());
        }
        for reply in extended.into_iter().flatten() {
            self.publish_progress(reply).await;
        }
    }

    /// Nak's every waiting message (used by drain). Returns how many.
    pub fn nak_all(&mut self) -> usize {
        let naked = self.waiting.len();
        for waiting in self.waiting.drain(..) {
            self.sink.nak(&waiting.message);
        }
        naked
    }

    async fn extend(&self, message: &async_nats::Message) {
        if let Some(reply) = message.reply.clone() {
            self.publish_progress(reply).await;
        }
    }

    async fn publish_progress(&self, reply: async_nats::Subject) {
        if let Err(err) = self
            .client
            .publish(reply, Bytes::from(AckKind::Progress))
            .await
        {
            // Closed connection: the server sends it again after ack_wait.
            tracing::debug!(error = %err, "could not extend an unread message");
        }
    }
}

impl Drop for Unread {
    fn drop(&mut self) {
        self.nak_all();
    }
}
