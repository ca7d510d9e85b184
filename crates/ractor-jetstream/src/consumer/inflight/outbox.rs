//! The outbox: what the registry sends the server (acks, naks, terms,
//! `+WPI`), held back a moment when the child lingers, so that several
//! decisions leave in one write.
//!
//! The target decides a fetch's deliveries one by one, and each decision
//! sent at once wakes the client's connection task, which writes it to
//! the socket, often alone: about eight writes for a fetch of 100, each
//! one a wake-up of the server's read loop too. A plain async-nats loop
//! acks a whole batch before its connection task runs, in one or two
//! writes. So a pull child lingers: what it publishes waits in the outbox
//! until [`ACK_LINGER`] has passed since the oldest, until [`MAX_HELD`]
//! are held, or until it sends a pull request (the outbox goes first, in
//! the same write), whichever comes first. A fetch also sends the outbox
//! before it answers, so what the caller asks next on the connection still
//! comes after its decisions. Measured with the throughput bench, this cut
//! the writes of a pull child at batch 100 from about eight per fetch to
//! about one, and of a continuous child by about two thirds, with less CPU
//! per message on both sides of the socket. A push child does not linger:
//! its acks already leave about 60 to a write, and lingering made it
//! slower.
//!
//! Publishes keep their order: everything the registry publishes goes
//! through the outbox while the child lingers, and the outbox is sent
//! before anything that must follow it (a pull request, a confirmed ack, a
//! drain's naks, the flush). A drain stops the lingering: its wait for
//! the last decisions does not watch the timer, and may outlast the ack
//! wait. A child that stops sends what is held with
//! the rest of its settlements (the drop guard in `stopping.rs`).

use std::time::Duration;

use async_nats::Subject;
use bytes::Bytes;
use tokio::time::Instant;

use super::InFlight;

/// The longest a publish waits in the outbox: far below any ack wait or
/// decision timeout, and the timer's resolution.
pub(crate) const ACK_LINGER: Duration = Duration::from_millis(1);

/// The most publishes held at once: then they go, without waiting for the
/// timer.
const MAX_HELD: usize = 256;

/// Publishes held back for the next write (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// How long a publish may wait; `None`: nothing waits.
    linger: Option<Duration>,
    held: Vec<(Subject, Bytes)>,
    /// When the oldest held publish must go.
    due: Option<Instant>,
}

impl Outbox {
    /// The held publishes, for a child that stops.
    pub(super) fn take(&mut self) -> Vec<(Subject, Bytes)> {
        self.due = None;
        std::mem::take(&mut self.held)
    }
}

impl InFlight {
    /// From now on, publishes wait up to `linger` in the outbox (see the
    /// module docs).
    pub fn linger(&mut self, linger: Duration) {
        self.outbox.linger = Some(linger);
    }

    /// From now on nothing waits: sends what is held, and every later
    /// publish goes at once. For a drain, whose waits do not watch the
    /// outbox's timer.
    pub async fn stop_lingering(&mut self) {
        self.outbox.linger = None;
        self.send_outbox().await;
    }

    /// When the outbox must be sent, if it holds anything.
    pub(super) fn outbox_due(&self) -> Option<Instant> {
        self.outbox.due
    }

    /// Publishes `payload` to `subject`: into the outbox when the child
    /// lingers, else at once.
    pub(super) async fn publish(&mut self, subject: Subject, payload: Bytes) {
        let Some(linger) = self.outbox.linger else {
            return self.publish_now(subject, payload).await;
        };
        self.outbox
            .due
            .get_or_insert_with(|| Instant::now() + linger);
        self.outbox.held.push((subject, payload));
        if self.outbox.held.len() >= MAX_HELD {
            self.send_outbox().await;
        }
    }

    /// Sends what the outbox holds, in the order it was published.
    pub async fn send_outbox(&mut self) {
        if self.outbox.held.is_empty() {
            return;
        }
        self.outbox.due = None;
        let mut held = std::mem::take(&mut self.outbox.held);
        for (subject, payload) in held.drain(..) {
            self.publish_now(subject, payload).await;
        }
        // The buffer is kept for the next fetch.
        self.outbox.held = held;
    }

    /// Sends the outbox if its time has come.
    pub(super) async fn send_outbox_if_due(&mut self, now: Instant) {
        if self.outbox.due.is_some_and(|due| due <= now) {
            self.send_outbox().await;
        }
    }

    async fn publish_now(&self, subject: Subject, payload: Bytes) {
        if let Err(err) = self.client.publish(subject, payload).await {
            // The connection is closed: the server will redeliver after
            // ack_wait. Nothing else can be done from here.
            tracing::warn!(stream = %self.stream, durable = %self.consumer, error = %err, "could not send a decision");
        }
    }
}
