//! The pull worker's desk: the worker's state, where fetches are served,
//! by the worker's own task or, when the worker is idle, by the caller's.
//!
//! A fetch queued for the worker's task costs two hand-offs between tasks
//! (the caller's to the worker's, and back with the answer), and one write
//! more on the socket: the connection task, woken by the fetch's last
//! decisions, often runs on the other core and writes them alone before
//! the next fetch's pull request is sent, which a plain async-nats loop
//! sends from the same task, in the same write. So a
//! [`PullHandle`](crate::PullHandle) whose child is idle (nothing queued,
//! nobody at the desk) serves its fetch at the desk in its own task, with
//! the same code the worker's task runs (`serve.rs`). The worker's task
//! looks after what comes between fetches: controls, fetches queued
//! through the child's mailbox, late decisions, keep-alives and stray
//! replies. Only a fetch made in a task is served here (see
//! `FetchPort::submit_or_serve`): from `block_on`, outside any task, every
//! hand-off the fetch makes (to the target, to the connection) would cross
//! threads, and it measured slower than queueing. Measured from a task
//! (the README's benchmarks): at batch 1, about a tenth less client CPU
//! per message, and 1.8 writes per fetch against 2.6.
//!
//! Whoever sits at the desk holds its lock. The worker's task does not hold
//! it while it waits: it takes it to look at the worker's channels, which
//! then wake it when something comes, and lets go. A caller that served a
//! fetch there looks at the channels again for the worker's task before it
//! leaves (while it served, its own task was the one they would wake), and
//! wakes the worker's task when something came meanwhile, when the fetch
//! ended the worker, or when the worker's task found the desk taken.
//!
//! A caller that gives up halfway (its future dropped) does not cut the
//! fetch short: the rest of it goes on in a task of its own. A child that
//! stops does: the worker's task ends, and a fetch at the desk stops where
//! it is, as it would in the worker's task (its caller gets
//! [`Error::FetchInterrupted`](crate::Error::FetchInterrupted)).

use std::any::Any;
use std::fmt;
use std::future::{Future, poll_fn};
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use futures::FutureExt;
use tokio::sync::{Notify, OwnedMutexGuard};
use tokio::time::Instant;

use super::{Worker, next_reply};
use crate::consumer::{DrainReport, FetchRequest, WorkerCtl, WorkerInbox, drain_in_flight};
use crate::delivery::Settlement;
use crate::error::Error;

/// The worker's state and who may use it; see the module docs.
#[derive(Default)]
pub(crate) struct Desk {
    /// `None` before the child has set its worker up, and once the
    /// worker's task has ended.
    station: Arc<tokio::sync::Mutex<Option<Station>>>,
    /// The worker's task, to wake.
    worker: Mutex<Option<Waker>>,
    /// The worker's task found the desk taken: whoever leaves wakes it.
    waiting: AtomicBool,
    /// The worker's task has ended: whoever leaves the desk last clears it.
    closed: AtomicBool,
    /// Stops a fetch at the desk when the worker's task ends.
    closing: Notify,
}

impl fmt::Debug for Desk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Desk")
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What sits at the desk.
struct Station {
    worker: Worker,
    inbox: WorkerInbox,
    /// Taken off the worker's channels by a caller on its way out, for the
    /// worker's task.
    stashed: Option<Event>,
    /// How a fetch served by a caller ended the worker.
    ended: Option<Ended>,
}

/// How a fetch served by a caller ended the worker.
enum Ended {
    /// A drain, or a failure.
    Returned(Result<(), Error>),
    /// A panic, raised again in the worker's task (so the child fails as
    /// it would, had its task served the fetch).
    Panicked(Box<dyn Any + Send>),
}

/// What the worker's task handles between fetches.
enum Event {
    Control(Option<WorkerCtl>),
    Fetch(Option<FetchRequest>),
    Verdict(Settlement),
    Alarm,
    Reply(Option<async_nats::Message>),
    Ended(Ended),
}

impl Station {
    /// Whether a caller may serve a fetch now: nothing is queued, nothing
    /// waits for the worker's task.
    fn idle(&self) -> bool {
        self.stashed.is_none() && self.ended.is_none() && self.inbox.fetches.is_empty()
    }

