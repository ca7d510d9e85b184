//! One fetch's pull request as a small state machine: [`Request`] is open
//! (messages may come), waiting (refused for now, asked again after a
//! pause within `expires`) or closed; [`Fetch`] is the fetch around it.
//! What moves it: a message or status from the server
//! ([`Worker::on_message`], [`Worker::on_refusal`]) and the request's own
//! deadlines ([`Worker::on_alarm`]).

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::StatusCode;
use tokio::time::Instant;

use super::{EXPIRY_GRACE, RECONNECT_CHECK, RETRY_FIRST, RETRY_MAX, Worker};
use crate::consumer::inflight::ForwardError;
use crate::consumer::{FetchEnd, FetchOutcome, WorkerInbox};
use crate::error::Error;
use crate::target::Recipient;

/// Where a fetch's pull request stands.
pub(super) enum Request {
    /// Sent; messages or an end-of-request status may come. Considered
    /// lost at `give_up`.
    Open { give_up: Instant },
    /// The server refused it for now; asked again at `retry_at` (within
    /// `expires`).
    Waiting {
        retry_at: Instant,
        pause: Duration,
        code: u16,
        description: String,
    },
    /// Nothing more comes for this fetch.
    Closed,
}

/// Where one fetch stands.
pub(super) struct Fetch {
    pub(super) batch: usize,
    /// The reply subject of this fetch's pull requests (empty until one
    /// is sent).
    pub(super) reply_to: String,
    pub(super) expires_at: Instant,
    /// When the worker took it up.
    pub(super) started: Instant,
    pub(super) outcome: FetchOutcome,
    pub(super) request: Request,
    pub(super) end: FetchEnd,
    /// The target actor this fetch delivers to (a successor gets the next
    /// fetch).
    pub(super) target: Recipient,
    /// The target stopped during the fetch.
    pub(super) target_gone: bool,
    /// A failure that ends the child.
    pub(super) failure: Option<Error>,
    /// A failure of this fetch only.
    pub(super) refused: Option<Error>,
}

impl Fetch {
    pub(super) fn close(&mut self, end: FetchEnd) {
        if !matches!(self.request, Request::Closed) {
            self.request = Request::Closed;
            self.end = end;
        }
    }

    pub(super) fn missing(&self) -> usize {
        self.batch
            .saturating_sub(usize::try_from(self.outcome.delivered).unwrap_or(usize::MAX))
    }
}

impl Worker {
    /// The request's own deadlines: a retry due, a reconnect to make up
    /// for, an end-of-request status that never came.
    pub(super) async fn on_alarm(
        &mut self,
        fetch: &mut Fetch,
        now: Instant,
        next_check: &mut Instant,
        connected: &mut u64,
    ) {
        let inbox_subject = fetch.reply_to.clone();
        match &mut fetch.request {
            Request::Waiting {
                retry_at,
                pause,
                code,
                description,
            } => {
                if now >= fetch.expires_at {
                    let end = FetchEnd::Status {
                        code: *code,
                        description: std::mem::take(description),
                    };
                    fetch.close(end);
                } else if now >= *retry_at {
                    let left = fetch.expires_at.saturating_duration_since(now);
                    let pause = *pause;
                    match self
                        .send_request(fetch.missing(), left, &inbox_subject)
                        .await
                    {
                        Ok(()) => {
                            fetch.request = Request::Open {
                                give_up: now + left + EXPIRY_GRACE,
                            }
                        }
                        Err(_) => {
                            if let Request::Waiting { retry_at, .. } = &mut fetch.request {
                                *retry_at = now + pause;
                            }
                        }
                    }
                }
            }
            Request::Open { .. } => {
                let missing = fetch.missing();
                if now >= *next_check {
                    *next_check = now + RECONNECT_CHECK;
                    // A reconnect loses the pull request on the server: ask
                    // again for what is still missing, within what is left
                    // of `expires`.
                    let now_connected = self.client.statistics().connects.load(Ordering::Relaxed);
                    if now_connected != *connected {
                        *connected = now_connected;
                        let left = fetch.expires_at.saturating_duration_since(now);
                        if left < Duration::from_millis(10) {
                            fetch.close(FetchEnd::Expired);
                            return;
                        }
                        if self
                            .send_request(missing, left, &inbox_subject)
                            .await
                            .is_ok()
                        {
                            tracing::debug!(durable = %self.ctx.durable, missing, "reconnected; pull request sent again");
                            fetch.request = Request::Open {
                                give_up: Instant::now() + left + EXPIRY_GRACE,
                            };
                        }
                    }
                }
                if let Request::Open { give_up } = fetch.request
                    && now >= give_up
                {
                    tracing::debug!(durable = %self.ctx.durable, "no end-of-request from the server; treating the fetch as expired");
                    fetch.close(FetchEnd::Expired);
                }
            }
            Request::Closed => {}
        }
    }

