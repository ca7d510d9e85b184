//! Deliveries handed to a batch target together.

use std::time::Duration;

use super::{Decision, Delivery, ORPHAN, SettleSender, Settlement, Token, Verdict};

/// The deliveries a consumer child had ready at one moment, handed to a
/// batch target ([`Target::batches`](crate::Target::batches)) in one actor
/// message instead of one message each.
///
/// Each [`Delivery`] in it is still settled on its own (ack, nak, term),
/// with the same guarantees as one that came alone: its hold runs from
/// when the child received it, and one dropped unsettled is nak'ed. A
/// batch holds the deliveries in the order the server sent them, and is
/// never empty. It holds no more than the child has out at once (the push
/// window, the fetch, or the continuous window), and at most 256; a
/// fetch-driven pull child hands over what it has every 16 messages, so
/// that the target starts while the rest of the fetch arrives.
///
/// What it saves: one actor message per delivery, which costs a ractor
/// application more CPU than anything else on the way (see the README's
/// Benchmarks).
///
/// ```no_run
/// use std::time::Duration;
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
/// use ractor_jetstream::{Deliveries, SupervisorArgs, Target, Topology};
///
/// /// Stores each batch in one write, then acks it; when the write
/// /// fails, the whole batch comes again a second later.
/// struct Writer;
///
/// impl Actor for Writer {
///     type Msg = Deliveries;
///     type State = ();
///     type Arguments = ();
///
///     async fn pre_start(
///         &self,
///         _: ActorRef<Deliveries>,
///         _: (),
///     ) -> Result<(), ActorProcessingErr> {
///         Ok(())
///     }
///
///     async fn handle(
///         &self,
///         _: ActorRef<Deliveries>,
///         batch: Deliveries,
///         _: &mut (),
///     ) -> Result<(), ActorProcessingErr> {
///         let payloads: Vec<_> = batch.iter().map(|d| d.payload().clone()).collect();
///         // ... one write of `payloads` ...
///         # drop(payloads);
///         # let written: Result<(), std::io::Error> = Ok(());
///         match written {
///             Ok(()) => batch.ack_all(),
///             Err(_) => batch.nak_all_after(Duration::from_secs(1)),
///         }
///         Ok(())
///     }
/// }
///
/// # async fn run(
/// #     js: async_nats::jetstream::Context,
/// #     topology: Topology,
/// # ) -> Result<(), Box<dyn std::error::Error>> {
/// let (writer, _) = Actor::spawn(None, Writer, ()).await?;
/// let args = SupervisorArgs::new(js, topology)
///     .target("writer", Target::batches(writer.get_derived()));
/// # drop(args);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct Deliveries {
    deliveries: Vec<Delivery>,
}

impl Deliveries {
    pub(crate) fn new(deliveries: Vec<Delivery>) -> Self {
        Self { deliveries }
    }

    /// How many deliveries it holds.
    pub fn len(&self) -> usize {
        self.deliveries.len()
    }

    /// Whether it holds none (a batch the child sends never is).
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty()
    }

    /// The deliveries, in order, to look at before settling them.
    pub fn iter(&self) -> std::slice::Iter<'_, Delivery> {
        self.deliveries.iter()
    }

    /// Acks every delivery in it ([`Delivery::ack`]). This and the other
    /// `_all` methods reach the child in one message for the batch, where
    /// deciding each delivery sends one each: the cheaper way to settle a
    /// batch whole.
    pub fn ack_all(self) {
        self.decide_all(Decision::Ack);
    }

    /// Nak's every delivery in it ([`Delivery::nak`]): each is delivered
    /// again, as soon as the server gets to it (or after the consumer's
    /// `backoff` step).
    pub fn nak_all(self) {
        self.decide_all(Decision::Nak(None));
    }

    /// Nak's every delivery in it, to be delivered again after `delay`
    /// ([`Delivery::nak_after`]): for a batch whose one write failed.
    pub fn nak_all_after(self, delay: Duration) {
        self.decide_all(Decision::Nak(Some(delay)));
    }

    /// Terminates every delivery in it, each with `reason`
    /// ([`Delivery::term`]): none is delivered again.
    pub fn term_all(self, reason: impl Into<String>) {
        let reason = reason.into();
        self.decide_all(Decision::Term((!reason.is_empty()).then_some(reason)));
    }

    /// Settles every delivery in it with `decision`, as
    /// [`Delivery::decide`] on each would, in one settlement per child
    /// instead of one per delivery (a batch comes from one child, so that
    /// is one).
    fn decide_all(self, decision: Decision) {
        let len = self.deliveries.len();
        let mut run: Option<(SettleSender, Vec<(Token, u64)>)> = None;
        for mut delivery in self {
            let Some((tx, token, stream_sequence)) = delivery.claim() else {
                continue;
            };
            match &mut run {
                Some((current, settled)) if current.same_channel(&tx) => {
                    settled.push((token, stream_sequence));
                }
                _ => {
                    let mut settled = Vec::with_capacity(len);
                    settled.push((token, stream_sequence));
                    let next = (tx, settled);
                    if let Some((current, settled)) = run.replace(next) {
                        send_all(&current, settled, decision.clone());
                    }
                }
            }
        }
        if let Some((current, settled)) = run {
            send_all(&current, settled, decision);
        }
    }

    /// The deliveries, in order, as a vector.
    pub fn into_vec(self) -> Vec<Delivery> {
        self.deliveries
    }
}

/// Sends one decision on `settled` to their child. A closed channel means
/// the child is gone and has nak'ed them already; they will come again.
fn send_all(tx: &SettleSender, settled: Vec<(Token, u64)>, decision: Decision) {
    let settlement = match settled.as_slice() {
        [(token, stream_sequence)] => Settlement {
            token: *token,
            stream_sequence: *stream_sequence,
            verdict: Verdict::Decided(decision),
        },
        _ => Settlement {
            token: ORPHAN,
            stream_sequence: 0,
            verdict: Verdict::DecidedAll(decision, settled),
        },
    };
    let _ = tx.send(settlement);
}

impl IntoIterator for Deliveries {
    type Item = Delivery;
    type IntoIter = std::vec::IntoIter<Delivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.deliveries.into_iter()
    }
}
