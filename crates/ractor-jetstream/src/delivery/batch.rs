//! Deliveries handed to a batch target together.

use super::Delivery;

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
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
/// use ractor_jetstream::{Deliveries, SupervisorArgs, Target, Topology};
///
/// /// Stores each batch in one write, then acks it.
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
///         batch.ack_all();
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

    /// Acks every delivery in it.
    pub fn ack_all(self) {
        for delivery in self {
            delivery.ack();
        }
    }

    /// The deliveries, in order, as a vector.
    pub fn into_vec(self) -> Vec<Delivery> {
        self.deliveries
    }
}

impl IntoIterator for Deliveries {
    type Item = Delivery;
    type IntoIter = std::vec::IntoIter<Delivery>;

    fn into_iter(self) -> Self::IntoIter {
        self.deliveries.into_iter()
    }
}
