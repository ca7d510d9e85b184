//! The one word every part of the crate shares: push or pull.
//!
//! A leaf module, so that the error type and the specs can both name a
//! consumer's mode without needing each other.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How a durable consumer gets its messages: the `push | pull`
/// discriminator of a [`ConsumerSpec`](crate::ConsumerSpec) (`mode = "pull"` in TOML).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// The server pushes to a deliver subject; a [`crate::PushConsumer`]
    /// child pumps it, keeping a bounded window of unsettled deliveries.
    Push,
    /// Nothing moves until a `Fetch { batch, expires }` asks for at most
    /// `batch` messages; served by a [`crate::PullConsumer`] child.
    Pull,
}

impl fmt::Display for ConsumerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Push => "push",
            Self::Pull => "pull",
        })
    }
}
