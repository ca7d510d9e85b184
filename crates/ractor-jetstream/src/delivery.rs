//! What a target actor receives, and how it answers.
//!
//! Each JetStream message reaches the target as one [`Delivery`]: the
//! subject, payload and headers, plus [`DeliveryInfo`], the server's metadata
//! (stream and consumer sequence, delivery count, pending count, publish
//! time). The target settles it with exactly one decision:
//!
//! | call | on the server | comes back? |
//! |---|---|---|
//! | [`Delivery::ack`] | `+ACK` | never |
//! | [`Delivery::nak`], [`Delivery::nak_after`] | `-NAK`, with the delay | yes, delivery count + 1 |
//! | [`Delivery::term`] | `+TERM`, with a reason | never |
//! | dropped unsettled | `-NAK` (counted as abandoned) | yes |
//!
//! While the target holds a delivery, the child keeps it alive on the server
//! by itself (`+WPI` every half of the server's ack wait), up to the
//! consumer's `max_hold`. [`Delivery::in_progress`] does not settle:
//! it starts that timeout over (and sends a `+WPI` unless one went out for
//! this delivery within the last period).
//!
//! The decision travels back to the consumer child, which applies it on the
//! server. A target whose actor's message type is its own enum takes
//! deliveries through a [`ractor::DerivedActorRef<Delivery>`]:
//!
//! ```
//! use ractor_jetstream::Delivery;
//!
//! enum WorkerMsg {
//!     Job(Delivery),
//!     Shutdown,
//! }
//!
//! impl From<Delivery> for WorkerMsg {
//!     fn from(delivery: Delivery) -> Self {
//!         WorkerMsg::Job(delivery)
//!     }
//! }
//!
//! impl TryFrom<WorkerMsg> for Delivery {
//!     type Error = WorkerMsg;
//!     fn try_from(msg: WorkerMsg) -> Result<Self, WorkerMsg> {
//!         match msg {
//!             WorkerMsg::Job(delivery) => Ok(delivery),
//!             other => Err(other),
//!         }
//!     }
//! }
//! // `worker_ref.get_derived::<Delivery>()` is then the consumer's target.
//! ```

use std::fmt;
use std::time::Duration;

use async_nats::HeaderMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::error::Error;

mod batch;
mod info;

pub use batch::Deliveries;
pub(crate) use info::AckMeta;
pub use info::DeliveryInfo;

/// A decision on a delivery, as the child applies it on the server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Processed: never delivered again.
    Ack,
    /// Not processed now: delivered again, after the delay when one is
    /// given.
    Nak(Option<Duration>),
    /// Never to be processed: not delivered again. The reason is passed to
    /// the server's advisory.
    Term(Option<String>),
}

/// What travels from a [`Delivery`] back to its child.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// A final decision from the target.
    Decided(Decision),
    /// One final decision on several deliveries of a batch
    /// ([`Deliveries::ack_all`] and the like), each named by its token and
    /// stream sequence: one settlement for the batch instead of one each.
    /// The child takes it apart into one `Decided` per delivery.
    DecidedAll(Decision, Vec<(Token, u64)>),
    /// An ack the target waits to see confirmed by the server.
    AckConfirmed(tokio::sync::oneshot::Sender<Result<(), Error>>),
    /// The target asked for more time.
    Progress,
    /// The delivery was dropped without a decision; the message comes
    /// back with it, so that one no target saw can be forwarded again.
    Abandoned(Box<async_nats::Message>),
    /// The dead-letter publish of a delivery finished: confirmed by the
    /// dead-letter stream or not. Sent by the child's own dead-letter task.
    DeadLettered(bool),
    /// A message that arrived but was never forwarded (its subscription
    /// was dropped); to be nak'ed.
    Unread(async_nats::Subject),
    /// A dropped subscription's tail (see `consumer/guard.rs`): sends the
    /// reply subjects of what it held once it has unsubscribed. Nak's from
    /// the registry wait for it, so that none is delivered straight back
    /// into a dead pull request.
    Tail(tokio::sync::oneshot::Receiver<Vec<async_nats::Subject>>),
    /// A keyed consumer's worker was spawned again (see `keyed/pool.rs`):
    /// the child's router takes it up.
    Wake,
}

/// Identifies one delivery within its child (slot and generation).
pub(crate) type Token = u64;

/// The token of a settlement that is about no delivery: an unread message
/// handed over by a subscription guard, or a wake-up.
pub(crate) const ORPHAN: Token = Token::MAX;

/// One verdict on one delivery.
#[derive(Debug)]
pub(crate) struct Settlement {
    pub token: Token,
    /// The delivery's stream sequence (0 for a settlement about none).
    pub stream_sequence: u64,
    pub verdict: Verdict,
}

/// The sending half of a child's settlement channel.
pub(crate) type SettleSender = mpsc::UnboundedSender<Settlement>;

