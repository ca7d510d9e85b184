//! Draining a worker's in-flight deliveries: wait for decisions up to a
//! deadline, then nak the rest.

use std::time::Duration;

use super::DrainReport;
use super::inflight::{self, Settled};

/// Serves the control channel during a drain: waits up to `timeout` for the
/// decisions on what is in flight, then nak's the rest.
pub(crate) async fn drain_in_flight(
    in_flight: &mut inflight::InFlight,
    timeout: Duration,
    report: DrainReport,
) -> DrainReport {
    drain_recording(in_flight, timeout, report, |_| {}).await
}

/// [`drain_in_flight`], reporting what became of each delivery a fetch
/// counted to `record`.
pub(crate) async fn drain_recording(
    in_flight: &mut inflight::InFlight,
    timeout: Duration,
    mut report: DrainReport,
    mut record: impl FnMut(Settled),
) -> DrainReport {
    let deadline = tokio::time::Instant::now() + timeout;
    // A decision made meanwhile goes out at once: the wait below may be
    // longer than the ack wait.
    in_flight.stop_lingering().await;
    while in_flight.undecided() > 0 {
        tokio::select! {
            settlement = in_flight.next_verdict() => {
                if let Some(settled) = in_flight.apply(settlement).await {
                    report.settled += 1;
                    record(settled);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    report.naked += in_flight.settle_all(&mut record).await as u64;
    in_flight.flush(Duration::from_secs(2)).await;
    report
}
