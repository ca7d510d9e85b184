//! Continuous consume (`consume = "continuous"`): the pull child asks for
//! messages itself instead of waiting for fetches.
//!
//! It keeps at most `window` messages requested and unsettled. Whenever at
//! least a quarter of the window is free it sends the next pull request
//! for what is free, so the next messages are on their way before the
//! target runs out (as async-nats' `messages()` does with its threshold;
//! see [`REFILL_PARTS`] for why a quarter). Each request
//! lives `expires` (30 s, or half the pin's timeout for a pinned group, so
//! that the pin is renewed in time) with idle heartbeats when that is long
//! enough for them; the server ends it with a status, and the child asks
//! again. Statuses name their request by its reply subject, and messages
//! fill the oldest request first, as the server serves them.
//!
//! The guarantees are those of a fetch: every delivery is settled, kept
//! alive while its target decides, and nak'ed or kept when the target is
//! gone; no request is sent while the target is not running; a drain stops
//! asking, nak's what still comes and waits for the decisions; a reconnect
//! (which loses the requests on the server) is made up for by asking
//! again. A fetch sent to such a child is refused
//! ([`Error::ConsumesContinuously`]).
//!
//! In a pinned group, a child on standby keeps pulling without a pin id;
//! when the server pins it, the id comes on its first message. A `423`
//! (the pin moved on) makes it forget the id and stand by again. To stay
//! pinned while its window is full, it still renews a pull for one message
//! within every half timeout.
//!
//! **Takeover barrier.** The server does not wait for the previous
//! holder's deliveries before it pins this child: what that holder had
//! unacknowledged (nak'ed at its drain, or coming back after the ack wait
//! when it died) may arrive after newer messages. So when the child is
//! pinned it keeps everything that arrives (kept alive meanwhile) until
//! every message of its filter below the first new one is acknowledged or
//! in its hands: it walks the consumer's subject from the ack floor with
//! `next_by_subj` lookups, every 100 ms. Then it hands what it kept to the
//! target in stream order. A barrier that cannot close within twice the
//! ack wait plus a second (a message acknowledged out of order above the
//! floor, say) opens anyway, with a warning.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::{Message, StatusCode};
use tokio::time::Instant;

use super::barrier::Barrier;
use super::replies::Replies;
use super::{EXPIRY_GRACE, RECONNECT_CHECK, RETRY_FIRST, RETRY_MAX, Served, Worker};
use super::{next_reply, refused_for_good};
use crate::consumer::inflight::{ForwardError, MAX_BATCH, is_running};
use crate::consumer::{DrainReport, WorkerCtl, WorkerInbox, drain_in_flight};
use crate::error::{Error, ServerErrorKind};

/// How many ready messages a continuous child forwards to a per-delivery
/// target before it yields (a fetch-driven child yields after
/// `FORWARD_BURST`, 16). Measured with the throughput bench (`--cases
/// continuous --rounds 5`), the library's client CPU per message as a
/// multiple of the raw `messages()` loop's:
/// - one binary taking the burst from the environment, four runs of
///   each, interleaved: 1.41 to 1.60 at 16, 1.15 to 1.27 at 64, 1.22 to
///   1.28 at 128; the rate against raw, median 0.93 at 16 and 1.02 at 64;
/// - this constant against 16, six runs of each, interleaved, on a
///   busier machine: median 1.54 at 16 and 1.35 at 64 (1.24 to 1.47);
///   the rate against raw, median 0.89 at both;
/// - builds differing only here, eight runs of each, interleaved: median
///   1.55 at 16, 1.45 at 32 (four runs), 1.32 at 64; the paired rate
///   against raw, median 0.88, 0.93 and 0.94.
///
/// The cost is latency: a target starts on a burst once it is forwarded.
/// In those runs the time from a message's arrival at the child to the
/// target was, p50 and p99, 6 and 114 µs at 16, 13 and 191 µs at 32, 33
/// and 528 µs at 64.
const CONTINUOUS_BURST: usize = 64;

/// The child asks again once `window / REFILL_PARTS` of its window is
/// free. async-nats' `messages()` asks for a whole batch when half of one
/// is left, so it keeps between a half and one and a half batches
/// requested; this window bounds what is requested and unsettled
/// together, so asking at half free kept only a half to a whole window
/// on its way, and the server waited for the next request more often.
/// Asking at a quarter free keeps three quarters to a whole window on its
/// way, for twice as many (smaller) requests. Measured with the
/// throughput bench's continuous case (window 256, 200,000 messages, two
/// runs each way, interleaved): paired ratio 0.91 and 0.89 against
/// async-nats at a quarter, 0.84 and 0.87 at a half (five rounds a run);
/// at an eighth it fell back to 0.86 and 0.87 (three rounds a run). The
/// README's benchmarks have the A/B of the change itself.
const REFILL_PARTS: usize = 4;