    /// The next thing to handle, if there is one; else the channels (and
    /// the timer) wake the task of `cx` when something comes.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        if let Some(end) = self.ended.take() {
            return Poll::Ready(Event::Ended(end));
        }
        if let Some(event) = self.stashed.take() {
            return Poll::Ready(event);
        }
        // Deliveries kept for a target to come are kept alive meanwhile.
        match self.worker.in_flight.next_deadline() {
            Some(at) => self.worker.alarm.arm_if_earlier(at),
            None => self.worker.alarm.disarm(),
        }
        pin!(self.next_event()).poll(cx)
    }

    async fn next_event(&mut self) -> Event {
        let Self { worker, inbox, .. } = self;
        tokio::select! {
            biased;
            control = inbox.control.recv() => Event::Control(control),
            request = inbox.fetches.recv() => Event::Fetch(request),
            settlement = worker.in_flight.next_verdict() => Event::Verdict(settlement),
            () = worker.alarm.fired(), if worker.alarm.is_armed() => Event::Alarm,
            message = next_reply(&mut worker.replies) => Event::Reply(message),
        }
    }

    /// Handles what came between fetches. `Some` when the worker ends.
    async fn handle(&mut self, event: Event) -> Option<Result<(), Error>> {
        let worker = &mut self.worker;
        match event {
            Event::Control(Some(WorkerCtl::SetTarget(target))) => self.inbox.target.set(target),
            Event::Control(Some(WorkerCtl::Drain { timeout, reply })) => {
                let report =
                    drain_in_flight(&mut worker.in_flight, timeout, DrainReport::default()).await;
                worker.release_pin().await;
                let _ = reply.send(report);
                return Some(Ok(()));
            }
            Event::Control(None) | Event::Fetch(None) => return Some(Ok(())),
            Event::Fetch(Some(request)) => {
                return worker.serve(request, &mut self.inbox).await.ends();
            }
            // Verdicts that arrive between fetches are stale (their
            // deliveries timed out), or from deliveries kept for the next
            // target.
            Event::Verdict(settlement) => {
                worker.in_flight.apply(settlement).await;
            }
            Event::Alarm => worker.in_flight.expire_due(Instant::now(), |_| {}).await,
            // Between fetches, whatever comes is for a fetch already
            // answered: nak'ed now rather than left to `ack_wait`.
            Event::Reply(Some(message)) => {
                if let Some(replies) = &worker.replies {
                    replies.stray(&message);
                }
            }
            Event::Reply(None) => worker.replies = None,
            Event::Ended(Ended::Returned(end)) => return Some(end),
            Event::Ended(Ended::Panicked(panic)) => std::panic::resume_unwind(panic),
        }
        None
    }
}

impl Desk {
    /// Opens the desk with `worker` at it (at once, unless a caller is
    /// looking at the desk this very moment: then as the returned future
    /// starts), and returns the worker task's future, which looks after
    /// the desk until the worker ends.
    pub(super) fn open(
        self: Arc<Self>,
        worker: Worker,
        inbox: WorkerInbox,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'static {
        let leaving = Leaving(Arc::clone(&self));
        let mut station = Some(Station {
            worker,
            inbox,
            stashed: None,
            ended: None,
        });
        if let Ok(mut open) = self.station.try_lock() {
            *open = station.take();
        }
        async move {
            let _leaving = leaving;
            if let Some(station) = station {
                *self.station.lock().await = Some(station);
            }
            self.look_after().await
        }
    }

    /// The worker task's loop: handles what comes between fetches.
    async fn look_after(&self) -> Result<(), Error> {
        loop {
            let (station, event) = self.next_event().await;
            let mut held = Held {
                station,
                desk: self,
            };
            let Some(at_desk) = held.station.as_mut() else {
                return Ok(());
            };
            if let Some(end) = at_desk.handle(event).await {
                return end;
            }
        }
    }

