//! A reusable timer.

use std::time::Duration;

/// A timer that is armed now and then and reused, so that waiting on a
/// deadline does not register a new timer on every loop turn.
pub(crate) struct Alarm {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<tokio::time::Instant>,
}

impl Alarm {
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(3600))),
            armed: None,
        }
    }

    /// Fires at `at` (replacing any earlier arming).
    pub fn arm(&mut self, at: tokio::time::Instant) {
        self.sleep.as_mut().reset(at);
        self.armed = Some(at);
    }

    /// Fires at `at`, unless it is armed to fire sooner already.
    pub fn arm_if_earlier(&mut self, at: tokio::time::Instant) {
        if self.armed.is_none_or(|armed| at < armed) {
            self.arm(at);
        }
    }

    /// Forgets any arming.
    pub fn disarm(&mut self) {
        self.armed = None;
    }

    pub fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Completes when the armed time comes; poll only while armed.
    pub async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