/// How long one request of an unpinned continuous child lives.
const REQUEST_EXPIRES: Duration = Duration::from_secs(30);

/// Requests shorter than this carry no idle heartbeat: their own expiry
/// says often enough that the server is there.
const MIN_EXPIRES_FOR_HEARTBEAT: Duration = Duration::from_secs(3);

/// How long a drain reads what the server still sends for the child's
/// open requests, to nak it. The requests of an unpinned child live on
/// until they expire; what comes after this is taken back by the server
/// after the ack wait.
const DRAIN_REPLIES: Duration = Duration::from_millis(250);

/// One pull request the server may still be filling.
struct Open {
    subject: String,
    remaining: usize,
    give_up: Instant,
}

/// The continuous loop's own state.
struct Stream {
    window: usize,
    threshold: usize,
    expires: Duration,
    heartbeat: Duration,
    open: VecDeque<Open>,
    last_sent: Option<Instant>,
    /// After a refusal: no request before this.
    pause_until: Option<Instant>,
    pause: Duration,
    next_check: Instant,
    connects: u64,
    barrier: Option<Barrier>,
}

impl Stream {
    fn outstanding(&self) -> usize {
        self.open.iter().map(|o| o.remaining).sum()
    }

    fn end(&mut self, subject: &str) {
        self.open.retain(|o| o.subject != subject);
    }

    /// A message came: it fills the oldest request.
    fn filled_one(&mut self) {
        if let Some(first) = self.open.front_mut() {
            first.remaining = first.remaining.saturating_sub(1);
            if first.remaining == 0 {
                self.open.pop_front();
            }
        }
    }
}

impl Worker {
    /// Consumes until drained, stopped or failed.
    pub(super) async fn consume(&mut self, inbox: &mut WorkerInbox) -> Served {
        let ctx = Arc::clone(&self.ctx);
        let window = ctx.spec.mode.as_pull().map_or(1, |p| {
            p.effective_window(ctx.spec.effective_max_ack_pending())
        });
        let window = usize::try_from(window).unwrap_or(usize::MAX).max(1);
        let expires = self
            .pin
            .as_ref()
            .and_then(|p| p.timeout())
            .map_or(REQUEST_EXPIRES, |t| t / 2);
        let heartbeat = if expires >= MIN_EXPIRES_FOR_HEARTBEAT {
            expires / 3
        } else {
            Duration::ZERO
        };
        let mut stream = Stream {
            window,
            threshold: (window / REFILL_PARTS).max(1),
            expires,
            heartbeat,
            open: VecDeque::new(),
            last_sent: None,
            pause_until: None,
            pause: RETRY_FIRST,
            next_check: Instant::now() + RECONNECT_CHECK,
            connects: self.client.statistics().connects.load(Ordering::Relaxed),
            barrier: None,
        };
        loop {
            while let Some(settlement) = self.in_flight.try_verdict() {
                self.in_flight.apply(settlement).await;
            }
            // A batch target gets what is ready in one message, up to a
            // whole batch: in the throughput bench that took the library's
            // client CPU per message from 1.36 times a raw `messages()`
            // loop's to 1.02 and 1.13 (two runs of each, `--cases
            // continuous --target batches`, bursts of 16 against 256).
            let burst = if self.in_flight.hands_over_batches() {
                MAX_BATCH
            } else {
                CONTINUOUS_BURST
            };
            let mut forwarded = 0;
            while forwarded < burst {
                let Some(replies) = self.replies.as_mut() else {
                    break;
                };
                match replies.try_next() {
                    Some(Some(message)) => {
                        if let Err(err) = self.on_stream_message(message, &mut stream, inbox).await
                        {
                            return Served::Failed(err);
                        }
                        forwarded += 1;
                    }
                    Some(None) => {
                        self.replies = None;
                        stream.open.clear();
                    }
                    None => break,
                }
            }
            if forwarded == burst {
                self.in_flight.hand_over();
                tokio::task::yield_now().await;
            }
            if let Err(err) = self.top_up(&mut stream, inbox).await {
                return Served::Failed(err);
            }
            let mut wake = self.in_flight.next_deadline();
            let mut earliest = |at: Instant| wake = Some(wake.map_or(at, |w| w.min(at)));
            earliest(stream.next_check);
            if let Some(first) = stream.open.iter().map(|o| o.give_up).min() {
                earliest(first);
            }
            if let Some(at) = stream.pause_until {
                earliest(at);
            }
            if let Some(at) = stream.last_sent {
                earliest(at + stream.expires);
            }
            if let Some(barrier) = &stream.barrier {
                earliest(barrier.next_check);
            }
            if let Some(at) = wake {
                self.alarm.arm_if_earlier(at);
            }
            tokio::select! {
                biased;
                control = inbox.control.recv() => match control {
                    Some(WorkerCtl::SetTarget(target)) => inbox.target.set(target),
                    Some(WorkerCtl::Drain { timeout, reply }) => {
                        // Boxed: rare and large (see "Small futures" in
                        // `consumer.rs`).
                        let report = Box::pin(self.drain_stream(timeout)).await;
                        let _ = reply.send(report);
                        return Served::Drained;
                    }
                    None => return Served::Drained,
                },
                request = inbox.fetches.recv() => {
                    if let Some(request) = request {
                        request.answer(Err(Error::ConsumesContinuously { durable: ctx.durable.to_string() }));
                    }
                }
                settlement = self.in_flight.next_verdict() => {
                    self.in_flight.apply(settlement).await;
                }
                message = next_reply(&mut self.replies) => match message {
                    Some(message) => {
                        if let Err(err) = self.on_stream_message(message, &mut stream, inbox).await {
                            return Served::Failed(err);
                        }
                    }
                    None => {
                        self.replies = None;
                        stream.open.clear();
                    }
                },
                () = self.alarm.fired(), if self.alarm.is_armed() => {
                    // Boxed, like the drain above: not once per message.
                    let now = Instant::now();
                    Box::pin(self.in_flight.expire_due(now, |_| {})).await;
                    self.on_stream_alarm(&mut stream, now);
                    Box::pin(self.check_barrier(&mut stream.barrier, inbox, now)).await;
                }
            }
        }
    }

