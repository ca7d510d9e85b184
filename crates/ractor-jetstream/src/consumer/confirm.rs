//! Confirmed acks: an ack the server answers, so that the child (and a
//! target awaiting [`Delivery::ack_confirmed`](crate::Delivery::ack_confirmed))
//! knows it was applied.
//!
//! async-nats' `double_ack` makes one inbox subscription and one round trip
//! per ack. Here each child has one subscription on an inbox prefix, made
//! on the first confirmed ack; each ack is published with a reply subject
//! under it (`<prefix>.<id>`) and the worker goes on at once. A task reads
//! the replies and settles each waiting ack: any reply from the consumer
//! confirms it; a "no responders" status means no consumer took it (it was
//! deleted); no reply within [`CONFIRM_WITHIN`] fails it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::{StatusCode, Subject};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Counters;
use crate::error::Error;

/// How long the server has to confirm an ack.
pub const CONFIRM_WITHIN: Duration = Duration::from_secs(5);

/// Told whether an ack was confirmed.
pub(crate) type Waiter = oneshot::Sender<Result<(), Error>>;

/// An ack waiting for its confirmation.
struct Waiting {
    stream_sequence: u64,
    deadline: Instant,
    waiter: Option<Waiter>,
}

type Pending = Arc<Mutex<HashMap<u64, Waiting>>>;

/// A child's confirmed acks; see the module docs.
pub(crate) struct Confirmer {
    client: async_nats::Client,
    durable: Arc<str>,
    prefix: String,
    pending: Pending,
    next_id: u64,
    task: JoinHandle<()>,
}

impl Confirmer {
    /// Subscribes to a fresh inbox prefix and starts reading it.
    pub async fn start(
        client: async_nats::Client,
        durable: Arc<str>,
        counters: Arc<Counters>,
    ) -> Result<Self, async_nats::SubscribeError> {
        let prefix = client.new_inbox();
        let replies = client.subscribe(format!("{prefix}.*")).await?;
        let pending = Pending::default();
        let task = tokio::spawn(read_replies(
            replies,
            pending.clone(),
            counters,
            durable.clone(),
        ));
        Ok(Self {
            client,
            durable,
            prefix,
            pending,
            next_id: 0,
            task,
        })
    }

    /// Sends an ack (`payload`) to `reply` for the server to confirm;
    /// `waiter`, if any, is told the outcome.
    pub async fn ack(
        &mut self,
        reply: Subject,
        payload: Bytes,
        stream_sequence: u64,
        waiter: Option<Waiter>,
        counters: &Counters,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        lock(&self.pending).insert(
            id,
            Waiting {
                stream_sequence,
                deadline: Instant::now() + CONFIRM_WITHIN,
                waiter,
            },
        );
        let inbox = Subject::from(format!("{}.{id}", self.prefix));
        if let Err(err) = self.client.publish_with_reply(reply, inbox, payload).await {
            let waiting = lock(&self.pending).remove(&id);
            if let Some(waiting) = waiting {
                fail(waiting, &self.durable, counters, format!("not sent: {err}"));
            }
        }
    }
}

impl Drop for Confirmer {
    fn drop(&mut self) {
        self.task.abort();
        // The child stops: what was not confirmed yet is not known to be
        // applied. The server delivers such a message again if it was not.
        for (_, waiting) in lock(&self.pending).drain() {
            if let Some(waiter) = waiting.waiter {
                let _ = waiter.send(Err(unconfirmed(
                    &self.durable,
                    waiting.stream_sequence,
                    "the consumer child stopped before the server confirmed",
                )));
            }
        }
    }
}

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn unconfirmed(durable: &str, stream_sequence: u64, reason: impl Into<String>) -> Error {
    Error::AckUnconfirmed {
        durable: durable.to_string(),
        stream_sequence,
        reason: reason.into(),
    }
}

fn fail(waiting: Waiting, durable: &str, counters: &Counters, reason: String) {
    counters.ack_unconfirmed();
    tracing::warn!(%durable, stream_sequence = waiting.stream_sequence, %reason, "ack not confirmed");
    if let Some(waiter) = waiting.waiter {
        let _ = waiter.send(Err(unconfirmed(durable, waiting.stream_sequence, reason)));
    }
}

/// Reads the replies, and fails what waited too long.
async fn read_replies(
    mut replies: async_nats::Subscriber,
    pending: Pending,
    counters: Arc<Counters>,
    durable: Arc<str>,
) {
    let mut sweep = tokio::time::interval(CONFIRM_WITHIN / 10);
    loop {
        tokio::select! {
            reply = replies.next() => {
                let Some(reply) = reply else { return };
                let Some(id) = reply.subject.rsplit('.').next().and_then(|id| id.parse::<u64>().ok()) else {
                    continue;
                };
                let Some(waiting) = lock(&pending).remove(&id) else {
                    continue;
                };
                match reply.status {
                    Some(StatusCode::NO_RESPONDERS) => fail(
                        waiting,
                        &durable,
                        &counters,
                        "no consumer took it (deleted?)".into(),
                    ),
                    Some(status) if !status.is_success() => fail(
                        waiting,
                        &durable,
                        &counters,
                        format!("the server answered {status}"),
                    ),
                    _ => {
                        counters.ack_confirmed();
                        if let Some(waiter) = waiting.waiter {
                            let _ = waiter.send(Ok(()));
                        }
                    }
                }
            }
            _ = sweep.tick() => {
                let now = Instant::now();
                let expired: Vec<Waiting> = {
                    let mut pending = lock(&pending);
                    let ids: Vec<u64> = pending
                        .iter()
                        .filter(|(_, w)| w.deadline <= now)
                        .map(|(id, _)| *id)
                        .collect();
                    ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
                };
                for waiting in expired {
                    fail(
                        waiting,
                        &durable,
                        &counters,
                        format!("no confirmation within {CONFIRM_WITHIN:?}"),
                    );
                }
            }
        }
    }
}
