//! Serving one fetch: take the request, open its pull request, forward
//! what comes and apply the target's decisions until the request is closed
//! and every delivery is settled, then answer the caller.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::replies::Replies;
use super::request::{Fetch, Request};
use super::{EXPIRY_GRACE, FORWARD_BURST, RECONNECT_CHECK, Served, Worker, next_reply};
use crate::consumer::fetch::validate_fetch;
use crate::consumer::inflight::is_running;
use crate::consumer::{
    DrainReport, FetchEnd, FetchOutcome, FetchRequest, WorkerCtl, WorkerInbox, drain_recording,
};
use crate::error::{Error, ServerErrorKind};

impl Worker {
    pub(super) async fn serve(&mut self, request: FetchRequest, inbox: &mut WorkerInbox) -> Served {
        if request.abandoned() {
            tracing::debug!(durable = %self.ctx.durable, "skipped a fetch whose caller gave up");
            return Served::Done;
        }
        // The consumer's limits may have changed since the child took it.
        if let Err(err) = validate_fetch(
            request.batch as u64,
            Some(request.expires),
            &self.ctx.limits.get(),
        ) {
            request.answer(Err(err));
            return Served::Done;
        }
        let Some(expires) = request.expires_now() else {
            tracing::debug!(durable = %self.ctx.durable, "skipped a fetch whose caller's timeout has passed");
            return Served::Done;
        };
        let Some(target) = inbox.target.get().filter(|t| is_running(t)).cloned() else {
            request.answer(Err(self.unavailable()));
            return Served::Done;
        };
        let ctx = Arc::clone(&self.ctx);
        ctx.counters.fetches.fetch_add(1, Ordering::Relaxed);
        let mut fetch = Fetch {
            batch: request.batch,
            reply_to: String::new(),
            expires_at: Instant::now() + expires,
            started: Instant::now(),
            outcome: FetchOutcome::default(),
            request: Request::Closed,
            end: FetchEnd::Filled,
            target,
            target_gone: false,
            failure: None,
            refused: None,
        };
        // Deliveries kept while the target was gone go first.
        fetch.outcome.delivered += self.in_flight.forward_kept(fetch.batch, &fetch.target) as u64;
        let denials_since = self.denials.as_ref().map_or(0, |d| d.mark());
        if fetch.missing() > 0
            && let Err(err) = self.open(&mut fetch, expires).await
        {
            request.answer(Err(err));
            return Served::Done;
        }
        let served = self.run_fetch(&mut fetch, inbox).await;
        // Every decision is on its way before the caller hears of it, so
        // that what the caller asks next on the connection comes after.
        self.in_flight.send_outbox().await;
        if let Some(report) = served {
            if matches!(report, Served::Stopped) {
                // Dropped unanswered, the request tells its caller
                // `FetchInterrupted`, as it would had the worker's task
                // been aborted with the child.
                drop(request);
                return report;
            }
            // A drain: what was delivered was settled or nak'ed, and the
            // caller learns how.
            fetch.outcome.end = FetchEnd::Drained;
            request.answer(Ok(fetch.outcome));
            return report;
        }
        self.finish(fetch, request, denials_since)
    }

    /// Sends the fetch's first pull request, on a reply subject of its own
    /// under the shared reply subscription (opened on first use).
    async fn open(&mut self, fetch: &mut Fetch, expires: Duration) -> Result<(), Error> {
        let replies =
            match &mut self.replies {
                Some(replies) => replies,
                None => self.replies.insert(
                    Replies::open(&self.client, &self.in_flight)
                        .await
                        .map_err(|err| {
                            Error::server_caused(self.op(), ServerErrorKind::Connection, err)
                        })?,
                ),
            };
        fetch.reply_to = replies.next_subject();
        self.send_request(fetch.missing(), expires, &fetch.reply_to)
            .await?;
        crate::fault_point!("rj-pull-after-request");
        fetch.request = Request::Open {
            give_up: fetch.expires_at + EXPIRY_GRACE,
        };
        Ok(())
    }

