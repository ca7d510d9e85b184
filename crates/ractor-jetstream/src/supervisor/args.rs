//! What a [`JetStreamSupervisor`](super::JetStreamSupervisor) is started with.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::connection::Connection;
use crate::restart::RestartPolicy;
use crate::spec::Topology;
use crate::target::Target;

/// What a [`JetStreamSupervisor`](super::JetStreamSupervisor) is started with.
pub struct SupervisorArgs {
    /// The connection every child binds through: made by `connect`, or
    /// from a plain JetStream context.
    pub connection: Connection,
    /// The streams and consumers to make exist at start.
    pub topology: Topology,
    /// Target actors by name; each consumer spec names one.
    pub targets: HashMap<String, Target>,
    /// How children are restarted.
    pub restart_policy: RestartPolicy,
    /// How long a shutdown waits for in-flight decisions before nak'ing
    /// them.
    pub drain_timeout: Duration,
}

impl SupervisorArgs {
    /// Arguments with no targets yet, the default restart policy and a 5 s
    /// drain timeout.
    ///
    /// `connection` is a [`Connection`] made by [`connect`](crate::connect()),
    /// whose permission reports let a refused request fail at once, or a
    /// plain [`jetstream::Context`](async_nats::jetstream::Context), whose
    /// refused requests fail when they time out.
    pub fn new(connection: impl Into<Connection>, topology: Topology) -> Self {
        Self {
            connection: connection.into(),
            topology,
            targets: HashMap::new(),
            restart_policy: RestartPolicy::default(),
            drain_timeout: Duration::from_secs(5),
        }
    }

    /// Registers a target actor under a name.
    ///
    /// `target` is an actor (`actor.get_derived()`), or a [`Target`] that
    /// names one the way ractor does ([`Target::registered`],
    /// [`Target::group`]), which follows the target's own restarts.
    pub fn target(mut self, name: impl Into<String>, target: impl Into<Target>) -> Self {
        self.targets.insert(name.into(), target.into());
        self
    }

    /// Sets the restart policy.
    pub fn restart_policy(mut self, policy: RestartPolicy) -> Self {
        self.restart_policy = policy;
        self
    }

    /// Sets how long a shutdown (the supervisor stopping) waits for
    /// in-flight decisions before nak'ing them (default 5 s).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }
}

impl fmt::Debug for SupervisorArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SupervisorArgs")
            .field("topology", &self.topology)
            .field("targets", &self.targets.keys().collect::<Vec<_>>())
            .field("restart_policy", &self.restart_policy)
            .finish_non_exhaustive()
    }
}
