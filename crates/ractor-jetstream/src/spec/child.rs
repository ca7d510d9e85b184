//! The child's own knobs, which the server never sees: [`ChildSettings`],
//! and the key of keyed workers, [`KeySpec`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::restart::RestartKind;

/// The child's own knobs: the server never sees them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChildSettings {
    /// How long the target may hold a delivery without deciding before the
    /// child nak's it (default 5 minutes). Meanwhile the child keeps the
    /// delivery alive on the server (`+WPI` every half of the server's ack
    /// wait), so a slow target never gets a message redelivered to another
    /// worker while it still holds it. [`Delivery::in_progress`](crate::Delivery::in_progress)
    /// starts this time over. Written `max_hold` in a topology file (the
    /// older `decision_timeout` is read too).
    pub max_hold: Option<Duration>,
    /// Whether the child is restarted when it stops (default: permanent).
    pub restart: RestartKind,
    /// Where poison messages go before they are terminated: a message the
    /// target terms, and one whose last allowed delivery (`max_deliver`)
    /// fails. A stream must capture this subject (the publish is confirmed
    /// before the term); the consumer itself must not.
    pub dead_letter_subject: Option<String>,
    /// Keyed parallelism: this many workers behind the durable, each
    /// message handled by one of them, in order per key (see the `keyed`
    /// module). The target must then be keyed `Workers`.
    /// Unset: one target actor.
    pub workers: Option<u32>,
    /// What a message's key is, for `workers` (a function given in code
    /// with `Workers::key_fn` takes its place).
    pub key: Option<KeySpec>,
    /// Sends every ack for the server to confirm (as async-nats'
    /// `double_ack` does, without a round trip per message: the replies
    /// come back on one subscription) and counts what was confirmed and
    /// what was not in the stats. A target that must know, whatever this
    /// says, awaits [`Delivery::ack_confirmed`](crate::Delivery::ack_confirmed).
    /// A fetch answers once its acks are sent; their confirmations follow
    /// (`acks_confirmed` in the stats).
    pub confirm_acks: bool,
    /// How often the child reads the consumer's info from the server, for
    /// its lag (`num_pending`, `num_ack_pending`, `num_redelivered`, the
    /// ack floor) as metrics and in its stats. Unset: never. One request
    /// per interval, never on the data path.
    pub info_interval: Option<Duration>,
    /// Watches the server's advisories for this durable (a message that
    /// reached `max_deliver`, one terminated, the consumer deleted) and
    /// turns them into log events and the
    /// `jetstream_consumer_advisories_total` metric. Needs permission to
    /// subscribe to `$JS.EVENT.ADVISORY.CONSUMER.>`.
    pub advisories: bool,
}

/// The most workers one consumer may feed.
pub const MAX_WORKERS: u32 = 1024;

/// What a message's key is: the messages of one key are handled one at a
/// time and in stream order; different keys in parallel.
///
/// In a topology file: `key = { subject_token = 2 }` or
/// `key = { header = "Nats-Key" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum KeySpec {
    /// The subject's token at this index, from 0 (`orders.eu.42` has
    /// `orders` at 0). A subject with fewer tokens has the empty key.
    SubjectToken(usize),
    /// The value of this header (the empty key when it is missing).
    Header(String),
}
