//! Poison messages: dead letters and the last delivery.
//!
//! A message that cannot be processed must end somewhere defined, never
//! vanish. Two cases:
//!
//! - The target terms it ([`Delivery::term`](crate::Delivery::term), or
//!   [`Delivery::json_or_term`](crate::Delivery::json_or_term) on a payload
//!   that does not decode).
//! - Its last allowed delivery (`max_deliver`) fails: nak'ed, dropped, or
//!   not decided in time. A nak then would make the server drop it
//!   silently, so the child terms it instead, with the reason.
//!
//! When the consumer spec sets `dead_letter_subject`, the original message
//! (read back from the stream by its sequence) is first published there,
//! with its own headers plus `Nats-DLQ-Stream`, `Nats-DLQ-Consumer`,
//! `Nats-DLQ-Subject`, `Nats-DLQ-Sequence`, `Nats-DLQ-Delivered` and
//! `Nats-DLQ-Error`. That publish must be confirmed by a stream capturing
//! the subject before the term is sent; if it is not, the message is nak'ed
//! instead (and comes back), so nothing is lost.
//!
//! Each dead letter carries a `Nats-Msg-Id` made of the stream, the
//! sequence and the delivery count, so that one sent again (a retry, or a
//! stopped child finishing what it started) is stored once.
//!
//! The publishes run in a task of their own, one at a time in the order the
//! decisions came ([`DeadLetterQueue`]), so the dead-letter stream holds
//! them in that order, and a slow or unavailable dead-letter stream holds
//! up only the messages being dead-lettered, which the child keeps alive
//! meanwhile.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, jetstream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::delivery::{Settlement, Token, Verdict};

/// How long one attempt to store a dead letter may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// The pause between two attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Where poison messages go, and when a delivery is the last one.
#[derive(Clone)]
pub(crate) struct DeadLetters {
    js: jetstream::Context,
    stream: Arc<str>,
    consumer: Arc<str>,
    subject: Option<String>,
    max_deliver: Option<u64>,
}

impl DeadLetters {
    pub fn new(
        js: jetstream::Context,
        stream: Arc<str>,
        consumer: Arc<str>,
        subject: Option<String>,
        max_deliver: Option<u64>,
    ) -> Self {
        Self {
            js,
            stream,
            consumer,
            subject,
            max_deliver,
        }
    }

    /// Whether a dead-letter subject is configured.
    pub fn enabled(&self) -> bool {
        self.subject.is_some()
    }

    /// The `max_deliver` limit, when the delivery `delivered` is the last
    /// one it allows.
    pub fn last_delivery(&self, delivered: u64) -> Option<u64> {
        self.max_deliver.filter(|max| delivered >= *max)
    }

    /// Tries to store the dead letter until it is confirmed or `until`
    /// passes (at least one attempt). Returns whether it was confirmed.
    pub async fn send_until(
        &self,
        sequence: u64,
        delivered: u64,
        why: &str,
        until: Instant,
    ) -> bool {
        loop {
            if self.send_once(sequence, delivered, why).await {
                return true;
            }
            if Instant::now() + RETRY_PAUSE >= until {
                return false;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// One attempt, bounded by [`ATTEMPT_TIMEOUT`]. Returns whether the
    /// dead letter was confirmed; logs why not.
    pub async fn send_once(&self, sequence: u64, delivered: u64, why: &str) -> bool {
        let result = tokio::time::timeout(ATTEMPT_TIMEOUT, self.send(sequence, delivered, why))
            .await
            .unwrap_or_else(|_| Err(format!("not confirmed within {ATTEMPT_TIMEOUT:?}")));
        match result {
            Ok(()) => {
                tracing::info!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = sequence,
                    reason = %why,
                    "dead-lettered"
                );
                true
            }
            Err(error) => {
                tracing::error!(
                    stream = %self.stream,
                    durable = %self.consumer,
                    stream_sequence = sequence,
                    %error,
                    "could not dead-letter"
                );
                false
            }
        }
    }

    /// Publishes the message with this stream sequence to the dead-letter
    /// subject and waits for the server to confirm it is stored.
    async fn send(&self, sequence: u64, delivered: u64, error: &str) -> Result<(), String> {
        let Some(subject) = &self.subject else {
            return Err("no dead-letter subject is configured".into());
        };
        let stream = self
            .js
            .get_stream_no_info(self.stream.as_ref())
            .await
            .map_err(|e| format!("cannot open stream {}: {e}", self.stream))?;
        let original = stream
            .get_raw_message(sequence)
            .await
            .map_err(|e| format!("cannot read stream sequence {sequence} back: {e}"))?;
        let mut headers = HeaderMap::new();
        for (name, values) in original.headers.iter() {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert("Nats-DLQ-Stream", self.stream.as_ref());
        headers.insert("Nats-DLQ-Consumer", self.consumer.as_ref());
        headers.insert("Nats-DLQ-Subject", original.subject.as_str());
        headers.insert("Nats-DLQ-Sequence", sequence.to_string().as_str());
        headers.insert("Nats-DLQ-Delivered", delivered.to_string().as_str());
        headers.insert("Nats-DLQ-Error", one_line(error).as_str());
        let id = format!("dlq-{}-{sequence}-{delivered}", self.stream);
        headers.insert("Nats-Msg-Id", id.as_str());
        let ack = self
            .js
            .publish_with_headers(subject.clone(), headers, original.payload)
            .await
            .map_err(|e| format!("cannot publish to {subject}: {e}"))?;
        ack.await
            .map_err(|e| format!("{subject} did not confirm the dead letter: {e}"))?;
        Ok(())
    }
}

/// One dead letter to send.
pub(crate) struct Job {
    /// The delivery it is for, to report back.
    pub token: Token,
    pub sequence: u64,
    pub delivered: u64,
    pub why: String,
    /// Tried until confirmed or this passes (at least once).
    pub until: Instant,
}

/// Sends dead letters one at a time, in the order they were queued, in a
/// task of its own that reports each result back on the child's
/// settlement channel as [`Verdict::DeadLettered`]. The task is aborted
/// when the queue is dropped; the child's drop guard then sends what was
/// not confirmed again (the message id keeps it stored once).
pub(crate) struct DeadLetterQueue {
    jobs: mpsc::UnboundedSender<Job>,
    task: JoinHandle<()>,
}

impl DeadLetterQueue {
    pub fn start(dead_letters: DeadLetters, report: mpsc::UnboundedSender<Settlement>) -> Self {
        let (jobs, mut queue) = mpsc::unbounded_channel::<Job>();
        let task = tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                let confirmed = dead_letters
                    .send_until(job.sequence, job.delivered, &job.why, job.until)
                    .await;
                let _ = report.send(Settlement {
                    token: job.token,
                    stream_sequence: job.sequence,
                    verdict: Verdict::DeadLettered(confirmed),
                });
            }
        });
        Self { jobs, task }
    }

    pub fn push(&self, job: Job) {
        // The task ends only when the queue is dropped.
        let _ = self.jobs.send(job);
    }
}

impl Drop for DeadLetterQueue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Header values are one line.
fn one_line(text: &str) -> String {
    text.replace(['\r', '\n'], " ")
}