/// One JetStream message, on its way to a target actor, waiting for a
/// decision.
///
/// Settle it with [`ack`](Self::ack), [`nak`](Self::nak) or
/// [`term`](Self::term); each takes the delivery by value, so there is
/// exactly one decision. Dropping it unsettled nak's it. When the consumer
/// child is gone by the time the decision is made, the message has already
/// been nak'ed by the child and will be delivered again; the decision is
/// then ignored.
pub struct Delivery {
    // Boxed: a delivery is moved several times on its way to the target
    // (into the actor message, its box, the handler's future), and a
    // pointer moves for less than the 328 bytes it points to, at the cost
    // of one allocation. On the throughput bench the difference was within
    // the noise, except a continuous child's client CPU per message (about
    // 1.45 times raw's before, 1.25 after, in two runs of each).
    inner: Box<Inner>,
}

/// What a [`Delivery`] holds.
struct Inner {
    message: async_nats::Message,
    info: DeliveryInfo,
    token: Token,
    settle: Option<SettleSender>,
    span: tracing::Span,
    received_at: std::time::Instant,
    /// The child's maximum hold, and when the current one ends, in
    /// nanoseconds after `received_at` (moved on by `in_progress`, which
    /// takes `&self`).
    max_hold: Duration,
    hold_ends: AtomicU64,
}

impl Delivery {
    pub(crate) fn new(
        message: async_nats::Message,
        info: DeliveryInfo,
        token: Token,
        settle: SettleSender,
        span: tracing::Span,
        received_at: std::time::Instant,
        max_hold: Duration,
    ) -> Self {
        Self {
            inner: Box::new(Inner {
                message,
                info,
                token,
                settle: Some(settle),
                span,
                received_at,
                max_hold,
                hold_ends: AtomicU64::new(nanos(max_hold)),
            }),
        }
    }

    /// The token the child knows this delivery by.
    pub(crate) fn token(&self) -> Token {
        self.inner.token
    }

    /// When the child gives up waiting for a decision and nak's the
    /// delivery: its maximum hold (the spec's `max_hold`, default 5
    /// minutes) after it received the message, or after the last
    /// [`in_progress`](Self::in_progress). Until then the child keeps it
    /// alive on the server.
    pub fn deadline(&self) -> std::time::Instant {
        self.inner.received_at + Duration::from_nanos(self.inner.hold_ends.load(Ordering::Relaxed))
    }

    /// How many times this message has been delivered, this time included
    /// (shorthand for `info().delivered`). Above 1, an earlier delivery
    /// was nak'ed, timed out, or lost with its worker.
    pub fn delivered(&self) -> u64 {
        self.inner.info.delivered
    }

    /// When the consumer child received the message from the server. The
    /// time since then is how long the delivery waited on its way to (and
    /// in) the target.
    pub fn received_at(&self) -> std::time::Instant {
        self.inner.received_at
    }

    /// The subject the message was published to.
    pub fn subject(&self) -> &str {
        self.inner.message.subject.as_str()
    }

    /// The payload, without a copy.
    pub fn payload(&self) -> &Bytes {
        &self.inner.message.payload
    }