    /// Ends the stream for a drain: settles what the target has, releases
    /// the pin, then nak's what arrived meanwhile (it waited in the
    /// subscription), for at most [`DRAIN_REPLIES`].
    async fn drain_stream(&mut self, timeout: Duration) -> DrainReport {
        let started = Instant::now();
        let mut report =
            drain_in_flight(&mut self.in_flight, timeout, DrainReport::default()).await;
        // Settled first, then released: the next pinned client starts
        // after the last of this one's (and the server ends this one's
        // requests).
        self.release_pin().await;
        if let Some(mut replies) = self.replies.take() {
            let left = timeout.saturating_sub(started.elapsed()).min(DRAIN_REPLIES);
            if let Ok(naked) = tokio::time::timeout(left, replies.drain_and_nak()).await {
                report.naked += naked as u64;
            }
        }
        report
    }

    /// Sends the next request when a quarter of the window is free (or,
    /// pinned, when the pin needs renewing).
    async fn top_up(&mut self, stream: &mut Stream, inbox: &mut WorkerInbox) -> Result<(), Error> {
        let now = Instant::now();
        if stream.pause_until.is_some_and(|at| now < at) {
            return Ok(());
        }
        stream.pause_until = None;
        if !inbox.target.get().is_some_and(is_running) {
            return Ok(());
        }
        // Deliveries kept behind a takeover barrier do not count: the
        // previous holder's come back only against further requests. The
        // consumer's `max_ack_pending` bounds them.
        let busy = stream.outstanding() + self.in_flight.undecided();
        let room = stream.window.saturating_sub(busy);
        let batch = if room >= stream.threshold {
            room
        } else if self.pin.as_ref().is_some_and(|p| p.is_pinned_policy())
            && stream.open.is_empty()
            && stream.last_sent.is_none_or(|at| now >= at + stream.expires)
        {
            // Renew the pin although the window is full: a pinned client
            // that stops pulling loses its pin after the timeout.
            room.max(1)
        } else {
            return Ok(());
        };
        if self.replies.is_none() {
            let replies = Replies::open(&self.client, &self.in_flight)
                .await
                .map_err(|err| Error::server_caused(self.op(), ServerErrorKind::Connection, err))?;
            self.replies = Some(replies);
        }
        let Some(replies) = self.replies.as_mut() else {
            return Ok(());
        };
        let subject = replies.next_subject();
        match self
            .send_pull(
                BatchConfig {
                    batch,
                    expires: Some(stream.expires),
                    idle_heartbeat: stream.heartbeat,
                    ..Default::default()
                },
                &subject,
            )
            .await
        {
            Ok(()) => {
                stream.open.push_back(Open {
                    subject,
                    remaining: batch,
                    give_up: now + stream.expires + EXPIRY_GRACE,
                });
                stream.last_sent = Some(now);
            }
            Err(err) => {
                tracing::debug!(durable = %self.ctx.durable, error = %err, "could not send a pull request; trying again");
                self.pause(stream);
            }
        }
        Ok(())
    }

