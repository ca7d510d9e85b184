//! The one settle policy: what goes to the server for a delivery, whatever
//! path settles it (a decision from the target, a decision timeout, a
//! drain, a dropped registry).
//!
//! - An ack, a nak and an in-progress go out as they are.
//! - A term goes to the dead-letter subject first, when one is configured.
//! - A delivery that fails on its last allowed delivery (`max_deliver`) is
//!   not nak'ed, which would make the server drop it silently: it is
//!   dead-lettered and terminated, or terminated with the reason when no
//!   dead-letter subject is set.
//! - A delivery that no target ever saw (the target was not running) is
//!   never turned into a term: it is nak'ed, or, on its last allowed
//!   delivery, kept by the registry until a target can take it. Only when
//!   the child stops with it still kept does it go to the dead-letter
//!   subject (or, without one, it is nak'ed and logged as an error: the
//!   server will not deliver it again).
//!
//! [`plan`] makes that decision; the registry carries it out, with the
//! dead-letter publish in a task of its own so that a slow dead-letter
//! stream never stalls other deliveries.

use std::time::Duration;

use async_nats::Subject;
use async_nats::jetstream::AckKind;
use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::oneshot;

use super::dead_letter::DeadLetters;
use super::inflight::Settled;
use crate::delivery::{AckMeta, Decision};

// The payloads are async-nats' own (`AckKind`), and an ack's is empty as
// async-nats' `ack()` sends it; only `+TERM <reason>`, which
// `AckKind::Term` cannot carry, is written here.
/// The payload that applies a decision on the server. An ack's is empty:
/// the server takes that for an ack, and it is five bytes less for it to
/// read on the most common publish there is (an ack the server confirms
/// sends `+ACK`; see `InFlight::send_decision`).
pub(crate) fn decision_payload(decision: &Decision) -> Bytes {
    match decision {
        Decision::Ack => Bytes::new(),
        Decision::Nak(delay) => AckKind::Nak(*delay).into(),
        Decision::Term(Some(reason)) if !reason.is_empty() => {
            format!("+TERM {}", reason.replace(['\r', '\n'], " ")).into()
        }
        Decision::Term(_) => AckKind::Term.into(),
    }
}

/// What to do with one delivery.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Publish this payload to its reply subject; it ends as `Settled`.
    Publish(Bytes, Settled),
    /// Publish it to the dead-letter subject first (with `why`), then
    /// settle it with `then` (a term) once that is confirmed.
    DeadLetter {
        why: String,
        then: Decision,
        settled: Settled,
    },
    /// Keep it: it never reached a target and this was its last allowed
    /// delivery, so a nak would lose it.
    Keep,
}

/// Whether the target saw the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// The target had it.
    Yes,
    /// No target took it; the child may still keep it for the next one.
    No,
    /// No target took it, and the child is stopping: nobody will.
    NoAndStopping,
}

/// The settle policy; see the module docs.
pub(crate) fn plan(
    dead_letters: &DeadLetters,
    delivered: u64,
    decision: Decision,
    settled: Settled,
    seen: Seen,
) -> Plan {
    let last = dead_letters.last_delivery(delivered);
    match (decision, seen) {
        (Decision::Term(reason), Seen::Yes) if dead_letters.enabled() => Plan::DeadLetter {
            why: reason
                .clone()
                .unwrap_or_else(|| "terminated by the target".into()),
            then: Decision::Term(reason),
            settled,
        },
        (Decision::Nak(_), Seen::Yes) if last.is_some() => {
            let max = last.unwrap_or_default();
            let how = match settled {
                Settled::Abandoned => "dropped without a decision",
                Settled::TimedOut => "not decided within the decision timeout",
                _ => "nak'ed",
            };
            let why = format!("max_deliver ({max}) reached and the last delivery was {how}");
            if dead_letters.enabled() {
                Plan::DeadLetter {
                    then: Decision::Term(Some(why.clone())),
                    why,
                    settled,
                }
            } else {
                tracing::warn!(reason = %why, "terminated (no dead-letter subject is configured)");
                Plan::Publish(
                    decision_payload(&Decision::Term(Some(why))),
                    Settled::Termed,
                )
            }
        }
        (_, Seen::No) if last.is_some() => Plan::Keep,
        (_, Seen::NoAndStopping) if last.is_some() => {
            let max = last.unwrap_or_default();
            let why = format!(
                "max_deliver ({max}) reached and no target was running to take the last delivery"
            );
            if dead_letters.enabled() {
                Plan::DeadLetter {
                    then: Decision::Term(Some(why.clone())),
                    why,
                    settled: Settled::Abandoned,
                }
            } else {
                tracing::error!(
                    reason = %why,
                    "nak'ed; the server will not deliver it again (set a dead_letter_subject to keep such messages)"
                );
                Plan::Publish(Bytes::from(AckKind::Nak(None)), Settled::Abandoned)
            }
        }
        (_, Seen::No | Seen::NoAndStopping) => {
            Plan::Publish(Bytes::from(AckKind::Nak(None)), Settled::Abandoned)
        }
        (decision, Seen::Yes) => Plan::Publish(decision_payload(&decision), settled),
    }
}

