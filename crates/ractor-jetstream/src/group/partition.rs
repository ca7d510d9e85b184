//! The stream side of a partitioned group: the subject transform that
//! stamps each message with its partition when it is stored, and the
//! durable that reads one partition.
//!
//! Publishers publish to the group's subjects (`orders.*`). The stream's
//! subject transform stores each message under its partition number and
//! the original tokens (`orders.acme` becomes `3.orders.acme`), computed by
//! the server's own mapping function `{{partition(P, k)}}` over the key
//! token. So the partition of a message is fixed when it is stored, by the
//! server, whoever publishes it. Partition `p` is read by the durable
//! `<stream>_<p>`, filtered on `p.>`.

use async_nats::jetstream::stream;

/// The subject transform destination for `subjects` with the key at
/// 1-based token `key_token` (which must be a `*`), over `partitions`.
/// `None` when the key token is not a `*` of the pattern.
pub(crate) fn transform_destination(
    subjects: &str,
    key_token: usize,
    partitions: u32,
) -> Option<String> {
    let tokens: Vec<&str> = subjects.split('.').collect();
    if key_token == 0 || tokens.get(key_token - 1) != Some(&"*") {
        return None;
    }
    // The key's place among the wildcards, which is how the mapping
    // functions name a token.
    let key_wildcard = tokens[..key_token].iter().filter(|t| **t == "*").count();
    let mut wildcard = 0;
    let rest: Vec<String> = tokens
        .iter()
        .map(|token| {
            if *token == "*" {
                wildcard += 1;
                format!("{{{{wildcard({wildcard})}}}}")
            } else {
                (*token).to_string()
            }
        })
        .collect();
    Some(format!(
        "{{{{partition({partitions},{key_wildcard})}}}}.{}",
        rest.join(".")
    ))
}

/// The stream configuration of a group.
pub(crate) fn stream_config(
    name: &str,
    subjects: &str,
    destination: String,
    replicas: usize,
) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![subjects.to_string()],
        subject_transform: Some(stream::SubjectTransform {
            source: subjects.to_string(),
            destination,
        }),
        num_replicas: replicas,
        ..Default::default()
    }
}

/// The durable that reads partition `partition` of the group on `stream`.
pub fn durable_name(stream: &str, partition: u32) -> String {
    format!("{stream}_{partition}")
}

/// The filter subject of partition `partition`.
pub(crate) fn filter_subject(partition: u32) -> String {
    format!("{partition}.>")
}

/// The partition of a stored subject (its first token), and the subject
/// as it was published (the rest).
pub fn split_stored_subject(subject: &str) -> Option<(u32, &str)> {
    let (first, rest) = subject.split_once('.')?;
    Some((first.parse().ok()?, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_prefixes_the_partition_of_the_key_wildcard() {
        assert_eq!(
            transform_destination("orders.*", 2, 6).as_deref(),
            Some("{{partition(6,1)}}.orders.{{wildcard(1)}}")
        );
        assert_eq!(
            transform_destination("ev.*.x.*", 4, 3).as_deref(),
            Some("{{partition(3,2)}}.ev.{{wildcard(1)}}.x.{{wildcard(2)}}")
        );
        assert_eq!(transform_destination("orders.*", 1, 6), None);
        assert_eq!(transform_destination("orders.*", 3, 6), None);
        assert_eq!(transform_destination("orders.*", 0, 6), None);
    }

    #[test]
    fn a_stored_subject_splits_into_partition_and_published_subject() {
        assert_eq!(split_stored_subject("3.orders.a"), Some((3, "orders.a")));
        assert_eq!(split_stored_subject("orders.a"), None);
    }
}