    /// The message's headers, if it has any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.inner.message.headers.as_ref()
    }

    /// The server's metadata about this delivery.
    pub fn info(&self) -> &DeliveryInfo {
        &self.inner.info
    }

    /// The stream the message is stored in.
    pub fn stream(&self) -> &str {
        self.ack_meta().map_or("", |m| m.stream)
    }

    /// The durable consumer that delivered the message.
    pub fn consumer(&self) -> &str {
        self.ack_meta().map_or("", |m| m.consumer)
    }

    fn ack_meta(&self) -> Option<AckMeta<'_>> {
        self.inner
            .message
            .reply
            .as_ref()
            .and_then(|reply| AckMeta::parse(reply.as_str()))
    }

    /// The stream sequence of the message (shorthand for
    /// `info().stream_sequence`).
    pub fn stream_sequence(&self) -> u64 {
        self.inner.info.stream_sequence
    }

    /// The underlying async-nats message.
    pub fn message(&self) -> &async_nats::Message {
        &self.inner.message
    }

    /// The tracing span of this delivery (stream, durable, stream sequence).
    /// Enter it while processing to tie the target's logs to the message.
    pub fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// Decodes the payload as JSON into `T`.
    ///
    /// ```
    /// # fn demo(delivery: ractor_jetstream::Delivery) {
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    /// match delivery.json::<Order>() {
    ///     Ok(order) => { println!("order {}", order.id); delivery.ack() }
    ///     Err(err) => delivery.term(err.to_string()),
    /// }
    /// # }
    /// ```
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.inner.message.payload).map_err(|err| Error::Decode {
            type_name: std::any::type_name::<T>(),
            stream_sequence: self.inner.info.stream_sequence,
            source: std::sync::Arc::new(err),
        })
    }

    /// Decodes the payload as JSON into `T`, or, when it does not decode,
    /// terms the delivery with the reason (so it goes to the dead-letter
    /// subject when one is configured) and returns `None`.
    ///
    /// ```
    /// # use ractor_jetstream::Delivery;
    /// #[derive(serde::Deserialize)]
    /// struct Order { id: u64 }
    ///
    /// fn handle(delivery: Delivery) {
    ///     let Some((order, delivery)) = delivery.json_or_term::<Order>() else {
    ///         return; // termed: it was not an Order
    ///     };
    ///     println!("order {}", order.id);
    ///     delivery.ack();
    /// }
    /// ```
    pub fn json_or_term<T: serde::de::DeserializeOwned>(self) -> Option<(T, Delivery)> {
        match self.json() {
            Ok(value) => Some((value, self)),
            Err(err) => {
                tracing::debug!(parent: &self.inner.span, error = %err, "payload does not decode; terminating");
                self.term(err.to_string());
                None
            }
        }
    }

    /// Processed: acknowledge it; it is never delivered again.
    pub fn ack(self) {
        self.decide(Decision::Ack);
    }

    /// Processed: acknowledge it, and wait until the server confirms it
    /// took the ack (at most [`CONFIRM_WITHIN`](crate::CONFIRM_WITHIN)
    /// after the child sends it). The acks of one child are confirmed on
    /// one subscription, without a round trip each.
    ///
    /// `Ok` means the server applied the ack: the message is not delivered
    /// again. An [`Error::AckUnconfirmed`] means the ack is not known to
    /// have been applied: no reply in time, no consumer to take it (deleted
    /// meanwhile), the child gone, or the decision too late (the child had
    /// given up on the delivery and nak'ed it). The message may then be
    /// delivered again; an effect that must happen once needs an
    /// idempotent step, such as a publish with a message id (see
    /// `output::Output`).
    pub async fn ack_confirmed(mut self) -> Result<(), Error> {
        let durable = self.consumer().to_string();
        let stream_sequence = self.stream_sequence();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Verdict::AckConfirmed(tx));
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(Error::AckUnconfirmed {
                durable,
                stream_sequence,
                reason: "the consumer child is gone; the message comes back".into(),
            }),
        }
    }

    /// Not processed now: it is delivered again, as soon as the server
    /// gets to it (or after the consumer's `backoff` step, if it has one).
    pub fn nak(self) {
        self.decide(Decision::Nak(None));
    }

    /// Not processed now: it is delivered again after `delay`.
    pub fn nak_after(self, delay: Duration) {
        self.decide(Decision::Nak(Some(delay)));
    }

    /// Never to be processed: terminate it, with a reason for the server's
    /// advisory. It is not delivered again.
    pub fn term(self, reason: impl Into<String>) {
        let reason = reason.into();
        self.decide(Decision::Term((!reason.is_empty()).then_some(reason)));
    }

    /// Settles with a [`Decision`] value.
    pub fn decide(mut self, decision: Decision) {
        self.send(Verdict::Decided(decision));
    }

    /// Still working on it: the child's decision timeout starts over, and
    /// the server waits another ack wait. Calls are coalesced: at most one
    /// `+WPI` per delivery per keep-alive period reaches the server. Does
    /// not settle the delivery.
    pub fn in_progress(&self) {
        let held = self.inner.received_at.elapsed() + self.inner.max_hold;
        self.inner.hold_ends.store(nanos(held), Ordering::Relaxed);
        if let Some(tx) = &self.inner.settle {
            // A closed channel means the child is gone; nothing to extend.
            let _ = tx.send(Settlement {
                token: self.inner.token,
                stream_sequence: self.inner.info.stream_sequence,
                verdict: Verdict::Progress,
            });
        }
    }

    /// Takes the message back out of a delivery that never reached its
    /// target, without settling it.
    pub(crate) fn into_message(mut self) -> async_nats::Message {
        self.inner.settle = None;
        std::mem::replace(&mut self.inner.message, placeholder())
    }

    /// Takes the settlement channel out, so that this delivery is settled
    /// by whoever holds it (a batch's one settlement): dropping it then
    /// sends nothing. Returns the channel, the token and the stream
    /// sequence; `None` when it was settled already.
    pub(crate) fn claim(&mut self) -> Option<(SettleSender, Token, u64)> {
        let tx = self.inner.settle.take()?;
        Some((tx, self.inner.token, self.inner.info.stream_sequence))
    }

    fn send(&mut self, verdict: Verdict) {
        if let Some(tx) = self.inner.settle.take() {
            // A closed channel means the child is gone and has nak'ed this
            // delivery already; it will come again.
            let _ = tx.send(Settlement {
                token: self.inner.token,
                stream_sequence: self.inner.info.stream_sequence,
                verdict,
            });
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if self.inner.settle.is_some() {
            let message = std::mem::replace(&mut self.inner.message, placeholder());
            self.send(Verdict::Abandoned(Box::new(message)));
        }
    }
}

/// A duration in whole nanoseconds, saturating (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An empty message, left in a [`Delivery`] whose own was taken out.
fn placeholder() -> async_nats::Message {
    async_nats::Message {
        subject: async_nats::Subject::from_static(""),
        reply: None,
        payload: Bytes::new(),
        headers: None,
        status: None,
        description: None,
        length: 0,
    }
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("subject", &self.subject())
            .field("payload_len", &self.inner.message.payload.len())
            .field("info", &self.inner.info)
            .field("settled", &self.inner.settle.is_none())
            .finish()
    }
}