/// What became of a delivery whose dead letter was or was not confirmed,
/// and what to publish for it.
pub(crate) fn after_dead_letter(
    confirmed: bool,
    then: &Decision,
    settled: Settled,
) -> (Bytes, Settled) {
    if confirmed {
        (decision_payload(then), Settled::Termed)
    } else {
        // Not stored anywhere: it must come back rather than vanish.
        let settled = if settled == Settled::Termed {
            Settled::Naked
        } else {
            settled
        };
        (Bytes::from(AckKind::Nak(None)), settled)
    }
}

/// Queues a publish without waiting: succeeds when the client's outbound
/// queue has room, which is the case unless the connection is saturated.
fn publish_now(client: &async_nats::Client, subject: Subject, payload: Bytes) -> bool {
    tokio::task::unconstrained(client.publish(subject, payload))
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// One dead letter still to be sent by a stopped child.
pub(crate) struct PendingDeadLetter {
    pub reply: Subject,
    pub stream_sequence: u64,
    pub delivered: u64,
    pub why: String,
    pub then: Decision,
}

/// A dropped subscription's tail to wait for before nak'ing (see
/// `consumer/guard.rs`): it sends what it held once it has unsubscribed.
pub(crate) struct AfterTail {
    pub held: oneshot::Receiver<Vec<Subject>>,
    /// The longest to wait for it.
    pub wait: Duration,
}

/// Settles what a stopped child still held, from a context that cannot
/// wait (a drop guard). Publishes are queued at once; what cannot be
/// queued, and the dead letters, go to one short task that exists only to
/// finish them and ends when they are done (bounded by the dead-letter
/// timeout). async-nats' own `Subscriber` drop spawns such a task too.
///
/// With a tail to wait for, everything goes to that task, which first
/// waits for the tail's unsubscribe, then nak's what the tail held with
/// the rest, in stream order.
pub(crate) fn settle_stopped(
    client: &async_nats::Client,
    dead_letters: &DeadLetters,
    publishes: Vec<(Subject, Bytes)>,
    letters: Vec<PendingDeadLetter>,
    after: Option<AfterTail>,
) {
    let runtime = tokio::runtime::Handle::try_current().ok();
    // Waiting for a tail takes a task; without a runtime, publish at once.
    let after = after.filter(|_| runtime.is_some());
    let mut rest = Vec::new();
    if after.is_some() {
        rest = publishes;
    } else {
        for (subject, payload) in publishes {
            if !publish_now(client, subject.clone(), payload.clone()) {
                rest.push((subject, payload));
            }
        }
    }
    if rest.is_empty() && letters.is_empty() && after.is_none() {
        return;
    }
    let Some(handle) = runtime else {
        tracing::warn!(
            count = rest.len() + letters.len(),
            "no runtime to settle in-flight deliveries; they return after ack_wait"
        );
        return;
    };
    let client = client.clone();
    let dead_letters = dead_letters.clone();
    handle.spawn(async move {
        if let Some(AfterTail { held, wait }) = after {
            // A tail that is gone (its task aborted) sends nothing: go on.
            let held = tokio::time::timeout(wait, held)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            rest.extend(
                held.into_iter()
                    .map(|reply| (reply, Bytes::from(AckKind::Nak(None)))),
            );
            rest.sort_by_key(|(reply, _)| {
                AckMeta::parse(reply.as_str()).map_or(0, |m| m.stream_sequence)
            });
        }
        for (subject, payload) in rest {
            let _ = client.publish(subject, payload).await;
        }
        for letter in letters {
            let confirmed = dead_letters
                .send_once(letter.stream_sequence, letter.delivered, &letter.why)
                .await;
            let (payload, _) = after_dead_letter(confirmed, &letter.then, Settled::Termed);
            let _ = client.publish(letter.reply, payload).await;
        }
        let _ = client.flush().await;
    });
}
