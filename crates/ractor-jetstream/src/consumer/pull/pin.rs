//! A pull child's place in its consumer's priority group (ADR-42).
//!
//! With a `pinned_client` group the server delivers to one pulling client
//! at a time. It says which by a `Nats-Pin-Id` header on the first message
//! to the newly pinned client; that client names the id on every later
//! pull. A pull naming an id the server no longer holds (the pin moved
//! after `priority_timeout` without pulls, or was released) is ended with
//! `423 Pin ID Mismatch`: the child forgets the id and pulls without one,
//! on standby, until the server picks it again. A graceful drain releases
//! the pin (`$JS.API.CONSUMER.UNPIN`), so that a standby takes over at once
//! instead of after the timeout.
//!
//! With an `overflow` group every pull names the group and the thresholds.
//!
//! async-nats' `BatchConfig` cannot carry the pin id, so a pull of a
//! consumer with a priority group is sent here, raw: the same JSON with
//! `group`, `id`, `min_pending` and `min_ack_pending` added.

use std::time::Duration;

use async_nats::Message;
use async_nats::jetstream::consumer::pull::BatchConfig;
use serde::Serialize;

use crate::connection::Connection;
use crate::spec::{PriorityPolicy, PrioritySpec};

/// The header by which the server names the pin.
const PIN_ID_HEADER: &str = "Nats-Pin-Id";

/// The child's standing in its priority group; see the module docs.
#[derive(Debug)]
pub(crate) struct Pin {
    spec: PrioritySpec,
    /// The pin the server gave this child, while it holds it.
    id: Option<String>,
}

/// One pull request's body.
#[derive(Serialize)]
struct PullBody<'a> {
    batch: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
    #[serde(skip_serializing_if = "is_zero")]
    idle_heartbeat: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    no_wait: bool,
    group: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_pending: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_ack_pending: Option<u64>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a message said about the pin.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PinChange {
    /// Nothing new.
    Same,
    /// The server pinned this child (a new id).
    Acquired,
}

impl Pin {
    pub(crate) fn new(spec: PrioritySpec) -> Self {
        Self { spec, id: None }
    }

    /// Whether the group pins one client.
    pub(crate) fn is_pinned_policy(&self) -> bool {
        self.spec.policy == PriorityPolicy::PinnedClient
    }

    /// The pin's timeout, for a pinned group that sets one.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.spec.timeout.filter(|_| self.is_pinned_policy())
    }

    /// Reads the pin id off a JetStream message. The server appends its
    /// header last, after any a publisher may have set.
    pub(crate) fn observe(&mut self, message: &Message) -> PinChange {
        if !self.is_pinned_policy() {
            return PinChange::Same;
        }
        let Some(id) = message
            .headers
            .as_ref()
            .and_then(|h| h.get_last(PIN_ID_HEADER))
        else {
            return PinChange::Same;
        };
        if self.id.as_deref() == Some(id.as_str()) {
            return PinChange::Same;
        }
        self.id = Some(id.as_str().to_owned());
        PinChange::Acquired
    }

    /// The server ended a pull with `423`: the pin moved on. Returns
    /// whether this child thought it held it.
    pub(crate) fn mismatch(&mut self) -> bool {
        self.id.take().is_some()
    }

    /// Sends one pull request, `request` with the group and the pin added,
    /// replies to `inbox`. It always waits on the server (`no_wait` is not
    /// sent): a standby's pull must stay until the pin comes to it.
    pub(crate) async fn request(
        &self,
        connection: &Connection,
        stream: &str,
        durable: &str,
        request: &BatchConfig,
        inbox: &str,
    ) -> Result<(), async_nats::PublishError> {
        let body = PullBody {
            batch: request.batch,
            expires: request.expires.map(nanos),
            idle_heartbeat: nanos(request.idle_heartbeat),
            no_wait: false,
            group: &self.spec.group,
            id: self.id.as_deref(),
            min_pending: self.spec.min_pending,
            min_ack_pending: self.spec.min_ack_pending,
        };
        // Serializing plain numbers and strings cannot fail.
        let payload = serde_json::to_vec(&body).unwrap_or_default();
        let subject = format!(
            "{}.CONSUMER.MSG.NEXT.{stream}.{durable}",
            connection.api_prefix()
        );
        connection
            .client()
            .publish_with_reply(subject, inbox.to_string(), payload.into())
            .await
    }

    /// Releases the pin, when this child holds it, so that a standby takes
    /// over at once. A failure is logged: the pin then moves after the
    /// timeout anyway.
    pub(crate) async fn release(&mut self, connection: &Connection, stream: &str, durable: &str) {
        if self.id.take().is_none() {
            return;
        }
        let group = &self.spec.group;
        let subject = format!("CONSUMER.UNPIN.{stream}.{durable}");
        let body = serde_json::json!({ "group": group });
        let result: Result<serde_json::Value, _> =
            crate::ensure::api_request(connection, "unpin", subject, &body).await;
        match result {
            Ok(_) => tracing::debug!(%durable, %group, "released the pin"),
            Err(err) => {
                tracing::warn!(%durable, %group, error = %err, "could not release the pin; it moves after the priority timeout")
            }
        }
    }
}
