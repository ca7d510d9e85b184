//! Whether an actor takes messages: shared by the consumer (its target)
//! and the keyed router (its workers), without either depending on the
//! other.

use ractor::ActorStatus;

/// Whether an actor in `status` takes messages (it is starting, running,
/// or being upgraded).
pub(crate) fn takes_messages(status: ActorStatus) -> bool {
    matches!(
        status,
        ActorStatus::Starting | ActorStatus::Running | ActorStatus::Upgrading
    )
}