    fn pause(&self, stream: &mut Stream) {
        stream.pause_until = Some(Instant::now() + stream.pause);
        stream.pause = (stream.pause * 2).min(RETRY_MAX);
    }

    /// One message of the reply subscription: a delivery, or a status
    /// about one of the requests.
    async fn on_stream_message(
        &mut self,
        message: Message,
        stream: &mut Stream,
        inbox: &mut WorkerInbox,
    ) -> Result<(), Error> {
        match message.status {
            None | Some(StatusCode::OK) => {
                stream.filled_one();
                stream.pause = RETRY_FIRST;
                if self.observe_pin(&message) {
                    let now = Instant::now();
                    stream.barrier = Some(Barrier {
                        first_new: None,
                        next_check: now,
                        give_up: now + self.ctx.effective.ack_wait * 2 + Duration::from_secs(1),
                    });
                }
                if let Some(barrier) = stream.barrier.as_mut() {
                    let meta = message
                        .reply
                        .as_ref()
                        .and_then(|r| crate::delivery::AckMeta::parse(r.as_str()))
                        .map(|meta| (meta.delivered, meta.stream_sequence));
                    if let Some((1, sequence)) = meta {
                        barrier.first_new.get_or_insert(sequence);
                    }
                    // Behind the barrier: kept (and kept alive) until
                    // everything before the first new message is in hand.
                    if self.in_flight.hold_back(message).is_err() {
                        tracing::warn!(durable = %self.ctx.durable, "ignored a message without JetStream metadata");
                    }
                    return Ok(());
                }
                let Some(target) = inbox.target.get().cloned() else {
                    // No target registered: kept or nak'ed, never lost.
                    self.replies_stray(&message);
                    return Ok(());
                };
                match self.in_flight.forward(message, &target) {
                    Ok(_) | Err(ForwardError::TargetGone) => {}
                    Err(ForwardError::NotJetStream) => {
                        tracing::warn!(durable = %self.ctx.durable, "ignored a message without JetStream metadata");
                    }
                }
            }
            Some(StatusCode::IDLE_HEARTBEAT) => {}
            Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => stream.end(&message.subject),
            Some(status) if status.as_u16() == 423 => {
                stream.end(&message.subject);
                self.pin_moved();
            }
            Some(status) => {
                stream.end(&message.subject);
                let code = status.as_u16();
                let description = message.description.unwrap_or_default();
                let lower = description.to_ascii_lowercase();
                if let Some(gone) = self.deleted_consumer(status, &lower).await {
                    return Err(gone);
                }
                if refused_for_good(code, &lower) {
                    return Err(Error::FetchRefused {
                        durable: self.ctx.durable.to_string(),
                        code,
                        description,
                    });
                }
                tracing::debug!(durable = %self.ctx.durable, code, %description, "pull request ended by the server; asking again after a pause");
                self.pause(stream);
            }
        }
        Ok(())
    }

    /// A message that no target can take: nak'ed at once.
    fn replies_stray(&self, message: &Message) {
        if let Some(replies) = &self.replies {
            replies.stray(message);
        }
    }

    /// The stream's own deadlines: requests the server never ended, and a
    /// reconnect (which loses the requests on the server).
    fn on_stream_alarm(&mut self, stream: &mut Stream, now: Instant) {
        stream.open.retain(|o| o.give_up > now);
        if now >= stream.next_check {
            stream.next_check = now + RECONNECT_CHECK;
            let connects = self.client.statistics().connects.load(Ordering::Relaxed);
            if connects != stream.connects {
                stream.connects = connects;
                tracing::debug!(durable = %self.ctx.durable, "reconnected; asking again");
                stream.open.clear();
            }
        }
    }
}
