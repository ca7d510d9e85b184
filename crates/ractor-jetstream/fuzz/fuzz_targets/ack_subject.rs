//! Feeds arbitrary bytes to `DeliveryInfo::from_reply_subject`, both as
//! they come and behind a `$JS.ACK.` prefix (so that most inputs reach the
//! token parsing).
//!
//! Holds for every input: no panic; a subject that parses starts with
//! `$JS.ACK.`, and its numbers written back into a subject of the 9-token
//! form parse to the same `DeliveryInfo`; one that does not parse gives
//! `Error::Invalid` naming the field `reply_subject`.
//!
//! Run: `cargo +nightly fuzz run ack_subject -- -max_total_time=60`
//! (from `crates/ractor-jetstream`; see README.md in this directory).
#![no_main]

use std::time::UNIX_EPOCH;

use libfuzzer_sys::fuzz_target;
use ractor_jetstream::DeliveryInfo;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    check(&format!("$JS.ACK.{text}"));
});

fn check(subject: &str) {
    match DeliveryInfo::from_reply_subject(subject) {
        Ok(info) => {
            assert!(subject.starts_with("$JS.ACK."), "parsed {subject:?}");
            let nanos = info
                .published
                .duration_since(UNIX_EPOCH)
                .expect("published after the epoch")
                .as_nanos();
            let again = format!(
                "$JS.ACK.S.c.{}.{}.{}.{nanos}.{}",
                info.delivered, info.stream_sequence, info.consumer_sequence, info.pending
            );
            let reparsed =
                DeliveryInfo::from_reply_subject(&again).expect("written back, it parses");
            assert_eq!(reparsed, info, "{subject:?} -> {again:?}");
        }
        Err(err) => {
            let errors = err
                .validation()
                .unwrap_or_else(|| panic!("not a validation error: {err:?}"));
            assert!(errors.has_field("reply_subject"), "{err}");
        }
    }
}
