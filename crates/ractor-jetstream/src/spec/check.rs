//! The small checks every spec runs on its fields: a field's full path, a
//! positive duration, a count within the server's range.
//!
//! Each check records a [`FieldError`](crate::FieldError) that names the
//! field and the value as written, and goes on, so that a whole file can be
//! fixed in one go.

use std::time::Duration;

use crate::error::ValidationErrors;

/// The full path of field `name` under `at` (`consumers[2]` and
/// `max_batch` give `consumers[2].max_batch`).
pub(crate) fn join_field(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

/// A string value as an error shows it: quoted, with escapes.
pub(crate) fn quoted(value: &str) -> String {
    format!("{value:?}")
}

/// Refuses a zero duration.
pub(crate) fn check_duration(field: &str, value: Duration, errors: &mut ValidationErrors) {
    if value.is_zero() {
        errors.add(field, "0s", "must be longer than zero");
    }
}

/// Refuses a zero duration, when one is set.
pub(crate) fn check_duration_opt(
    field: &str,
    value: Option<Duration>,
    errors: &mut ValidationErrors,
) {
    if let Some(d) = value {
        check_duration(field, d, errors);
    }
}

/// The largest count the server stores in a signed 64-bit field
/// (`max_deliver`, `max_ack_pending`, `max_batch`, `max_messages`, ...).
pub(crate) const SERVER_I64_MAX: u64 = i64::MAX as u64;

/// Refuses a count of 0 (a limit of nothing; unset means the default or no
/// limit) and one above `max`, the largest the server stores.
pub(crate) fn check_count(
    field: &str,
    value: Option<u64>,
    max: u64,
    errors: &mut ValidationErrors,
) {
    match value {
        Some(0) => errors.add(
            field,
            0,
            "must be positive (leave it unset for the default)",
        ),
        Some(v) if v > max => errors.add(field, v, format!("must be at most {max}")),
        _ => {}
    }
}
