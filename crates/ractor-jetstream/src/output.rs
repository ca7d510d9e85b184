//! Exactly-once output for consume-transform-produce pipelines.
//!
//! A target that turns each input message into results published to an
//! output stream gets each result stored **exactly once**, however often
//! the input is redelivered, when it publishes through an [`Output`]:
//!
//! 1. each result is published with a `Nats-Msg-Id` derived from the input
//!    (`<input stream>:<stream sequence>:<index>`, the index numbering the
//!    results of one input), so the output stream stores a repeat of it
//!    as a duplicate instead of a new message, as long as the repeat comes
//!    within its `duplicate_window`;
//! 2. the publish waits for the output stream's ack;
//! 3. only then is the input acked, and that ack is confirmed by the server
//!    ([`Delivery::ack_confirmed`]).
//!
//! A crash anywhere in between leaves the input unacked: it comes back,
//! its results are published again with the same ids, and the output
//! stream drops them as duplicates ([`Published::duplicate`]).
//!
//! **The guarantee and its conditions.** The output stream holds each
//! result once if (a) every repeat of a publish comes within the output
//! stream's duplicate window of the first, which [`Output::bind`] checks:
//! the window must cover the input consumer's redelivery horizon,
//! `max_deliver` deliveries of at most the longer of the consumer's ack
//! wait (or its backoff step) and the child's `max_hold` each (with
//! unlimited `max_deliver` nothing can cover it, and `bind` refuses);
//! nak delays a target chooses itself add to that horizon and are not
//! known here; (b) the results go to this one output stream (the ids are
//! only unique per stream); (c) a result's id depends only on its input,
//! so the target numbers the results of one input the same way every time
//! (deterministic output).
//!
//! **What it does not cover:** effects outside NATS (a database write, an
//! HTTP call) happen once per delivery, so again after a redelivery; make
//! those idempotent on their own. And an input termed or dead-lettered
//! after some of its results were published keeps those results.
//!
//! ```no_run
//! use ractor_jetstream::output::Output;
//! use ractor_jetstream::{ConsumerSpec, Delivery};
//!
//! # async fn run(js: async_nats::jetstream::Context, input: ConsumerSpec, delivery: Delivery) -> Result<(), ractor_jetstream::Error> {
//! // Once, at start: the output stream's window must cover the input's
//! // redelivery horizon.
//! let output = Output::bind(&js, "RESULTS", &input).await?;
//! // In the target, per delivery:
//! let payload = [b"out:".as_slice(), delivery.payload()].concat();
//! let published = output
//!     .publish_and_ack(delivery, "results.orders", payload.into())
//!     .await?;
//! if published.duplicate {
//!     // A redelivered input: its result was stored already.
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use bytes::Bytes;

use crate::delivery::Delivery;
use crate::error::{Error, ServerErrorKind};
use crate::spec::ConsumerSpec;

/// An output stream that stores each result of an input once; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct Output {
    js: jetstream::Context,
    stream: String,
    duplicate_window: Duration,
    horizon: Duration,
}

/// What the output stream said of one publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The result's sequence in the output stream (the first copy's, for a
    /// duplicate).
    pub sequence: u64,
    /// The output stream had this result already (its id was seen within
    /// the duplicate window): nothing new was stored.
    pub duplicate: bool,
}

