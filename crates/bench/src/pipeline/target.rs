//! The pipeline case's target: one actor that handles each delivery as
//! the run's [`Variant`] says, and the [`Tally`] of what it (and the tasks
//! it spawns) saw, which the run checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_jetstream::output::{Output, Published};
use ractor_jetstream::{Delivery, Error};

use super::{BoxError, OUTPUT_SUBJECT, Variant};

/// What the target (and its tasks) saw; shared with the run.
#[derive(Default)]
pub(super) struct Tally {
    /// Deliveries finished, well or not.
    finished: AtomicU64,
    /// Results the output stream had already.
    duplicates: AtomicU64,
    /// What went wrong, with the input's stream sequence.
    failures: Mutex<Vec<String>>,
}

impl Tally {
    pub(super) fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    /// A delivery acked: with `ack()` (always `Ok`), or with
    /// `ack_confirmed()` and what the server said.
    fn acked(&self, stream_sequence: u64, result: Result<(), Error>) {
        if let Err(err) = result {
            self.fail(stream_sequence, err);
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery published and acked with `publish_and_ack`.
    fn published(&self, stream_sequence: u64, result: Result<Published, Error>) {
        match result {
            Ok(published) if published.duplicate => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => self.fail(stream_sequence, err),
        }
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, stream_sequence: u64, err: impl std::fmt::Display) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(format!("stream sequence {stream_sequence}: {err}"));
    }

    /// Fails unless `n` deliveries finished without an error or a
    /// duplicate.
    pub(super) fn check(&self, label: &str, n: u64) -> Result<(), BoxError> {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let duplicates = self.duplicates.load(Ordering::Relaxed);
        if let Some(first) = failures.first() {
            return Err(format!(
                "{label}: {} deliveries failed, the first: {first}",
                failures.len()
            )
            .into());
        }
        if duplicates != 0 || self.finished() != n {
            return Err(format!(
                "{label}: the target finished {} deliveries with {duplicates} duplicates, expected {n} and 0",
                self.finished()
            )
            .into());
        }
        Ok(())
    }
}

/// The target of every run: handles each delivery as its variant says.
pub(super) struct PipelineTarget;

/// The target's state.
pub(super) struct PipelineState {
    pub(super) variant: Variant,
    /// The output stream, for the variants that publish (bound once the
    /// consumer exists, before the first fetch).
    pub(super) output: Option<Arc<Output>>,
    pub(super) tally: Arc<Tally>,
}

/// The target's messages.
#[allow(clippy::large_enum_variant)] // ractor boxes every message anyway
pub(super) enum PipelineMsg {
    /// A delivery.
    Delivery(Delivery),
    /// The output stream to publish to.
    Output(Arc<Output>),
}

impl From<Delivery> for PipelineMsg {
    fn from(delivery: Delivery) -> Self {
        PipelineMsg::Delivery(delivery)
    }
}

impl TryFrom<PipelineMsg> for Delivery {
    type Error = PipelineMsg;
    fn try_from(msg: PipelineMsg) -> Result<Self, PipelineMsg> {
        match msg {
            PipelineMsg::Delivery(delivery) => Ok(delivery),
            other => Err(other),
        }
    }
}

impl Actor for PipelineTarget {
    type Msg = PipelineMsg;
    type State = PipelineState;
    type Arguments = PipelineState;

    async fn pre_start(
        &self,
        _: ActorRef<PipelineMsg>,
        state: PipelineState,
    ) -> Result<PipelineState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        _: ActorRef<PipelineMsg>,
        msg: PipelineMsg,
        state: &mut PipelineState,
    ) -> Result<(), ActorProcessingErr> {
        let delivery = match msg {
            PipelineMsg::Output(output) => {
                state.output = Some(output);
                return Ok(());
            }
            PipelineMsg::Delivery(delivery) => delivery,
        };
        let tally = &state.tally;
        let sequence = delivery.stream_sequence();
        match (state.variant, &state.output) {
            (Variant::Plain | Variant::ConfirmAcks, _) => {
                delivery.ack();
                tally.acked(sequence, Ok(()));
            }
            (Variant::AckConfirmed, _) => tally.acked(sequence, delivery.ack_confirmed().await),
            (Variant::PublishAndAck, Some(output)) => {
                tally.published(sequence, publish(output, delivery).await);
            }
            (Variant::PublishAndAckConcurrent, Some(output)) => {
                let (output, tally) = (output.clone(), tally.clone());
                tokio::spawn(async move {
                    tally.published(sequence, publish(&output, delivery).await);
                });
            }
            (Variant::PublishAndAck | Variant::PublishAndAckConcurrent, None) => {
                // Dropped, so nak'ed; the run fails on the failure.
                tally.fail(sequence, "no output stream bound before the delivery");
                tally.finished.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// The transform: the input's payload, as the one result.
async fn publish(output: &Output, delivery: Delivery) -> Result<Published, Error> {
    let payload = delivery.payload().clone();
    output
        .publish_and_ack(delivery, OUTPUT_SUBJECT, payload)
        .await
}
