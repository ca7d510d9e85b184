//! The NATS subject and name grammar, as the server applies it: which names
//! a stream, consumer or queue group may have, which subjects are valid, and
//! whether one subject pattern falls within another.

use crate::error::ValidationErrors;
use crate::spec::check::quoted;

/// Checks a stream, consumer or queue-group name: non-empty, at most 255
/// bytes, no `.`, `*`, `>`, whitespace or path separators.
pub(crate) fn check_name(field: &str, name: &str, errors: &mut ValidationErrors) {
    if name.is_empty() {
        errors.add(field, "\"\"", "must not be empty");
    } else if name.len() > 255 {
        // The server counts bytes, not characters.
        errors.add(
            field,
            format!("({} bytes)", name.len()),
            "must be at most 255 bytes",
        );
    } else if let Some(bad) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        errors.add(field, quoted(name), format!("must not contain {bad:?}"));
    }
}

/// Whether `subject` is a valid NATS subject (wildcards allowed).
pub(crate) fn is_valid_subject(subject: &str) -> bool {
    let mut tokens = subject.split('.').peekable();
    if subject.is_empty() {
        return false;
    }
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return false;
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return false;
        }
        if token == ">" && tokens.peek().is_some() {
            return false;
        }
    }
    true
}

/// Checks that `subject` is a valid NATS subject (wildcards allowed).
pub(crate) fn check_subject(field: &str, subject: &str, errors: &mut ValidationErrors) {
    if !is_valid_subject(subject) {
        errors.add(
            field,
            quoted(subject),
            "not a valid subject (dot-separated non-empty tokens, no whitespace; `*` and `>` only as whole tokens, `>` last)",
        );
    }
}

/// Checks a subject that must name one subject: valid and without
/// wildcards (a deliver subject, a dead-letter subject).
pub(crate) fn check_literal_subject(field: &str, subject: &str, errors: &mut ValidationErrors) {
    check_subject(field, subject, errors);
    if subject.contains(['*', '>']) {
        errors.add(field, quoted(subject), "may not contain wildcards");
    }
}

/// Whether every subject matched by `filter` is also matched by `pattern`.
pub(crate) fn subject_is_subset(filter: &str, pattern: &str) -> bool {
    let mut f = filter.split('.');
    let mut p = pattern.split('.');
    loop {
        match (f.next(), p.next()) {
            (None, None) => return true,
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_rules() {
        assert!(subject_is_subset("orders.created", "orders.>"));
        assert!(subject_is_subset("orders.*", "orders.>"));
        assert!(subject_is_subset("orders.*", "orders.*"));
        assert!(subject_is_subset("orders.a.b", "orders.>"));
        assert!(!subject_is_subset("orders", "orders.>"));
        assert!(!subject_is_subset("orders.>", "orders.*"));
        assert!(!subject_is_subset("payments.x", "orders.>"));
        assert!(!subject_is_subset("orders.*", "orders.created"));
        assert!(subject_is_subset("a.b", "*.b"));
    }

    #[test]
    fn names_and_subjects() {
        let mut errors = ValidationErrors::new();
        check_name("name", "ORDERS", &mut errors);
        assert!(errors.is_empty());
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b", "a\\b"] {
            let mut errors = ValidationErrors::new();
            check_name("name", bad, &mut errors);
            assert!(errors.has_field("name"), "{bad:?} should be rejected");
        }
        assert!(is_valid_subject("orders.>"));
        assert!(is_valid_subject("orders.*.x"));
        assert!(!is_valid_subject("orders..x"));
        assert!(!is_valid_subject("orders.>.x"));
        assert!(!is_valid_subject("orders.a*"));
        assert!(!is_valid_subject(""));
    }
}
