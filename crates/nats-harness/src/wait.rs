//! Waiting for a condition with a deadline, instead of sleeping and hoping.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::HarnessError;

/// How often [`eventually`] tries again.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// Calls `attempt` until it returns `Ok`, for at most `timeout`, and returns
/// that value. On timeout the error names `what` and carries the last
/// attempt's error.
///
/// Each attempt should bound its own duration (a request timeout, say);
/// `eventually` does not cancel an attempt in progress.
///
/// ```no_run
/// # async fn demo(client: async_nats::Client) -> Result<(), nats_harness::HarnessError> {
/// use std::time::Duration;
/// let js = async_nats::jetstream::new(client);
/// // Retry while the stream's new leader is being elected.
/// let state = nats_harness::eventually("stream ORDERS answers", Duration::from_secs(20), || async {
///     let mut stream = js.get_stream("ORDERS").await.map_err(|e| e.to_string())?;
///     stream.info().await.map(|i| i.state.clone()).map_err(|e| e.to_string())
/// })
/// .await?;
/// println!("{} messages", state.messages);
/// # Ok(()) }
/// ```
pub async fn eventually<T, E, F, Fut>(
    what: &str,
    timeout: Duration,
    mut attempt: F,
) -> Result<T, HarnessError>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    loop {
        let last_error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                waited: started.elapsed(),
                last_error,
            });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}