impl Output {
    /// The output stream `stream`, for the results of the deliveries of
    /// `input`, whose durable must exist on the server (made by a
    /// supervisor or a child, or by [`ensure_consumer`](crate::ensure_consumer)
    /// before the target that holds this `Output` is spawned). Checks that the stream's duplicate window covers the
    /// consumer's redelivery horizon (see [`redelivery_horizon`]); an
    /// [`Error::Invalid`] says by how much it does not, or that the
    /// consumer's unlimited `max_deliver` has no horizon.
    pub async fn bind(
        js: &jetstream::Context,
        stream: &str,
        input: &ConsumerSpec,
    ) -> Result<Self, Error> {
        let mut output = js.get_stream(stream).await.map_err(|err| {
            Error::server_caused(
                format!("get stream `{stream}`"),
                ServerErrorKind::Other,
                err,
            )
        })?;
        let duplicate_window = output
            .info()
            .await
            .map_err(|err| {
                Error::server_caused(
                    format!("stream info `{stream}`"),
                    ServerErrorKind::Other,
                    err,
                )
            })?
            .config
            .duplicate_window;
        let mut consumer = js
            .get_consumer_from_stream::<consumer::Config, _, _>(&input.durable, &input.stream)
            .await
            .map_err(|err| {
                Error::server_caused(
                    format!("get consumer `{}` on `{}`", input.durable, input.stream),
                    ServerErrorKind::Other,
                    err,
                )
            })?;
        let config = consumer
            .info()
            .await
            .map_err(|err| {
                Error::server_caused(
                    format!("consumer info `{}`", input.durable),
                    ServerErrorKind::Other,
                    err,
                )
            })?
            .config
            .clone();
        let field = format!("output `{stream}`: duplicate_window");
        let Some(horizon) = redelivery_horizon(&config, input.effective_max_hold()) else {
            return Err(Error::invalid(
                field,
                format!("{duplicate_window:?}"),
                format!(
                    "the input consumer `{}` has unlimited max_deliver, so a result may be published again at any time after the window; set its max_deliver",
                    input.durable
                ),
            ));
        };
        if duplicate_window < horizon {
            return Err(Error::invalid(
                field,
                format!("{duplicate_window:?}"),
                format!(
                    "shorter than the input consumer `{}`'s redelivery horizon ({:?}: max_deliver {} x the longer of its ack wait and max_hold); a redelivery after the window would store its result again: set duplicate_window to at least that, or lower max_deliver, ack_wait or max_hold",
                    input.durable, horizon, config.max_deliver,
                ),
            ));
        }
        Ok(Self {
            js: js.clone(),
            stream: stream.to_string(),
            duplicate_window,
            horizon,
        })
    }

    /// The output stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The output stream's duplicate window, and the input's redelivery
    /// horizon it covers.
    pub fn window(&self) -> (Duration, Duration) {
        (self.duplicate_window, self.horizon)
    }

    /// The message id of result `index` of `input`:
    /// `<input stream>:<stream sequence>:<index>`.
    pub fn message_id(input: &Delivery, index: u32) -> String {
        format!("{}:{}:{index}", input.stream(), input.stream_sequence())
    }

    /// Publishes result `index` of `input` to `subject` with its message
    /// id, and waits for the output stream's ack. Does not settle `input`:
    /// ack it (confirmed) once all its results are published.
    pub async fn publish(
        &self,
        input: &Delivery,
        index: u32,
        subject: impl Into<String>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let subject = subject.into();
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(Self::message_id(input, index))
            .expected_stream(&self.stream);
        let op = || format!("publish to `{subject}` (output `{}`)", self.stream);
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(|err| Error::server_caused(op(), ServerErrorKind::Other, err))?
            .await
            .map_err(|err| Error::server_caused(op(), ServerErrorKind::Other, err))?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    /// Publishes the one result of `input` (index 0), then acks `input`
    /// and waits for the server to confirm the ack. When the publish
    /// fails, `input` is dropped (and so nak'ed: it comes back); when the
    /// ack is not confirmed, the result is stored and a redelivery will
    /// find it a duplicate.
    pub async fn publish_and_ack(
        &self,
        input: Delivery,
        subject: impl Into<String>,
        payload: Bytes,
    ) -> Result<Published, Error> {
        let published = self.publish(&input, 0, subject, payload).await?;
        input.ack_confirmed().await?;
        Ok(published)
    }
}

/// How long after a message's first delivery it may still be delivered
/// again: `max_deliver` deliveries, each lasting at most the longer of
/// `max_hold` (a child keeps a held delivery alive that long) and the
/// server's wait for that delivery (`backoff[n]`, its last step repeated,
/// or `ack_wait`). `None` when `max_deliver` is unlimited.
pub fn redelivery_horizon(config: &consumer::Config, max_hold: Duration) -> Option<Duration> {
    let deliveries = u32::try_from(config.max_deliver).ok().filter(|n| *n > 0)?;
    let ack_wait = if config.ack_wait.is_zero() {
        crate::spec::DEFAULT_ACK_WAIT
    } else {
        config.ack_wait
    };
    let horizon = (0..deliveries as usize)
        .map(|n| {
            let wait = match config.backoff.as_slice() {
                [] => ack_wait,
                steps => steps[n.min(steps.len() - 1)],
            };
            wait.max(max_hold)
        })
        .fold(Duration::ZERO, Duration::saturating_add);
    Some(horizon)
}