    /// Runs a fetch until its request is closed and every delivery is
    /// settled. Returns `Some` when a drain ended it.
    async fn run_fetch(&mut self, fetch: &mut Fetch, inbox: &mut WorkerInbox) -> Option<Served> {
        let statistics = self.client.statistics();
        let mut connected = statistics.connects.load(Ordering::Relaxed);
        let mut next_check = Instant::now() + RECONNECT_CHECK;
        self.alarm.disarm();
        loop {
            // Do all the work that is ready before waiting: apply the
            // decisions that came in, then forward what arrived.
            while let Some(settlement) = self.in_flight.try_verdict() {
                if let Some(settled) = self.in_flight.apply(settlement).await {
                    fetch.outcome.record(settled);
                }
            }
            let mut forwarded = 0;
            while matches!(fetch.request, Request::Open { .. }) && forwarded < FORWARD_BURST {
                let Some(replies) = self.replies.as_mut() else {
                    break;
                };
                match replies.try_next() {
                    Some(Some(message)) => {
                        self.on_message(message, fetch, inbox).await;
                        forwarded += 1;
                    }
                    Some(None) => {
                        self.replies = None;
                        fetch.close(FetchEnd::Expired);
                    }
                    None => break,
                }
            }
            if forwarded == FORWARD_BURST {
                // Let the target (often scheduled on this same thread) start
                // on what it got, so that deciding overlaps forwarding.
                self.in_flight.hand_over();
                tokio::task::yield_now().await;
            }
            if matches!(fetch.request, Request::Closed) && self.in_flight.undecided() == 0 {
                return None;
            }
            // The alarm is set for the earliest thing to check. It may go off
            // early (a decision came in meanwhile); each check below looks
            // at the clock.
            let mut wake = self.in_flight.next_deadline();
            let request_wake = match &fetch.request {
                Request::Open { give_up } => Some(next_check.min(*give_up)),
                Request::Waiting { retry_at, .. } => Some((*retry_at).min(fetch.expires_at)),
                Request::Closed => None,
            };
            if let Some(at) = request_wake {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            if let Some(wake) = wake {
                self.alarm.arm_if_earlier(wake);
            }
            let open = matches!(fetch.request, Request::Open { .. });
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target.set(target),
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        // Boxed: rare and large (see "Small futures" in
                        // `consumer.rs`).
                        let report = Box::pin(self.drain_fetch(fetch, timeout)).await;
                        let _ = reply.send(report);
                        return Some(Served::Drained);
                    }
                    None => return Some(Served::Stopped),
                },
                settlement = self.in_flight.next_verdict() => {
                    if let Some(settled) = self.in_flight.apply(settlement).await {
                        fetch.outcome.record(settled);
                    }
                }
                message = next_reply(&mut self.replies), if open => match message {
                    Some(message) => self.on_message(message, fetch, inbox).await,
                    None => {
                        self.replies = None;
                        fetch.close(FetchEnd::Expired);
                    }
                },
                () = self.alarm.fired(), if self.alarm.is_armed() => {
                    // Boxed, like the drain above: not once per message.
                    let now = Instant::now();
                    let outcome = &mut fetch.outcome;
                    Box::pin(self.in_flight.expire_due(now, |settled| outcome.record(settled))).await;
                    Box::pin(self.on_alarm(fetch, now, &mut next_check, &mut connected)).await;
                }
            }
        }
    }

    /// Ends a fetch for a drain: stops taking messages (whatever the
    /// server still sends for this request is nak'ed, not forwarded),
    /// settles what is out, and releases the pin.
    async fn drain_fetch(
        &mut self,
        fetch: &mut Fetch,
        timeout: std::time::Duration,
    ) -> DrainReport {
        let mut report = DrainReport::default();
        // Decided before the drain: sent before its naks.
        self.in_flight.stop_lingering().await;
        if let Some(mut replies) = self.replies.take() {
            report.naked += replies.drain_and_nak().await as u64;
        }
        let outcome = &mut fetch.outcome;
        let report =
            drain_recording(&mut self.in_flight, timeout, report, |s| outcome.record(s)).await;
        self.release_pin().await;
        report
    }

    /// Answers the fetch.
    fn finish(&mut self, fetch: Fetch, request: FetchRequest, denials_since: u64) -> Served {
        let ctx = Arc::clone(&self.ctx);
        let Fetch {
            mut outcome,
            end,
            target_gone,
            failure,
            mut refused,
            started,
            ..
        } = fetch;
        ctx.counters
            .metrics
            .fetch_seconds
            .record(started.elapsed().as_secs_f64());
        if target_gone {
            refused.get_or_insert(self.unavailable());
        }
        if outcome.delivered == 0 && refused.is_none() {
            // Nothing came: was the request, or its reply subject, denied
            // since this fetch began?
            let subject = format!("CONSUMER.MSG.NEXT.{}.{}", ctx.stream, ctx.durable);
            if let Some(denial) = self
                .denials
                .as_ref()
                .and_then(|d| d.find(denials_since, &subject, false))
            {
                refused = Some(denial.to_error(&self.op()));
            }
        }
        outcome.expired = end == FetchEnd::Expired;
        outcome.end = end;
        if outcome.delivered == 0 && outcome.expired {
            ctx.counters.empty_fetches.fetch_add(1, Ordering::Relaxed);
        }
        match (failure, refused) {
            (Some(err), _) => {
                request.answer(Err(err.clone()));
                Served::Failed(err)
            }
            (None, Some(err)) if outcome.delivered == 0 || target_gone => {
                request.answer(Err(err));
                Served::Done
            }
            _ => {
                request.answer(Ok(outcome));
                Served::Done
            }
        }
    }
}