    /// The worker task's next event, with the desk held to handle it.
    async fn next_event(&self) -> (tokio::sync::MutexGuard<'_, Option<Station>>, Event) {
        poll_fn(|cx| {
            self.register(cx.waker());
            let mut station = match self.station.try_lock() {
                Ok(station) => station,
                Err(_) => {
                    // A caller serves a fetch; it wakes this task when it
                    // leaves (or has just left: look again).
                    self.waiting.store(true, Ordering::SeqCst);
                    match self.station.try_lock() {
                        Ok(station) => station,
                        Err(_) => return Poll::Pending,
                    }
                }
            };
            let event = match station.as_mut() {
                Some(at_desk) => ready!(at_desk.poll_event(cx)),
                None => Event::Ended(Ended::Returned(Ok(()))),
            };
            Poll::Ready((station, event))
        })
        .await
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.worker.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// The worker task's waker, once it has looked at the desk.
    fn worker_waker(&self) -> Option<Waker> {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Clears the desk of the ended worker, unless someone sits at it
    /// (who then clears it on leaving).
    fn clear_if_free(&self) {
        if let Ok(mut station) = self.station.try_lock() {
            station.take();
        }
    }

    fn wake_worker(&self) {
        if let Some(waker) = self.worker_waker() {
            waker.wake();
        }
    }

    /// Serves `request` in the caller's task when the worker is idle;
    /// hands it back (to be queued for the worker) when it is not.
    pub(crate) fn serve_here(
        self: &Arc<Self>,
        request: FetchRequest,
    ) -> Result<ServeHere, FetchRequest> {
        let Ok(station) = Arc::clone(&self.station).try_lock_owned() else {
            return Err(request);
        };
        let mut seat = Seat {
            station: Some(station),
            desk: Arc::clone(self),
            handed_back: false,
        };
        match seat.station.as_deref() {
            Some(Some(station)) if station.idle() => {
                let counters = &station.worker.ctx.counters;
                counters.fetches_in_caller.fetch_add(1, Ordering::Relaxed);
            }
            _ => return Err(request),
        }
        let serve = async move {
            let desk = Arc::clone(&seat.desk);
            let mut closing = pin!(desk.closing.notified());
            closing.as_mut().enable();
            if desk.closed.load(Ordering::SeqCst) {
                return;
            }
            let Some(Some(at_desk)) = seat.station.as_deref_mut() else {
                return;
            };
            // A panic ends the worker (its task panics with it, and the
            // child is restarted), not the caller.
            let serve = AssertUnwindSafe(at_desk.worker.serve(request, &mut at_desk.inbox));
            let served = tokio::select! {
                biased;
                () = closing => return,
                served = serve.catch_unwind() => served,
            };
            at_desk.ended = match served {
                Ok(served) => served.ends().map(Ended::Returned),
                Err(panic) => Some(Ended::Panicked(panic)),
            };
            desk.hand_back(at_desk);
            seat.handed_back();
        };
        Ok(ServeHere {
            serve: Some(Box::pin(serve)),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// Before a caller leaves the desk: the worker's channels wake the
    /// worker's task again, which is woken now if there is something for
    /// it.
    fn hand_back(&self, station: &mut Station) {
        // Without one, the worker's task has not looked yet: it will.
        let Some(waker) = self.worker_waker() else {
            return;
        };
        // What is ready (the end this fetch made, something that came) is
        // stashed for the worker's task.
        if let Poll::Ready(event) = station.poll_event(&mut Context::from_waker(&waker)) {
            station.stashed = Some(event);
            waker.wake();
        }
    }
}

/// A caller at the desk. Leaving, it wakes the worker's task if that
/// found the desk taken or was not handed the channels back, and clears
/// the desk if the worker has ended.
struct Seat {
    station: Option<OwnedMutexGuard<Option<Station>>>,
    desk: Arc<Desk>,
    handed_back: bool,
}

impl Seat {
    fn handed_back(&mut self) {
        self.handed_back = true;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        drop(self.station.take());
        if self.desk.waiting.swap(false, Ordering::SeqCst) || !self.handed_back {
            self.desk.wake_worker();
        }
        if self.desk.closed.load(Ordering::SeqCst) {
            self.desk.clear_if_free();
        }
    }
}

/// The desk held by the worker's task. Dropped with the task (its child
/// stopped) while it serves a fetch, it clears the desk: whichever of this
/// and [`Leaving`] is dropped last does.
struct Held<'a> {
    station: tokio::sync::MutexGuard<'a, Option<Station>>,
    desk: &'a Desk,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if self.desk.closed.load(Ordering::SeqCst) {
            self.station.take();
        }
    }
}

/// The worker's task ending (returned, or dropped with its child): the
/// desk is cleared now, or by the caller at it when it leaves, and a
/// fetch at the desk stops.
struct Leaving(Arc<Desk>);

impl Drop for Leaving {
    fn drop(&mut self) {
        let desk = &self.0;
        desk.closed.store(true, Ordering::SeqCst);
        desk.closing.notify_waiters();
        desk.clear_if_free();
    }
}

/// A fetch served in the caller's task (see the module docs). Dropped
/// before it is done, the rest of the fetch goes on in a task of its own.
pub(crate) struct ServeHere {
    serve: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl Future for ServeHere {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(serve) = self.serve.as_mut() {
            ready!(serve.as_mut().poll(cx));
            self.serve = None;
        }
        Poll::Ready(())
    }
}

impl Drop for ServeHere {
    fn drop(&mut self) {
        if let (Some(serve), Some(runtime)) = (self.serve.take(), self.runtime.as_ref()) {
            drop(runtime.spawn(serve));
        }
    }
}
