//! Which member holds which partition: a function of the live members
//! alone, so that every member that sees the same members computes the
//! same assignment, with no coordinator.
//!
//! The members are ordered (by the static list when there is one, by name
//! otherwise) and partition `p` goes to member `p mod n`: every member
//! holds `P / n` or one more, at least one while `n <= P`. Members whose
//! views differ for a moment may both think they hold a partition; the
//! server's pin still lets only one of them take its messages.

/// The partitions `member` holds when `live` (ordered) are the members.
pub(crate) fn partitions_of(member: &str, live: &[String], partitions: u32) -> Vec<u32> {
    let Some(index) = live.iter().position(|m| m == member) else {
        return Vec::new();
    };
    let n = live.len() as u32;
    (0..partitions).filter(|p| p % n == index as u32).collect()
}

/// The live members in assignment order: the static list's order when
/// there is one (members not on it take no partitions), by name otherwise.
pub(crate) fn order(
    live: impl IntoIterator<Item = String>,
    declared: Option<&[String]>,
) -> Vec<String> {
    let live: std::collections::BTreeSet<String> = live.into_iter().collect();
    match declared {
        Some(declared) => declared
            .iter()
            .filter(|m| live.contains(*m))
            .cloned()
            .collect(),
        None => live.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_partition_has_one_holder_and_the_spread_is_even() {
        let live = names(&["a", "b", "c"]);
        let mut all: Vec<u32> = live
            .iter()
            .flat_map(|m| partitions_of(m, &live, 7))
            .collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        let sizes: Vec<usize> = live
            .iter()
            .map(|m| partitions_of(m, &live, 7).len())
            .collect();
        assert_eq!(sizes, vec![3, 2, 2]);
        assert!(partitions_of("z", &live, 7).is_empty());
    }

    #[test]
    fn a_static_list_orders_the_members_and_leaves_out_the_undeclared() {
        let declared = names(&["c", "a", "b"]);
        let live = order(names(&["a", "c", "x"]), Some(&declared));
        assert_eq!(live, names(&["c", "a"]));
        assert_eq!(order(names(&["b", "a"]), None), names(&["a", "b"]));
    }
}