    /// Handles one message of a fetch's subscription: forwards a JetStream
    /// message, or reads a status about the request.
    pub(super) async fn on_message(
        &mut self,
        message: async_nats::Message,
        fetch: &mut Fetch,
        _inbox: &WorkerInbox,
    ) {
        // A status names the request it ends by its subject (a JetStream
        // message carries its own subject): one for an earlier fetch's
        // request (given up on, or sent again after a reconnect) must not
        // end this one.
        if message.status.is_some_and(|s| s != StatusCode::OK)
            && message.subject.as_str() != fetch.reply_to
        {
            tracing::debug!(durable = %self.ctx.durable, subject = %message.subject, "a status for an earlier fetch's request; ignored");
            return;
        }
        match message.status {
            None | Some(StatusCode::OK) => {
                self.observe_pin(&message);
                match self.in_flight.forward(message, &fetch.target) {
                    Ok(_) => fetch.outcome.delivered += 1,
                    Err(ForwardError::TargetGone) => {
                        // The rest of this request is nak'ed (or kept, on a
                        // last delivery) as it comes, never forwarded.
                        if !fetch.target_gone {
                            fetch.target_gone = true;
                            tracing::warn!(durable = %self.ctx.durable, "the target stopped during a fetch");
                        }
                    }
                    Err(ForwardError::NotJetStream) => {
                        tracing::warn!(durable = %self.ctx.durable, "ignored a message without JetStream metadata");
                    }
                }
                crate::fault_point!("rj-pull-after-forward");
                if fetch.outcome.delivered >= fetch.batch as u64 {
                    fetch.close(FetchEnd::Filled);
                }
            }
            Some(StatusCode::TIMEOUT) => fetch.close(FetchEnd::Expired),
            Some(StatusCode::NOT_FOUND) => fetch.close(FetchEnd::NoMoreMessages),
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(status) => {
                let description = message.description.unwrap_or_default();
                tracing::debug!(durable = %self.ctx.durable, %status, %description, "pull request ended by the server");
                // Boxed: rare and large (see "Small futures" in
                // `consumer.rs`).
                Box::pin(self.on_refusal(fetch, status, description)).await;
            }
        }
    }

    /// The server ended the request with a status other than expiry or
    /// "no more messages".
    async fn on_refusal(&mut self, fetch: &mut Fetch, status: StatusCode, description: String) {
        let code = status.as_u16();
        if code == 423 {
            // Stand by: asked again without the pin, below.
            self.pin_moved();
        }
        let lower = description.to_ascii_lowercase();
        if let Some(gone) = self.deleted_consumer(status, &lower).await {
            fetch.failure.get_or_insert(gone);
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        if super::refused_for_good(code, &lower) {
            self.refresh_limits().await;
            fetch.refused.get_or_insert(Error::FetchRefused {
                durable: self.ctx.durable.to_string(),
                code,
                description: description.clone(),
            });
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        if fetch.outcome.delivered > 0 {
            // Something came: end here rather than wait, and say why.
            fetch.close(FetchEnd::Status { code, description });
            return;
        }
        // Refused for now (other requests wait on the consumer, a leader
        // changed): ask again after a pause, within `expires`, so that a
        // loop of fetches does not spin on it.
        let pause = match &fetch.request {
            Request::Waiting { pause, .. } => (*pause * 2).min(RETRY_MAX),
            _ => RETRY_FIRST,
        };
        fetch.request = Request::Waiting {
            retry_at: Instant::now() + pause,
            pause,
            code,
            description,
        };
    }
}
