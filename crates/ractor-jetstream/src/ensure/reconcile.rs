//! What an existing durable consumer must change to match its spec: the
//! server's configuration with the spec's settings applied, and the names
//! of the fields that changed. A field the server cannot change in place
//! (the ack policy, the deliver subject or group, `max_waiting`, the
//! priority group) is a
//! conflict instead, and the consumer is left as it is.

use std::time::Duration;

use async_nats::jetstream::consumer;

use crate::error::{Error, show_duration};
use crate::spec::ConsumerSpec;

/// The server's config with the spec's settings applied, and the names of
/// the fields that changed. Fields that can never change on a consumer are
/// a conflict.
pub(super) fn reconcile(
    spec: &ConsumerSpec,
    existing: &consumer::Config,
) -> Result<(consumer::Config, Vec<String>), Error> {
    let desired = spec.to_config(existing.deliver_subject.clone());
    let mut config = existing.clone();
    let mut changed = Vec::new();
    let conflict = |fields: Vec<String>, detail: String| Error::ConsumerConflict {
        stream: spec.stream.clone(),
        durable: spec.durable.clone(),
        fields,
        detail,
    };
    if existing.ack_policy != consumer::AckPolicy::Explicit {
        return Err(conflict(
            vec!["ack_policy".into()],
            format!(
                "the consumer acks with {:?}, but this library needs explicit acks; create another durable",
                existing.ack_policy
            ),
        ));
    }
    let push = spec.mode.as_push();
    if push.is_some_and(|p| p.deliver_subject.is_some())
        && desired.deliver_subject != existing.deliver_subject
    {
        return Err(conflict(
            vec!["deliver_subject".into()],
            format!(
                "the server has {:?}, the spec asks for {:?}",
                existing.deliver_subject, desired.deliver_subject
            ),
        ));
    }
    if desired.deliver_group != existing.deliver_group {
        return Err(conflict(
            vec!["deliver_group".into()],
            format!(
                "the server has {:?}, the spec asks for {:?}",
                existing.deliver_group, desired.deliver_group
            ),
        ));
    }
    let pull = spec.mode.as_pull();
    // The server refuses to change max_waiting on an existing consumer.
    if pull.is_some_and(|p| p.max_waiting.is_some()) && desired.max_waiting != existing.max_waiting
    {
        return Err(conflict(
            vec!["max_waiting".into()],
            format!(
                "the server has {}, the spec asks for {}; it cannot change on an existing consumer",
                existing.max_waiting, desired.max_waiting
            ),
        ));
    }
    // The server cannot add, remove or change a priority group, nor switch
    // policies; only the pin's timeout changes in place.
    if desired.priority_policy != existing.priority_policy
        || desired.priority_groups != existing.priority_groups
    {
        return Err(conflict(
            vec!["priority".into()],
            format!(
                "the server has policy {:?} with groups {:?}, the spec asks for {:?} with {:?}; it cannot change on an existing consumer",
                existing.priority_policy,
                existing.priority_groups,
                desired.priority_policy,
                desired.priority_groups
            ),
        ));
    }
    let mut set = |name: &str, differs: bool| {
        if differs {
            changed.push(name.to_string());
        }
        differs
    };
    let filters = |c: &consumer::Config| -> Vec<String> {
        let mut all = c.filter_subjects.clone();
        if !c.filter_subject.is_empty() {
            all.push(c.filter_subject.clone());
        }
        all.sort();
        all
    };
    if set("filter_subjects", filters(&desired) != filters(existing)) {
        config.filter_subject = desired.filter_subject.clone();
        config.filter_subjects = desired.filter_subjects.clone();
    }
    let server = &spec.server;
    if (server.ack_wait.is_some() || !server.backoff.is_empty())
        && set("ack_wait", desired.ack_wait != existing.ack_wait)
    {
        config.ack_wait = desired.ack_wait;
    }
    let max_deliver = |v: i64| if v <= 0 { -1 } else { v };
    if server.max_deliver.is_some()
        && set(
            "max_deliver",
            max_deliver(desired.max_deliver) != max_deliver(existing.max_deliver),
        )
    {
        config.max_deliver = desired.max_deliver;
    }
    if server.max_ack_pending.is_some()
        && set(
            "max_ack_pending",
            desired.max_ack_pending != existing.max_ack_pending,
        )
    {
        config.max_ack_pending = desired.max_ack_pending;
    }
    if !server.backoff.is_empty() && set("backoff", desired.backoff != existing.backoff) {
        config.backoff = desired.backoff.clone();
    }
    if pull.is_some_and(|p| p.max_batch.is_some())
        && set("max_batch", desired.max_batch != existing.max_batch)
    {
        config.max_batch = desired.max_batch;
    }
    if pull.is_some_and(|p| p.max_expires.is_some())
        && set("max_expires", desired.max_expires != existing.max_expires)
    {
        config.max_expires = desired.max_expires;
    }
    if pull
        .and_then(|p| p.priority.as_ref())
        .is_some_and(|p| p.timeout.is_some())
        && set(
            "priority_timeout",
            desired.priority_timeout != existing.priority_timeout,
        )
    {
        config.priority_timeout = desired.priority_timeout;
    }
    if server.description.is_some()
        && set("description", desired.description != existing.description)
    {
        config.description = desired.description.clone();
    }
    if let Some(push) = push {
        if existing.deliver_group.is_some() {
            // A queue group gets no status messages (see
            // `PushSpec::deliver_group`): they would reach one member only.
            if set("flow_control", existing.flow_control) {
                config.flow_control = false;
            }
            if set("idle_heartbeat", !existing.idle_heartbeat.is_zero()) {
                config.idle_heartbeat = Duration::ZERO;
            }
        } else {
            // The push child relies on flow control and heartbeats.
            if set("flow_control", !existing.flow_control) {
                config.flow_control = true;
            }
            let heartbeat_differs = if push.idle_heartbeat.is_some() {
                desired.idle_heartbeat != existing.idle_heartbeat
            } else {
                existing.idle_heartbeat.is_zero()
            };
            if set("idle_heartbeat", heartbeat_differs) {
                config.idle_heartbeat = desired.idle_heartbeat;
            }
        }
    }
    tracing::debug!(
        durable = %spec.durable,
        ack_wait = %show_duration(config.ack_wait),
        ?changed,
        "reconciled consumer config"
    );
    Ok((config, changed))
}
