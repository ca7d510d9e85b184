//! Who is in the group, kept in a JetStream key-value bucket
//! (`rj-members-<stream>`), as orbit's elastic groups keep theirs.
//!
//! Each member puts its own key every fifth of the priority timeout and
//! watches the bucket. A member is live while its last put is younger than
//! the priority timeout, measured by the watcher's own clock when the put
//! arrives (so members' clocks need not agree). A member that leaves
//! gracefully deletes its key, which the others see at once; one that dies
//! stops putting and drops out after the timeout, about when the server
//! lets its pins go. Every change of the live set goes to the group actor
//! as a new view; the first one once the member has seen the others.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use tokio::time::Instant;

use super::assign;
use crate::error::{Error, ServerErrorKind};

/// The bucket that holds the members of the group on `stream`.
pub(crate) fn bucket_name(stream: &str) -> String {
    format!("rj-members-{stream}")
}

/// Opens (creating when needed) the members' bucket.
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    stream: &str,
    timeout: Duration,
    replicas: usize,
) -> Result<kv::Store, Error> {
    let bucket = bucket_name(stream);
    let op = format!("open the members' bucket {bucket}");
    match js.get_key_value(&bucket).await {
        Ok(store) => return Ok(store),
        Err(err) if err.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {}
        Err(err) => return Err(Error::server_caused(op, ServerErrorKind::Other, err)),
    }
    let config = kv::Config {
        bucket: bucket.clone(),
        history: 1,
        // Keys of members that died go away by themselves.
        max_age: (timeout * 30).max(Duration::from_secs(60)),
        storage: jetstream::stream::StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another member made it meanwhile.
        Err(_) => js
            .get_key_value(&bucket)
            .await
            .map_err(|err| Error::server_caused(op, ServerErrorKind::Other, err)),
    }
}

/// Keeps `member` in the bucket and reports every change of the live,
/// ordered members to `views`, until the task is aborted or `views` is
/// closed.
pub(crate) async fn run(
    store: kv::Store,
    member: String,
    declared: Option<Vec<String>>,
    timeout: Duration,
    views: impl Fn(Vec<String>) -> bool,
) {
    let beat = timeout / 5;
    let mut beats = tokio::time::interval(beat);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut checks = tokio::time::interval(beat / 2);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut last: Option<Vec<String>> = None;
    let mut watch = None;
    // The first view waits until this member's own key came back through
    // the watch: every older key was replayed before it, so a member
    // joining a running group does not first take every partition for
    // itself. (Two members starting at the same moment may; the next put
    // of the other corrects it a beat later.)
    let mut caught_up = false;
    loop {
        if watch.is_none() {
            match store.watch_all().await {
                Ok(w) => watch = Some(w),
                Err(err) => {
                    tracing::warn!(%member, error = %err, "cannot watch the members' bucket; trying again");
                    tokio::time::sleep(beat).await;
                    continue;
                }
            }
        }
        let Some(w) = watch.as_mut() else { continue };
        tokio::select! {
            _ = beats.tick() => {
                if let Err(err) = store.put(&member, "alive".into()).await {
                    tracing::warn!(%member, error = %err, "could not renew membership");
                }
            }
            entry = w.next() => match entry {
                Some(Ok(entry)) => match entry.operation {
                    kv::Operation::Put => {
                        caught_up |= entry.key == member;
                        seen.insert(entry.key, Instant::now());
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        seen.remove(&entry.key);
                    }
                },
                Some(Err(err)) => {
                    tracing::debug!(%member, error = %err, "members' watch failed; watching again");
                    watch = None;
                }
                None => watch = None,
            },
            _ = checks.tick() => {}
        }
        let now = Instant::now();
        if !caught_up {
            continue;
        }
        seen.retain(|_, at| now.duration_since(*at) < timeout);
        let mut live: Vec<String> = seen.keys().cloned().collect();
        if !seen.contains_key(&member) {
            live.push(member.clone());
        }
        let view = assign::order(live, declared.as_deref());
        if last.as_ref() != Some(&view) {
            tracing::info!(%member, members = ?view, "group members changed");
            if !views(view.clone()) {
                return;
            }
            last = Some(view);
        }
    }
}

/// Takes `member` out of the bucket, so that the others see it leave at
/// once.
pub(crate) async fn leave(store: &kv::Store, member: &str) {
    if let Err(err) = store.delete(member).await {
        tracing::warn!(%member, error = %err, "could not delete the membership key; the others notice after the timeout");
    }
}
