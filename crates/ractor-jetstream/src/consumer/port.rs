//! A fetch's way to a pull child's worker: the checks every fetch passes
//! and the queue it waits in.
//!
//! The child's actor serves [`ConsumerMsg::Fetch`](super::ConsumerMsg::Fetch)
//! through its port. A [`PullHandle`](crate::PullHandle) asks the child for a
//! clone of the port once and then queues its fetches itself, which spares
//! every fetch a hop through the actor's mailbox (the worker answers the
//! caller directly either way). When the child stops, its worker's queue
//! closes: [`FetchPort::submit`] hands the reply port back, and the handle
//! finds the child that replaced it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ractor::RpcReplyPort;
use tokio::sync::mpsc;

use super::effective::SharedEffective;
use super::fetch::{FetchOutcome, FetchRequest, MAX_QUEUED_FETCHES, validate_fetch};
use super::pull::{Desk, ServeHere};
use crate::error::Error;
use crate::mode::ConsumerMode;

/// Where a fetch's outcome goes.
pub(crate) type FetchReply = RpcReplyPort<Result<FetchOutcome, Error>>;

/// The way into one child's worker. Cheap to clone.
#[derive(Debug, Clone)]
pub struct FetchPort {
    fetches: mpsc::Sender<FetchRequest>,
    limits: SharedEffective,
    draining: Arc<AtomicBool>,
    durable: Arc<str>,
    mode: ConsumerMode,
    /// A pull child's desk, where a fetch may be served in the caller's
    /// task (see `pull/desk.rs`).
    desk: Option<Arc<Desk>>,
}

impl FetchPort {
    pub(crate) fn new(
        fetches: mpsc::Sender<FetchRequest>,
        limits: SharedEffective,
        durable: Arc<str>,
        mode: ConsumerMode,
    ) -> Self {
        Self {
            fetches,
            limits,
            draining: Arc::new(AtomicBool::new(false)),
            durable,
            mode,
            desk: None,
        }
    }

    pub(crate) fn lend_desk(&mut self, desk: Arc<Desk>) {
        self.desk = Some(desk);
    }

    /// From now on, fetches are refused with [`Error::Draining`].
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether the worker still takes fetches.
    pub(crate) fn is_open(&self) -> bool {
        !self.fetches.is_closed()
    }

    /// Checks a fetch and queues it for the worker, which answers `reply`.
    /// A fetch that fails a check is answered here. Only when the worker is
    /// gone is `reply` handed back, unanswered.
    pub(crate) fn submit(
        &self,
        batch: u64,
        expires: Option<Duration>,
        reply: FetchReply,
    ) -> Result<(), FetchReply> {
        match self.check(batch, expires, reply) {
            Some(request) => self.queue(request),
            None => Ok(()),
        }
    }

    /// [`submit`](Self::submit), but when the worker is idle the fetch is
    /// served in the caller's task: by the returned future, which the
    /// caller awaits before the answer (see `pull/desk.rs`).
    pub(crate) fn submit_or_serve(
        &self,
        batch: u64,
        expires: Option<Duration>,
        reply: FetchReply,
    ) -> Result<Option<ServeHere>, FetchReply> {
        let Some(request) = self.check(batch, expires, reply) else {
            return Ok(None);
        };
        let request = match &self.desk {
            // Not from `block_on` (outside any task): there, every hand-off
            // from the fetch (to the target, to the connection) would cross
            // threads, and cost more than the two it saves.
            Some(desk) if tokio::task::try_id().is_some() => match desk.serve_here(request) {
                Ok(here) => return Ok(Some(here)),
                Err(request) => request,
            },
            _ => request,
        };
        self.queue(request).map(|()| None)
    }

    /// The request for a fetch that passes the checks; one that fails is
    /// answered here.
    fn check(
        &self,
        batch: u64,
        expires: Option<Duration>,
        reply: FetchReply,
    ) -> Option<FetchRequest> {
        let refused = if self.mode != ConsumerMode::Pull {
            Some(Error::WrongMode {
                durable: self.durable.to_string(),
                expected: ConsumerMode::Pull,
                actual: self.mode,
            })
        } else if self.draining.load(Ordering::Acquire) {
            Some(Error::Draining {
                durable: self.durable.to_string(),
            })
        } else {
            None
        };
        if let Some(err) = refused {
            let _ = reply.send(Err(err));
            return None;
        }
        match validate_fetch(batch, expires, &self.limits.get()) {
            Ok(expires) => Some(FetchRequest::new(
                batch,
                expires,
                reply,
                self.durable.clone(),
            )),
            Err(err) => {
                let _ = reply.send(Err(err));
                None
            }
        }
    }

    fn queue(&self, request: FetchRequest) -> Result<(), FetchReply> {
        match self.fetches.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(request)) => {
                request.answer(Err(Error::Busy {
                    durable: self.durable.to_string(),
                    queued: MAX_QUEUED_FETCHES,
                }));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(request)) => match request.into_reply() {
                Some(reply) => Err(reply),
                None => Ok(()),
            },
        }
    }
}
