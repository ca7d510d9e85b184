//! Bad input to topology loading (issue 7): whatever TOML or JSON text comes
//! in, `Topology::from_toml_str` and `Topology::from_json_str` never panic,
//! and either give a topology that validates, or an `Error::Invalid` whose
//! every entry names a field.
//!
//! Property tests feed fully random text, token soup that often parses, and
//! near-valid topologies with one or more fields mutated (bad names and
//! subjects, zero durations, negative numbers, a window above
//! `max_ack_pending`, filters outside the stream, unknown fields, wrong
//! types). Deterministic tests pin the exact field each kind of mistake is
//! reported under, the line (TOML) and line and column (JSON) of an unknown
//! field, and that topologies, `examples/topology.toml` included, round-trip
//! through TOML and JSON unchanged.

use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use ractor_jetstream::spec::DEFAULT_MAX_ACK_PENDING;
use ractor_jetstream::{
    ChildSettings, ConsumerMode, ConsumerSpec, Discard, Error, ModeSpec, PullSpec, PushSpec,
    RestartKind, Retention, ServerSettings, StartPosition, Storage, StreamSpec, Topology,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// What every outcome must look like
// ---------------------------------------------------------------------------

/// Asserts the contract for one load: a topology that validates, or an
/// invalid-input error with at least one entry, each naming a field.
fn check_outcome(input: &str, result: &Result<Topology, Error>) -> Result<(), TestCaseError> {
    match result {
        Ok(topology) => {
            prop_assert!(
                topology.validate().is_ok(),
                "loaded a topology that does not validate from {input:?}: {:?}",
                topology.validate()
            );
        }
        Err(err) => {
            let Some(errors) = err.validation() else {
                return Err(TestCaseError::fail(format!(
                    "not a validation error for {input:?}: {err:?}"
                )));
            };
            prop_assert!(
                !errors.errors().is_empty(),
                "an error without entries for {input:?}"
            );
            for e in errors.errors() {
                prop_assert!(
                    !e.field.is_empty() || is_known_empty_key_bug(e),
                    "an error entry names no field for {input:?}: {e:?}"
                );
                prop_assert!(!e.reason.is_empty(), "no reason for {input:?}: {e:?}");
            }
            // Display never panics and says something.
            prop_assert!(!err.to_string().is_empty());
        }
    }
    Ok(())
}

/// KNOWN BUG (see `unknown_keys_are_named_exactly` below, ignored): an
/// unknown field whose name is the empty string (`"" = 1`, `{"": 1}`) is
/// reported with an empty field name. Tolerated here, and only in exactly
/// that form, so that the properties keep checking everything else.
fn is_known_empty_key_bug(e: &ractor_jetstream::FieldError) -> bool {
    e.field.is_empty() && e.reason.contains("unknown field ``")
}

fn load_both(toml_text: &str, json_text: &str) -> Result<(), TestCaseError> {
    check_outcome(toml_text, &Topology::from_toml_str(toml_text))?;
    check_outcome(json_text, &Topology::from_json_str(json_text))?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators: valid topologies
// ---------------------------------------------------------------------------

/// A valid name stem (the index is appended to keep names unique).
fn name_stem() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[A-Za-z0-9_-]{1,24}",
        // Non-ASCII letters are allowed in names.
        1 => "[A-Za-zéü漢_-]{1,12}",
        // Long, up to the limit once the index is appended.
        1 => "[A-Z]{240,250}",
    ]
}

fn token() -> impl Strategy<Value = String> {
    "[a-z0-9_-]{1,8}"
}

/// A non-zero duration, from milliseconds to years, with odd nanoseconds.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (1u64..3_600_000).prop_map(Duration::from_millis),
        (0u64..100_000_000, 1u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (1u64..1_000_000_000_000).prop_map(Duration::from_secs),
    ]
}

fn stream_spec(i: usize) -> impl Strategy<Value = StreamSpec> {
    (
        name_stem(),
        prop::collection::vec(token(), 0..3),
        (
            prop::option::of(select(vec![Storage::File, Storage::Memory])),
            prop::option::of(select(vec![
                Retention::Limits,
                Retention::Interest,
                Retention::WorkQueue,
            ])),
            // Counts up to the server's own limits (i64, and i32 for a
            // message size); unset is no limit.
            prop::option::of(1u64..=i64::MAX as u64),
            prop::option::of(1u64..=i64::MAX as u64),
            prop::option::of(duration()),
            prop::option::of(1u64..=i32::MAX as u64),
        ),
        (
            prop::option::of(select(vec![Discard::Old, Discard::New])),
            prop::option::of(1u64..=5),
            prop::option::of(duration()),
            prop::option::of(any::<String>()),
        ),
    )
        .prop_map(
            move |(
                stem,
                extra,
                (storage, retention, max_messages, max_bytes, max_age, max_message_size),
                (discard, replicas, duplicate_window, description),
            )| {
                let mut subjects = vec![format!("s{i}.>")];
                subjects.extend(extra.iter().map(|t| format!("x{i}.{t}.*")));
                StreamSpec {
                    name: format!("{stem}_{i}"),
                    subjects,
                    storage,
                    retention,
                    max_messages,
                    max_bytes,
                    max_age,
                    max_message_size,
                    discard,
                    replicas,
                    duplicate_window,
                    description,
                }
            },
        )
}

fn start_position() -> impl Strategy<Value = StartPosition> {
    prop_oneof![
        Just(StartPosition::All),
        Just(StartPosition::Last),
        Just(StartPosition::New),
        Just(StartPosition::LastPerSubject),
        (1u64..).prop_map(StartPosition::Sequence),
    ]
}

/// A valid consumer `j` on stream `stream` (index `k` among the streams).
fn consumer_spec(j: usize, stream: String, k: usize) -> impl Strategy<Value = ConsumerSpec> {
    (
        (name_stem(), "[a-z][a-z0-9-]{0,12}", any::<bool>()),
        prop::collection::vec(
            prop_oneof![
                token().prop_map(move |t| format!("s{k}.{t}")),
                token().prop_map(move |t| format!("s{k}.*.{t}")),
                token().prop_map(move |t| format!("s{k}.{t}.>")),
            ],
            0..3,
        ),
        (
            start_position(),
            prop::option::of(duration()),
            prop::option::of(1u32..1000),
            prop::option::of(1u64..10_000),
            prop::option::of(1u64..100_000),
            prop::collection::vec(duration(), 0..4),
        ),
        (
            prop::option::of(1u64..10_000),
            prop::option::of(duration()),
            prop::option::of(1u64..10_000),
            prop::option::of(token().prop_map(|t| format!("deliver.{t}"))),
            prop::option::of("[a-z0-9_-]{1,12}"),
            prop::option::of(1u64..100_000),
            prop::option::of((100u64..60_000).prop_map(Duration::from_millis)),
        ),
        (
            select(vec![
                RestartKind::Permanent,
                RestartKind::Transient,
                RestartKind::Temporary,
            ]),
            prop::option::of(any::<String>()),
        ),
    )
        .prop_map(
            move |(
                (stem, target, push),
                filter_subjects,
                (start, ack_wait, hold_per_mille, max_deliver, max_ack_pending, backoff),
                (
                    max_batch,
                    max_expires,
                    max_waiting,
                    deliver_subject,
                    deliver_group,
                    max_in_flight,
                    idle_heartbeat,
                ),
                (restart, description),
            )| {
                // Any positive max_hold (the child keeps deliveries alive
                // past ack_wait); these stay below it.
                let ack = ack_wait.unwrap_or(ractor_jetstream::spec::DEFAULT_ACK_WAIT);
                let max_hold = hold_per_mille
                    .map(|m| ack * m / 1000)
                    .filter(|d| !d.is_zero() && *d < ack);
                // max_deliver must exceed the number of backoff entries.
                let max_deliver = max_deliver.map(|m| {
                    if m as usize <= backoff.len() {
                        backoff.len() as u64 + m
                    } else {
                        m
                    }
                });
                let server = ServerSettings {
                    filter_subjects,
                    start,
                    ack_wait,
                    max_deliver,
                    max_ack_pending,
                    backoff,
                    description,
                };
                let mode = if push {
                    // The window never above max_ack_pending.
                    let pending = max_ack_pending.unwrap_or(DEFAULT_MAX_ACK_PENDING);
                    ModeSpec::Push(PushSpec {
                        deliver_subject,
                        deliver_group,
                        idle_heartbeat,
                        max_in_flight: max_in_flight.map(|w| w.min(pending)),
                    })
                } else {
                    ModeSpec::Pull(PullSpec {
                        max_batch,
                        max_expires,
                        max_waiting,
                        ..PullSpec::default()
                    })
                };
                ConsumerSpec {
                    stream: stream.clone(),
                    durable: format!("{stem}_{j}"),
                    target,
                    mode,
                    server,
                    child: ChildSettings {
                        max_hold,
                        restart,
                        ..Default::default()
                    },
                }
            },
        )
}

/// A valid topology: 0 to 3 streams, and 0 to 4 consumers on them.
fn topology() -> impl Strategy<Value = Topology> {
    (0usize..=3)
        .prop_flat_map(|n| {
            (0..n)
                .map(stream_spec)
                .collect::<Vec<_>>()
                .prop_map(|streams| {
                    let mut t = Topology::new();
                    t.streams = streams;
                    t
                })
        })
        .prop_flat_map(|t| {
            let streams: Vec<String> = t.streams.iter().map(|s| s.name.clone()).collect();
            let m = if streams.is_empty() { 0 } else { 4 };
            (
                Just(t),
                prop::collection::vec(0..streams.len().max(1), 0..=m),
            )
                .prop_flat_map(move |(t, picks)| {
                    let consumers: Vec<_> = picks
                        .iter()
                        .enumerate()
                        .map(|(j, &k)| consumer_spec(j, streams[k].clone(), k))
                        .collect();
                    (Just(t), consumers).prop_map(|(mut t, consumers)| {
                        t.consumers = consumers;
                        t
                    })
                })
        })
}

// ---------------------------------------------------------------------------
// Generators: mutations of a valid topology
// ---------------------------------------------------------------------------

/// Where a mutation applies in the topology's JSON tree.
#[derive(Debug, Clone, Copy)]
enum At {
    Root,
    Stream(usize),
    Consumer(usize),
}

/// What loading a mutated topology must report.
#[derive(Debug, Clone)]
enum Expect {
    /// Validation fails, naming this exact field (among others maybe).
    Field(String),
    /// Parsing fails on an unknown field, naming it.
    Unknown(String),
    /// Parsing fails (a wrong type, a missing field).
    ParseError,
}

/// A change to one table: set (or, with `None`, remove) these keys.
#[derive(Debug, Clone)]
struct Mutation {
    at: At,
    edits: Vec<(String, Option<Value>)>,
    expect: Expect,
    /// Gives a name that another entry has: two such mutations can swap
    /// two names, which is valid again.
    duplicate: bool,
}

impl Mutation {
    fn set(at: At, key: &str, value: Value, expect: Expect) -> Self {
        Self {
            at,
            edits: vec![(key.to_string(), Some(value))],
            expect,
            duplicate: false,
        }
    }

    fn duplicate(mut self) -> Self {
        self.duplicate = true;
        self
    }

    fn apply(&self, tree: &mut Value) {
        // An earlier mutation may have replaced the list: then there is
        // nothing to change.
        let table = match self.at {
            At::Root => Some(tree),
            At::Stream(i) => tree.get_mut("streams").and_then(|s| s.get_mut(i)),
            At::Consumer(j) => tree.get_mut("consumers").and_then(|c| c.get_mut(j)),
        };
        let Some(table) = table.and_then(Value::as_object_mut) else {
            return;
        };
        for (key, value) in &self.edits {
            match value {
                Some(v) => {
                    table.insert(key.clone(), v.clone());
                }
                None => {
                    table.remove(key);
                }
            }
        }
    }
}

fn field(at: At, name: &str) -> Expect {
    Expect::Field(match at {
        At::Root => name.to_string(),
        At::Stream(i) => format!("streams[{i}].{name}"),
        At::Consumer(j) => format!("consumers[{j}].{name}"),
    })
}

/// Names that no stream, consumer or queue group may have.
fn bad_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Z]{0,5}[.*> /\\\\\t\n][A-Z]{0,5}",
        "[A-Z]{256,300}",
        "é{256,260}",
        "[A-Z]{1,4}\u{0}[A-Z]{1,4}",
        Just("\u{7f}".to_string()),
    ]
}

/// Subjects that are not valid NATS subjects.
fn bad_subject() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(".".to_string()),
        "[a-z]{1,5}\\.\\.[a-z]{1,5}",
        "\\.[a-z]{1,5}",
        "[a-z]{1,5}\\.",
        "[a-z]{1,5}\\.>\\.[a-z]{1,5}",
        "[a-z]{1,5}\\.[a-z]{1,3}[*>]",
        "[a-z]{1,5}\\.[*>][a-z]{1,3}",
        "[a-z]{1,5}[ \t\r\n][a-z]{1,5}",
    ]
}

/// Zero, written in several ways.
fn zero_duration() -> impl Strategy<Value = Value> {
    select(vec!["0s", "0ms", "0ns", "0us", "0 days", "0m 0s"]).prop_map(|s| json!(s))
}

/// Not positive: zero, and negative numbers, the old `-1` for "no limit"
/// among them.
fn bad_limit() -> impl Strategy<Value = i64> {
    prop_oneof![Just(0i64), Just(-1i64), Just(i64::MIN), i64::MIN..-1]
}

/// The keys each table knows.
const ROOT_KEYS: &[&str] = &["streams", "consumers", "connection"];
const STREAM_KEYS: &[&str] = &[
    "name",
    "subjects",
    "storage",
    "retention",
    "max_messages",
    "max_bytes",
    "max_age",
    "max_message_size",
    "discard",
    "replicas",
    "duplicate_window",
    "description",
];
const CONSUMER_KEYS: &[&str] = &[
    "stream",
    "durable",
    "mode",
    "target",
    "filter_subjects",
    "start",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "backoff",
    "max_hold",
    // The old name of max_hold, still read.
    "decision_timeout",
    "max_batch",
    "max_expires",
    "max_waiting",
    "deliver_subject",
    "deliver_group",
    "max_in_flight",
    "idle_heartbeat",
    "restart",
    "dead_letter_subject",
    "description",
];

/// A key none of the tables knows (never empty: see the known bug above).
fn unknown_key() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z_]{1,16}",
        select(vec![
            "Ack_Wait",
            "ackWait",
            "max-in-flight",
            "name ",
            " name",
            "名前",
            "a b",
            "x.y",
            "\"quoted\"",
        ])
        .prop_map(str::to_string),
    ]
    .prop_filter("a known key", |k| {
        !ROOT_KEYS.contains(&k.as_str())
            && !STREAM_KEYS.contains(&k.as_str())
            && !CONSUMER_KEYS.contains(&k.as_str())
    })
}

/// Any scalar or small compound value.
fn any_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(json!([])),
        Just(json!({})),
        Just(json!(["a", 1])),
        Just(json!({"sequence": 1})),
    ]
}

/// Mutations of stream `i` of `t` that make it invalid.
fn stream_mutations(t: &Topology, i: usize) -> Vec<BoxedStrategy<Mutation>> {
    let at = At::Stream(i);
    let subjects = t.streams[i].subjects.clone();
    let n_subjects = subjects.len();
    let mut out: Vec<BoxedStrategy<Mutation>> = vec![
        bad_name()
            .prop_map(move |n| Mutation::set(at, "name", json!(n), field(at, "name")))
            .boxed(),
        Just(Mutation::set(
            at,
            "subjects",
            json!([]),
            field(at, "subjects"),
        ))
        .boxed(),
        (bad_subject(), 0..n_subjects)
            .prop_map(move |(s, k)| {
                let mut subjects: Vec<Value> = subjects.iter().map(|s| json!(s)).collect();
                subjects[k] = json!(s);
                Mutation::set(
                    at,
                    "subjects",
                    Value::Array(subjects),
                    field(at, &format!("subjects[{k}]")),
                )
            })
            .boxed(),
        (select(vec!["max_messages", "max_bytes"]), bad_limit())
            .prop_map(move |(key, v)| Mutation::set(at, key, json!(v), field(at, key)))
            .boxed(),
        prop_oneof![Just(0i32), i32::MIN..-1]
            .prop_map(move |v| {
                Mutation::set(
                    at,
                    "max_message_size",
                    json!(v),
                    field(at, "max_message_size"),
                )
            })
            .boxed(),
        (select(vec!["max_age", "duplicate_window"]), zero_duration())
            .prop_map(move |(key, v)| Mutation::set(at, key, v, field(at, key)))
            .boxed(),
        prop_oneof![Just(0usize), 6usize..1000]
            .prop_map(move |v| Mutation::set(at, "replicas", json!(v), field(at, "replicas")))
            .boxed(),
    ];
    // Declared twice: the later one is named.
    if t.streams.len() >= 2 {
        let names: Vec<String> = t.streams.iter().map(|s| s.name.clone()).collect();
        out.push(
            select((0..t.streams.len()).filter(|&k| k != i).collect::<Vec<_>>())
                .prop_map(move |k| {
                    Mutation::set(
                        at,
                        "name",
                        json!(names[k]),
                        field(At::Stream(i.max(k)), "name"),
                    )
                    .duplicate()
                })
                .boxed(),
        );
    }
    out
}

/// Mutations of consumer `j` of `t` that make it invalid.
fn consumer_mutations(t: &Topology, j: usize) -> Vec<BoxedStrategy<Mutation>> {
    let at = At::Consumer(j);
    let spec = &t.consumers[j];
    let mut out: Vec<BoxedStrategy<Mutation>> = vec![
        (select(vec!["stream", "durable"]), bad_name())
            .prop_map(move |(key, n)| Mutation::set(at, key, json!(n), field(at, key)))
            .boxed(),
        "[ \t\n]{0,3}"
            .prop_map(move |s| Mutation::set(at, "target", json!(s), field(at, "target")))
            .boxed(),
        bad_subject()
            .prop_map(move |s| {
                Mutation::set(
                    at,
                    "filter_subjects",
                    json!([s]),
                    field(at, "filter_subjects[0]"),
                )
            })
            .boxed(),
        // A valid filter that the stream does not capture.
        token()
            .prop_map(move |s| {
                Mutation::set(
                    at,
                    "filter_subjects",
                    json!([format!("elsewhere.{s}")]),
                    field(at, "filter_subjects[0]"),
                )
            })
            .boxed(),
        (select(vec!["ack_wait", "max_hold"]), zero_duration())
            .prop_map(move |(key, v)| Mutation::set(at, key, v, field(at, key)))
            .boxed(),
        (select(vec!["max_deliver", "max_ack_pending"]), bad_limit())
            .prop_map(move |(key, v)| Mutation::set(at, key, json!(v), field(at, key)))
            .boxed(),
        // No more deliveries than backoff entries.
        (1usize..5, 0usize..3)
            .prop_map(move |(max_deliver, more)| Mutation {
                at,
                edits: vec![
                    ("max_deliver".into(), Some(json!(max_deliver))),
                    (
                        "backoff".into(),
                        Some(json!(vec!["1s"; max_deliver + more])),
                    ),
                ],
                expect: field(at, "backoff"),
                duplicate: false,
            })
            .boxed(),
        (0usize..3, zero_duration())
            .prop_map(move |(k, zero)| {
                let mut backoff = vec![json!("1s"); k + 1];
                backoff[k] = zero;
                Mutation {
                    at,
                    edits: vec![
                        ("max_deliver".into(), None),
                        ("backoff".into(), Some(Value::Array(backoff))),
                    ],
                    expect: field(at, &format!("backoff[{k}]")),
                    duplicate: false,
                }
            })
            .boxed(),
        Just(Mutation::set(
            at,
            "start",
            json!({"sequence": 0}),
            field(at, "start"),
        ))
        .boxed(),
    ];
    match spec.mode() {
        ConsumerMode::Pull => {
            out.push(
                (
                    select(vec!["max_batch", "max_waiting"]),
                    prop_oneof![Just(0i64), i64::MIN..0],
                )
                    .prop_map(move |(key, v)| Mutation::set(at, key, json!(v), field(at, key)))
                    .boxed(),
            );
            out.push(
                zero_duration()
                    .prop_map(move |v| {
                        Mutation::set(at, "max_expires", v, field(at, "max_expires"))
                    })
                    .boxed(),
            );
            out.push(
                select(vec![
                    ("deliver_subject", json!("deliver.x")),
                    ("deliver_group", json!("group")),
                    ("max_in_flight", json!(1)),
                    ("idle_heartbeat", json!("1s")),
                ])
                .prop_map(move |(key, v)| Mutation::set(at, key, v, field(at, key)))
                .boxed(),
            );
        }
        ConsumerMode::Push => {
            out.push(
                select(vec![
                    ("max_batch", json!(10)),
                    ("max_expires", json!("1s")),
                    ("max_waiting", json!(5)),
                ])
                .prop_map(move |(key, v)| Mutation::set(at, key, v, field(at, key)))
                .boxed(),
            );
            out.push(
                prop_oneof![
                    bad_subject(),
                    Just("deliver.*".to_string()),
                    Just("deliver.>".to_string()),
                ]
                .prop_map(move |s| {
                    Mutation::set(
                        at,
                        "deliver_subject",
                        json!(s),
                        field(at, "deliver_subject"),
                    )
                })
                .boxed(),
            );
            out.push(
                bad_name()
                    .prop_map(move |s| {
                        Mutation::set(at, "deliver_group", json!(s), field(at, "deliver_group"))
                    })
                    .boxed(),
            );
            out.push(
                Just(Mutation::set(
                    at,
                    "max_in_flight",
                    json!(0),
                    field(at, "max_in_flight"),
                ))
                .boxed(),
            );
            // The window above max_ack_pending.
            out.push(
                (1i64..10_000, 1i64..10_000)
                    .prop_map(move |(pending, above)| Mutation {
                        at,
                        edits: vec![
                            ("max_ack_pending".into(), Some(json!(pending))),
                            ("max_in_flight".into(), Some(json!(pending + above))),
                        ],
                        expect: field(at, "max_in_flight"),
                        duplicate: false,
                    })
                    .boxed(),
            );
            out.push(
                prop_oneof![
                    zero_duration(),
                    (1u64..100).prop_map(|ms| json!(format!("{ms}ms"))),
                ]
                .prop_map(move |v| {
                    Mutation::set(at, "idle_heartbeat", v, field(at, "idle_heartbeat"))
                })
                .boxed(),
            );
        }
    }
    // Declared twice: the later one is named.
    if t.consumers.len() >= 2 {
        let names: Vec<String> = t.consumers.iter().map(|c| c.durable.clone()).collect();
        out.push(
            select(
                (0..t.consumers.len())
                    .filter(|&k| k != j)
                    .collect::<Vec<_>>(),
            )
            .prop_map(move |k| {
                Mutation::set(
                    at,
                    "durable",
                    json!(names[k]),
                    field(At::Consumer(j.max(k)), "durable"),
                )
                .duplicate()
            })
            .boxed(),
        );
    }
    out
}

/// Mutations that fail parsing: unknown fields, wrong types, missing
/// required fields.
fn parse_mutations(t: &Topology) -> Vec<BoxedStrategy<Mutation>> {
    let mut places = vec![At::Root];
    places.extend((0..t.streams.len()).map(At::Stream));
    places.extend((0..t.consumers.len()).map(At::Consumer));
    let mut out = vec![
        (select(places), unknown_key(), any_value())
            .prop_map(|(at, key, v)| Mutation::set(at, &key, v, Expect::Unknown(key.clone())))
            .boxed(),
        select(vec![
            ("streams", json!({"name": "S"})),
            ("streams", json!("S")),
            ("consumers", json!(1)),
        ])
        .prop_map(|(key, v)| Mutation::set(At::Root, key, v, Expect::ParseError))
        .boxed(),
    ];
    if !t.streams.is_empty() {
        let n = t.streams.len();
        out.push(
            (
                0..n,
                select(vec![
                    ("name", Some(json!(5))),
                    ("name", None),
                    ("subjects", Some(json!("s.>"))),
                    ("subjects", Some(json!([1, 2]))),
                    ("subjects", None),
                    ("max_messages", Some(json!("10"))),
                    ("max_messages", Some(json!(1.5))),
                    ("max_age", Some(json!(30))),
                    ("max_age", Some(json!("thirty seconds"))),
                    ("max_age", Some(json!("-1s"))),
                    ("max_age", Some(json!("99999999999999999999s"))),
                    ("storage", Some(json!("disk"))),
                    ("retention", Some(json!("workqueue"))),
                    ("discard", Some(json!(true))),
                    ("replicas", Some(json!(-1))),
                    ("max_message_size", Some(json!(i64::from(i32::MAX) + 1))),
                    ("description", Some(json!(["a"]))),
                ]),
            )
                .prop_map(|(i, (key, v))| Mutation {
                    at: At::Stream(i),
                    edits: vec![(key.to_string(), v)],
                    expect: Expect::ParseError,
                    duplicate: false,
                })
                .boxed(),
        );
    }
    if !t.consumers.is_empty() {
        let n = t.consumers.len();
        out.push(
            (
                0..n,
                select(vec![
                    ("stream", None),
                    ("durable", None),
                    ("durable", Some(json!(false))),
                    ("mode", None),
                    ("mode", Some(json!("both"))),
                    ("mode", Some(json!("PULL"))),
                    ("target", None),
                    ("filter_subjects", Some(json!("s.x"))),
                    ("filter_subjects", Some(json!([1]))),
                    ("start", Some(json!("sometimes"))),
                    ("start", Some(json!({"sequence": -1}))),
                    ("start", Some(json!({"sequence": "1"}))),
                    ("start", Some(json!({"seq": 1}))),
                    ("start", Some(json!({"sequence": 1, "also": 2}))),
                    ("ack_wait", Some(json!(30))),
                    ("ack_wait", Some(json!("30"))),
                    ("ack_wait", Some(json!("thirty"))),
                    ("ack_wait", Some(json!("-5s"))),
                    ("backoff", Some(json!("1s"))),
                    ("backoff", Some(json!(["1s", 2]))),
                    ("max_deliver", Some(json!("3"))),
                    ("max_in_flight", Some(json!(-1))),
                    ("max_in_flight", Some(json!(1.5))),
                    ("restart", Some(json!("always"))),
                ]),
            )
                .prop_map(|(j, (key, v))| Mutation {
                    at: At::Consumer(j),
                    edits: vec![(key.to_string(), v)],
                    expect: Expect::ParseError,
                    duplicate: false,
                })
                .boxed(),
        );
    }
    out
}

/// Every mutation that applies to `t`.
fn mutations(t: &Topology) -> Vec<BoxedStrategy<Mutation>> {
    let mut all = parse_mutations(t);
    for i in 0..t.streams.len() {
        all.extend(stream_mutations(t, i));
    }
    for j in 0..t.consumers.len() {
        all.extend(consumer_mutations(t, j));
    }
    all
}

fn one_of(options: Vec<BoxedStrategy<Mutation>>) -> BoxedStrategy<Mutation> {
    let n = options.len();
    (0..n).prop_flat_map(move |k| options[k].clone()).boxed()
}

/// A valid topology and one mutation of it.
fn mutated() -> impl Strategy<Value = (Topology, Mutation)> {
    topology().prop_flat_map(|t| {
        let options = mutations(&t);
        (Just(t), one_of(options))
    })
}

/// A valid topology and several mutations of it.
fn mutated_many() -> impl Strategy<Value = (Topology, Vec<Mutation>)> {
    topology().prop_flat_map(|t| {
        let options = mutations(&t);
        (Just(t), prop::collection::vec(one_of(options), 1..6))
    })
}

/// The topology's JSON tree, for mutating.
fn tree(t: &Topology) -> Value {
    serde_json::to_value(t).expect("a topology serializes to JSON")
}

/// The tree as TOML and as JSON text.
fn render(tree: &Value) -> (String, String) {
    let toml_text = toml::to_string(tree).expect("the tree serializes to TOML");
    let json_text = serde_json::to_string_pretty(tree).expect("the tree serializes to JSON");
    (toml_text, json_text)
}

/// Checks that loading reported what the mutation expects.
fn check_expected(
    text: &str,
    result: &Result<Topology, Error>,
    expect: &Expect,
) -> Result<(), TestCaseError> {
    let Err(err) = result else {
        return Err(TestCaseError::fail(format!(
            "accepted {expect:?} in {text}"
        )));
    };
    let errors = err.validation().expect("checked by check_outcome");
    match expect {
        Expect::Field(name) => prop_assert!(
            errors.has_field(name),
            "expected an error naming `{name}`, got: {err}\nin: {text}"
        ),
        Expect::Unknown(name) => {
            prop_assert!(
                errors.has_field(name),
                "expected an unknown-field error naming `{name}`, got: {err}\nin: {text}"
            );
            prop_assert!(
                err.to_string().contains("line"),
                "no line in {err}\nin: {text}"
            );
        }
        Expect::ParseError => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------

/// Fragments that random topology-ish text is made of.
fn toml_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "[[streams]]\n",
            "[[consumers]]\n",
            "[streams]\n",
            "[consumers.start]\n",
            "name = \"S\"\n",
            "subjects = [\"s.>\"]\n",
            "stream = \"S\"\n",
            "durable = \"d\"\n",
            "mode = \"pull\"\n",
            "mode = \"push\"\n",
            "target = \"t\"\n",
            "ack_wait = \"0s\"\n",
            "ack_wait = \"30s\"\n",
            "max_in_flight = 5000\n",
            "max_in_flight = -1\n",
            "start = { sequence = 0 }\n",
            "backoff = [\"1s\", \"0s\"]\n",
            "filter_subjects = [\"x.y\"]\n",
            "\"\" = 1\n",
            "=",
            "\"",
            "'''",
            "[",
            "]",
            "{",
            "}",
            ",",
            "\n",
            "#",
            "\\u0000",
            "9223372036854775808",
            "1e400",
            "nan",
            "1979-05-27T07:32:00Z",
        ])
        .prop_map(str::to_string),
        ".{0,8}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

fn json_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        select(vec![
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "\"streams\":",
            "\"consumers\":",
            "\"name\":\"S\"",
            "\"subjects\":[\"s.>\"]",
            "\"stream\":\"S\"",
            "\"durable\":\"d\"",
            "\"mode\":\"push\"",
            "\"target\":\"t\"",
            "\"max_in_flight\":18446744073709551615",
            "\"ack_wait\":\"0s\"",
            "\"start\":{\"sequence\":0}",
            "\"\":1",
            "null",
            "true",
            "-0",
            "1e400",
            "\"\\ud800\"",
            "\"\\u0000\"",
        ])
        .prop_map(str::to_string),
        ".{0,8}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_text_never_panics(text in ".{0,400}") {
        load_both(&text, &text)?;
    }

    #[test]
    fn random_bytes_read_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        load_both(&text, &text)?;
    }

    #[test]
    fn token_soup_never_panics(toml_text in toml_soup(), json_text in json_soup()) {
        load_both(&toml_text, &json_text)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_valid_topology_loads_and_round_trips(t in topology()) {
        prop_assert!(t.validate().is_ok(), "generated invalid: {:?}", t.validate());
        let toml_text = t.to_toml_string().expect("serializes to TOML");
        let from_toml = Topology::from_toml_str(&toml_text);
        prop_assert_eq!(from_toml.as_ref().ok(), Some(&t), "TOML: {:?}\n{}", from_toml, toml_text);
        let json_text = serde_json::to_string(&t).expect("serializes to JSON");
        let from_json = Topology::from_json_str(&json_text);
        prop_assert_eq!(from_json.as_ref().ok(), Some(&t), "JSON: {:?}\n{}", from_json, json_text);
        // And through the generic trees, as another program would write it.
        let (toml_text, json_text) = render(&tree(&t));
        prop_assert_eq!(Topology::from_toml_str(&toml_text).ok(), Some(t.clone()));
        prop_assert_eq!(Topology::from_json_str(&json_text).ok(), Some(t));
    }

    #[test]
    fn one_mutation_is_reported_under_its_field((t, mutation) in mutated()) {
        let mut tree = tree(&t);
        mutation.apply(&mut tree);
        let (toml_text, json_text) = render(&tree);
        let from_toml = Topology::from_toml_str(&toml_text);
        let from_json = Topology::from_json_str(&json_text);
        check_outcome(&toml_text, &from_toml)?;
        check_outcome(&json_text, &from_json)?;
        check_expected(&toml_text, &from_toml, &mutation.expect)?;
        check_expected(&json_text, &from_json, &mutation.expect)?;
        // Both formats agree on what was wrong.
        if let (Err(a), Err(b)) = (&from_toml, &from_json)
            && let (Some(a), Some(b)) = (a.validation(), b.validation())
            && !matches!(mutation.expect, Expect::ParseError)
        {
            let fields = |e: &ractor_jetstream::ValidationErrors| {
                e.errors().iter().map(|f| f.field.clone()).collect::<Vec<_>>()
            };
            prop_assert_eq!(fields(a), fields(b));
        }
    }

    #[test]
    fn many_mutations_are_rejected_without_panicking((t, mutations) in mutated_many()) {
        let mut tree = tree(&t);
        for m in &mutations {
            m.apply(&mut tree);
        }
        let (toml_text, json_text) = render(&tree);
        let from_toml = Topology::from_toml_str(&toml_text);
        let from_json = Topology::from_json_str(&json_text);
        check_outcome(&toml_text, &from_toml)?;
        check_outcome(&json_text, &from_json)?;
        // Every mutation breaks something that no other one repairs, except
        // two duplicates, which may swap two names.
        if mutations.iter().filter(|m| m.duplicate).count() <= 1 {
            prop_assert!(from_toml.is_err(), "accepted {mutations:?}:\n{toml_text}");
            prop_assert!(from_json.is_err(), "accepted {mutations:?}:\n{json_text}");
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic: each kind of invalid field, by its exact name
// ---------------------------------------------------------------------------

/// A valid topology with one push and one pull consumer.
fn base() -> Topology {
    Topology::new()
        .stream(StreamSpec::new("ORDERS", ["orders.>"]))
        .stream(StreamSpec::new("PAYMENTS", ["payments.*"]))
        .consumer(ConsumerSpec::pull("ORDERS", "billing", "worker").filter(["orders.eu"]))
        .consumer(ConsumerSpec::push("ORDERS", "audit", "worker"))
}

/// Asserts that `t` is rejected naming `expected`, by `validate` and by both
/// loaders (the topology written as TOML and as JSON).
fn assert_rejected(what: &str, t: &Topology, expected: &str) {
    let err = t
        .validate()
        .expect_err(&format!("{what}: validate accepts it"));
    let errors = err.validation().expect("a validation error");
    assert!(
        errors.has_field(expected),
        "{what}: expected `{expected}`, got: {err}"
    );
    assert!(errors.errors().iter().all(|e| !e.field.is_empty()));
    let json_text = serde_json::to_string(t).expect("to JSON");
    let err = Topology::from_json_str(&json_text).expect_err(&format!("{what}: JSON accepted"));
    assert!(
        err.validation().is_some_and(|e| e.has_field(expected)),
        "{what} (JSON): expected `{expected}`, got: {err}"
    );
    if let Ok(toml_text) = t.to_toml_string() {
        let err = Topology::from_toml_str(&toml_text).expect_err(&format!("{what}: TOML accepted"));
        assert!(
            err.validation().is_some_and(|e| e.has_field(expected)),
            "{what} (TOML): expected `{expected}`, got: {err}"
        );
    }
}

#[test]
fn base_topology_is_valid() {
    base().validate().expect("the base topology is valid");
}

#[test]
fn each_invalid_stream_field_is_named() {
    type Edit = fn(&mut StreamSpec);
    #[rustfmt::skip]
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("empty name", |s| s.name = String::new(), "streams[1].name"),
        ("dot in name", |s| s.name = "PAY.MENTS".into(), "streams[1].name"),
        ("star in name", |s| s.name = "PAY*".into(), "streams[1].name"),
        ("gt in name", |s| s.name = "PAY>".into(), "streams[1].name"),
        ("space in name", |s| s.name = "PAY MENTS".into(), "streams[1].name"),
        ("tab in name", |s| s.name = "PAY\tMENTS".into(), "streams[1].name"),
        ("slash in name", |s| s.name = "PAY/MENTS".into(), "streams[1].name"),
        ("backslash in name", |s| s.name = "PAY\\MENTS".into(), "streams[1].name"),
        ("NUL in name", |s| s.name = "PAY\0".into(), "streams[1].name"),
        ("256-char name", |s| s.name = "P".repeat(256), "streams[1].name"),
        ("256 non-ASCII chars", |s| s.name = "é".repeat(256), "streams[1].name"),
        ("same name twice", |s| s.name = "ORDERS".into(), "streams[1].name"),
        ("no subjects", |s| s.subjects.clear(), "streams[1].subjects"),
        ("empty subject", |s| s.subjects = vec!["payments.*".into(), String::new()], "streams[1].subjects[1]"),
        ("empty token", |s| s.subjects = vec!["payments..x".into()], "streams[1].subjects[0]"),
        ("trailing dot", |s| s.subjects = vec!["payments.".into()], "streams[1].subjects[0]"),
        ("gt not last", |s| s.subjects = vec!["payments.>.x".into()], "streams[1].subjects[0]"),
        ("partial wildcard", |s| s.subjects = vec!["payments.a*".into()], "streams[1].subjects[0]"),
        ("space in subject", |s| s.subjects = vec!["pay ments".into()], "streams[1].subjects[0]"),
        ("zero max_messages", |s| s.max_messages = Some(0), "streams[1].max_messages"),
        ("max_messages beyond i64", |s| s.max_messages = Some(i64::MAX as u64 + 1), "streams[1].max_messages"),
        ("max_bytes beyond i64", |s| s.max_bytes = Some(u64::MAX), "streams[1].max_bytes"),
        ("zero max_message_size", |s| s.max_message_size = Some(0), "streams[1].max_message_size"),
        ("max_message_size beyond i32", |s| s.max_message_size = Some(i32::MAX as u64 + 1), "streams[1].max_message_size"),
        ("zero max_age", |s| s.max_age = Some(Duration::ZERO), "streams[1].max_age"),
        ("zero duplicate_window", |s| s.duplicate_window = Some(Duration::ZERO), "streams[1].duplicate_window"),
        ("zero replicas", |s| s.replicas = Some(0), "streams[1].replicas"),
        ("six replicas", |s| s.replicas = Some(6), "streams[1].replicas"),
    ];
    for (what, edit, expected) in cases {
        let mut t = base();
        edit(&mut t.streams[1]);
        assert_rejected(what, &t, expected);
    }
}

/// The pull part of a pull spec.
fn pull(c: &mut ConsumerSpec) -> &mut PullSpec {
    match &mut c.mode {
        ModeSpec::Pull(pull) => pull,
        ModeSpec::Push(_) => panic!("{} is a push spec", c.durable),
    }
}

/// The push part of a push spec.
fn push(c: &mut ConsumerSpec) -> &mut PushSpec {
    match &mut c.mode {
        ModeSpec::Push(push) => push,
        ModeSpec::Pull(_) => panic!("{} is a pull spec", c.durable),
    }
}

/// What a spec in code cannot hold, but a file can: negative counts (the
/// old `-1` for "no limit" among them) and a setting of the other mode.
/// Each is refused by both loaders under its field.
#[test]
fn what_only_a_file_can_write_is_named() {
    // consumers[0] is pull, consumers[1] is push.
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, usize, &str, Value)> = vec![
        ("negative max_messages", "streams", 1, "max_messages", json!(-2)),
        ("-1 max_messages", "streams", 1, "max_messages", json!(-1)),
        ("min max_bytes", "streams", 1, "max_bytes", json!(i64::MIN)),
        ("negative max_message_size", "streams", 1, "max_message_size", json!(-7)),
        ("-1 max_message_size", "streams", 1, "max_message_size", json!(-1)),
        ("negative replicas", "streams", 1, "replicas", json!(-1)),
        ("max_deliver -2", "consumers", 0, "max_deliver", json!(-2)),
        ("max_deliver -1", "consumers", 0, "max_deliver", json!(-1)),
        ("negative max_ack_pending", "consumers", 1, "max_ack_pending", json!(i64::MIN)),
        ("max_ack_pending -1", "consumers", 1, "max_ack_pending", json!(-1)),
        ("negative max_batch", "consumers", 0, "max_batch", json!(-10)),
        ("negative max_waiting", "consumers", 0, "max_waiting", json!(-1)),
        ("negative max_in_flight", "consumers", 1, "max_in_flight", json!(-1)),
        ("pull with deliver_subject", "consumers", 0, "deliver_subject", json!("deliver.x")),
        ("pull with deliver_group", "consumers", 0, "deliver_group", json!("g")),
        ("pull with max_in_flight", "consumers", 0, "max_in_flight", json!(1)),
        ("pull with idle_heartbeat", "consumers", 0, "idle_heartbeat", json!("1s")),
        ("push with max_batch", "consumers", 1, "max_batch", json!(10)),
        ("push with max_expires", "consumers", 1, "max_expires", json!("1s")),
        ("push with max_waiting", "consumers", 1, "max_waiting", json!(5)),
    ];
    for (what, list, i, key, value) in cases {
        let mut tree = tree(&base());
        tree[list][i]
            .as_object_mut()
            .expect("a table")
            .insert(key.into(), value);
        let expected = format!("{list}[{i}].{key}");
        let (toml_text, json_text) = render(&tree);
        for (format, result) in [
            ("TOML", Topology::from_toml_str(&toml_text)),
            ("JSON", Topology::from_json_str(&json_text)),
        ] {
            let err = result.expect_err(&format!("{what} ({format}): accepted"));
            assert!(
                err.validation().is_some_and(|e| e.has_field(&expected)),
                "{what} ({format}): expected `{expected}`, got: {err}"
            );
        }
    }
    // The reason names the setting and the consumer's mode.
    let mut tree = tree(&base());
    tree["consumers"][0]["max_in_flight"] = json!(1);
    let err = Topology::from_json_str(&tree.to_string()).expect_err("a push setting");
    assert!(
        err.to_string()
            .contains("`max_in_flight` is a push setting; consumer `billing` is pull"),
        "{err}"
    );
}

#[test]
fn each_invalid_consumer_field_is_named() {
    type Edit = fn(&mut ConsumerSpec);
    // consumers[0] is pull, consumers[1] is push.
    #[rustfmt::skip]
    let cases: Vec<(&str, usize, Edit, &str)> = vec![
        ("bad stream name", 0, |c| c.stream = "OR DERS".into(), "consumers[0].stream"),
        ("empty durable", 0, |c| c.durable = String::new(), "consumers[0].durable"),
        ("dot in durable", 0, |c| c.durable = "bill.ing".into(), "consumers[0].durable"),
        ("gt in durable", 1, |c| c.durable = "a>".into(), "consumers[1].durable"),
        ("256-char durable", 1, |c| c.durable = "d".repeat(256), "consumers[1].durable"),
        ("durable twice", 1, |c| c.durable = "billing".into(), "consumers[1].durable"),
        ("empty target", 0, |c| c.target = String::new(), "consumers[0].target"),
        ("blank target", 0, |c| c.target = " \t".into(), "consumers[0].target"),
        ("bad filter", 0, |c| c.server.filter_subjects = vec!["orders.eu".into(), "orders..x".into()], "consumers[0].filter_subjects[1]"),
        ("filter outside stream", 0, |c| c.server.filter_subjects = vec!["payments.x".into()], "consumers[0].filter_subjects[0]"),
        ("filter wider than stream", 0, |c| c.server.filter_subjects = vec![">".into()], "consumers[0].filter_subjects[0]"),
        ("zero ack_wait", 0, |c| c.server.ack_wait = Some(Duration::ZERO), "consumers[0].ack_wait"),
        ("zero max_hold", 0, |c| c.child.max_hold = Some(Duration::ZERO), "consumers[0].max_hold"),
        ("zero max_deliver", 0, |c| c.server.max_deliver = Some(0), "consumers[0].max_deliver"),
        ("max_deliver beyond i64", 0, |c| c.server.max_deliver = Some(u64::MAX), "consumers[0].max_deliver"),
        ("zero max_ack_pending", 1, |c| c.server.max_ack_pending = Some(0), "consumers[1].max_ack_pending"),
        ("max_ack_pending beyond i64", 1, |c| c.server.max_ack_pending = Some(i64::MAX as u64 + 1), "consumers[1].max_ack_pending"),
        ("zero backoff entry", 0, |c| c.server.backoff = vec![Duration::from_secs(1), Duration::ZERO], "consumers[0].backoff[1]"),
        ("backoff as long as max_deliver", 0, |c| {
            c.server.max_deliver = Some(2);
            c.server.backoff = vec![Duration::from_secs(1); 2];
        }, "consumers[0].backoff"),
        ("start at sequence 0", 0, |c| c.server.start = StartPosition::Sequence(0), "consumers[0].start"),
        ("zero max_batch", 0, |c| pull(c).max_batch = Some(0), "consumers[0].max_batch"),
        ("zero max_waiting", 0, |c| pull(c).max_waiting = Some(0), "consumers[0].max_waiting"),
        ("zero max_expires", 0, |c| pull(c).max_expires = Some(Duration::ZERO), "consumers[0].max_expires"),
        ("wildcard deliver_subject", 1, |c| push(c).deliver_subject = Some("deliver.*".into()), "consumers[1].deliver_subject"),
        ("bad deliver_subject", 1, |c| push(c).deliver_subject = Some("deliver x".into()), "consumers[1].deliver_subject"),
        ("bad deliver_group", 1, |c| push(c).deliver_group = Some("g.1".into()), "consumers[1].deliver_group"),
        ("zero max_in_flight", 1, |c| push(c).max_in_flight = Some(0), "consumers[1].max_in_flight"),
        ("max_in_flight above max_ack_pending", 1, |c| {
            c.server.max_ack_pending = Some(100);
            push(c).max_in_flight = Some(101);
        }, "consumers[1].max_in_flight"),
        ("max_in_flight above the default max_ack_pending", 1, |c| push(c).max_in_flight = Some(1001), "consumers[1].max_in_flight"),
        ("zero idle_heartbeat", 1, |c| push(c).idle_heartbeat = Some(Duration::ZERO), "consumers[1].idle_heartbeat"),
        ("idle_heartbeat below 100ms", 1, |c| push(c).idle_heartbeat = Some(Duration::from_millis(99)), "consumers[1].idle_heartbeat"),
    ];
    for (what, j, edit, expected) in cases {
        let mut t = base();
        edit(&mut t.consumers[j]);
        assert_rejected(what, &t, expected);
    }
}

#[test]
fn limits_at_the_edge_are_accepted() {
    let mut t = base();
    t.streams[0].name = "S".repeat(255);
    // The largest counts the server stores (i64, i32 for a message size).
    t.streams[0].max_messages = Some(i64::MAX as u64);
    t.streams[0].max_bytes = Some(i64::MAX as u64);
    t.streams[0].max_message_size = Some(i32::MAX as u64);
    t.streams[0].replicas = Some(5);
    t.consumers[0].stream = "S".repeat(255);
    t.consumers[0].server.max_deliver = Some(i64::MAX as u64);
    pull(&mut t.consumers[0]).max_batch = Some(i64::MAX as u64);
    pull(&mut t.consumers[0]).max_waiting = Some(i64::MAX as u64);
    t.consumers[1].durable = "d".repeat(255);
    t.consumers[1].server.max_ack_pending = Some(i64::MAX as u64);
    // With that much pending allowed, any window goes.
    push(&mut t.consumers[1]).max_in_flight = Some(i64::MAX as u64);
    push(&mut t.consumers[1]).idle_heartbeat = Some(Duration::from_millis(100));
    t.consumers[1].stream = "S".repeat(255);
    // The child keeps a held delivery alive past ack_wait, so the longest
    // hold may be far above it.
    t.consumers[0].server.ack_wait = Some(Duration::from_secs(1));
    t.consumers[0].child.max_hold = Some(Duration::from_secs(3600));
    t.validate().expect("edge values are valid");
    let text = t.to_toml_string().expect("TOML");
    assert_eq!(Topology::from_toml_str(&text).expect("loads"), t);
}

#[test]
fn every_invalid_field_is_reported_at_once() {
    let text = r#"
        [[streams]]
        name = "BAD NAME"
        subjects = ["ok.>", "bad..subject"]
        max_age = "0s"
        replicas = 9

        [[consumers]]
        stream = "BAD NAME"
        durable = "d.1"
        mode = "push"
        target = ""
        ack_wait = "0s"
        max_in_flight = 0
        max_batch = 5
    "#;
    let err = Topology::from_toml_str(text).expect_err("invalid");
    let errors = err.validation().expect("validation");
    let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
    for expected in [
        "streams[0].name",
        "streams[0].subjects[1]",
        "streams[0].max_age",
        "streams[0].replicas",
        "consumers[0].stream",
        "consumers[0].durable",
        "consumers[0].target",
        "consumers[0].ack_wait",
        "consumers[0].max_in_flight",
        "consumers[0].max_batch",
    ] {
        assert!(
            fields.contains(&expected),
            "{expected} missing in {fields:?}"
        );
    }
    // Each entry says which value was wrong.
    assert!(errors.errors().iter().all(|e| !e.value.is_empty()), "{err}");
}

// ---------------------------------------------------------------------------
// Deterministic: unknown fields, wrong types, their positions
// ---------------------------------------------------------------------------

/// The base topology as TOML, with `line` inserted after the line that
/// holds `after`. Returns the text and the 1-based line of the insertion.
fn toml_with(after: &str, line: &str) -> (String, usize) {
    let text = base().to_toml_string().expect("TOML");
    let mut lines: Vec<&str> = text.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains(after))
        .unwrap_or_else(|| panic!("`{after}` in {text}"));
    lines.insert(at + 1, line);
    (lines.join("\n"), at + 2)
}

#[test]
fn an_unknown_toml_field_is_named_with_its_line() {
    for (after, key) in [
        ("[[streams]]", "retention_policy"),
        ("durable = \"billing\"", "ack_wiat"),
        ("durable = \"audit\"", "max_inflight"),
    ] {
        let (text, line) = toml_with(after, &format!("{key} = 1"));
        let err = Topology::from_toml_str(&text).expect_err("unknown field");
        let errors = err.validation().expect("validation");
        assert_eq!(errors.errors().len(), 1, "{err}");
        let e = &errors.errors()[0];
        assert_eq!(e.field, key, "{err}");
        assert!(
            e.reason.contains(&format!("line {line}, column 1")),
            "expected line {line} in: {err}\n{text}"
        );
    }
    // At the top level, and quoted keys with odd characters.
    let err = Topology::from_toml_str("\n\nversion = 2\n").expect_err("unknown");
    assert!(err.validation().is_some_and(|e| e.has_field("version")));
    assert!(err.to_string().contains("line 3"), "{err}");
    let (text, line) = toml_with("[[consumers]]", "\"ack wait\" = \"1s\"");
    let err = Topology::from_toml_str(&text).expect_err("unknown");
    assert!(
        err.validation().is_some_and(|e| e.has_field("ack wait")),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("line {line}")), "{err}");
}

/// The 1-based line and column of the first occurrence of `needle`.
fn line_col(text: &str, needle: &str) -> (usize, usize) {
    let offset = text.find(needle).expect("needle");
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn an_unknown_json_field_is_named_with_its_line_and_column() {
    let mut tree = tree(&base());
    tree["consumers"][1]
        .as_object_mut()
        .expect("object")
        .insert("max_inflight".into(), json!(5));
    let text = serde_json::to_string_pretty(&tree).expect("JSON");
    let err = Topology::from_json_str(&text).expect_err("unknown field");
    let errors = err.validation().expect("validation");
    assert_eq!(errors.errors().len(), 1, "{err}");
    assert_eq!(errors.errors()[0].field, "max_inflight", "{err}");
    // serde_json points just past the key's closing quote.
    let (line, col) = line_col(&text, "\"max_inflight\"");
    let end = col + "\"max_inflight\"".len() - 1;
    assert!(
        err.to_string()
            .contains(&format!("at line {line} column {end}")),
        "expected line {line} column {end} in: {err}\n{text}"
    );

    // On one line, the column tells the place apart.
    let text = r#"{"streams": [{"name": "S", "subjects": ["s.>"], "colour": "red"}]}"#;
    let err = Topology::from_json_str(text).expect_err("unknown field");
    assert!(err.validation().is_some_and(|e| e.has_field("colour")));
    let (line, col) = line_col(text, "\"colour\"");
    let end = col + "\"colour\"".len() - 1;
    assert!(
        err.to_string()
            .contains(&format!("at line {line} column {end}")),
        "expected line {line} column {end} in: {err}"
    );
}

#[test]
fn wrong_types_and_missing_fields_are_errors_that_name_a_field() {
    let cases = [
        r#"{"streams": {"name": "S"}}"#,
        r#"[[{"name": "S", "subjects": ["s..x"]}]]"#,
        r#"{"streams": [{"name": 5, "subjects": ["s.>"]}]}"#,
        r#"{"streams": [{"subjects": ["s.>"]}]}"#,
        r#"{"streams": [{"name": "S", "subjects": ["s.>"], "replicas": -1}]}"#,
        r#"{"streams": [{"name": "S", "subjects": ["s.>"], "max_age": 30}]}"#,
        r#"{"streams": [{"name": "S", "subjects": ["s.>"], "max_age": "-1s"}]}"#,
        r#"{"streams": [{"name": "S", "subjects": ["s.>"], "max_message_size": 2147483648}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "mode": "both", "target": "t"}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "target": "t"}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "mode": "push", "target": "t", "max_in_flight": -1}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "mode": "pull", "target": "t", "start": {"sequence": -1}}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "mode": "pull", "target": "t", "ack_wait": "thirty"}]}"#,
        r#"{"consumers": [{"stream": "S", "durable": "d", "mode": "pull", "target": "t", "backoff": "1s"}]}"#,
        "null",
        "",
        "{",
        "\"\\ud800\"",
    ];
    for text in cases {
        let err = Topology::from_json_str(text).expect_err(text);
        let errors = err.validation().expect("validation");
        assert!(
            errors.errors().iter().all(|e| !e.field.is_empty()),
            "{text}: {err}"
        );
    }
    let toml_cases = [
        "streams = 1",
        "[[streams]]\nname = 5\nsubjects = [\"s.>\"]",
        "[[streams]]\nname = \"S\"\nsubjects = \"s.>\"",
        "[[streams]]\nname = \"S\"\nsubjects = [\"s.>\"]\nreplicas = -1",
        "[[consumers]]\nstream = \"S\"\ndurable = \"d\"\nmode = \"pull\"\ntarget = \"t\"\nstart = { sequence = -1 }",
        "[[consumers]]\nstream = \"S\"\ndurable = \"d\"\nmode = \"pull\"\ntarget = \"t\"\nack_wait = 30",
        "[[consumers]]\nstream = \"S\"\ndurable = \"d\"\nmode = \"pull\"\ntarget = \"t\"\nmax_deliver = 9223372036854775808",
        "[[streams]]\nname = \"S\"\nname = \"T\"\nsubjects = [\"s.>\"]",
        "a = ",
        "[[streams]",
    ];
    for text in toml_cases {
        let err = Topology::from_toml_str(text).expect_err(text);
        let errors = err.validation().expect("validation");
        assert!(
            errors.errors().iter().all(|e| !e.field.is_empty()),
            "{text}: {err}"
        );
    }
}

/// KNOWN BUG: the name of an unknown field is cut out of serde's "unknown
/// field `NAME`" message at the first backtick, so an empty key is reported
/// with an empty field name, and a key holding a backtick under a truncated
/// one. Minimal inputs: JSON `{"": 0}`, TOML `"" = 0`; JSON ``{"a`b": 0}``
/// (reported as `a`).
#[test]
fn unknown_keys_are_named_exactly() {
    for (key, err) in [
        ("", Topology::from_json_str(r#"{"": 0}"#)),
        ("", Topology::from_toml_str(r#""" = 0"#)),
        ("a`b", Topology::from_json_str(r#"{"a`b": 0}"#)),
        ("a`b", Topology::from_toml_str(r#""a`b" = 0"#)),
    ] {
        let err = err.expect_err("unknown field");
        let errors = err.validation().expect("validation");
        assert!(
            errors.errors().iter().all(|e| !e.field.is_empty()),
            "an error names no field: {errors:?}"
        );
        if !key.is_empty() {
            assert!(errors.has_field(key), "{key:?} not named: {errors:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Deterministic: round trips and the example file
// ---------------------------------------------------------------------------

/// Every field set, with values that are awkward to write.
fn full() -> Topology {
    Topology::new()
        .stream(StreamSpec {
            name: "ORDERS-é_1".into(),
            subjects: vec!["orders.>".into(), "legacy.*.orders".into()],
            storage: Some(Storage::Memory),
            retention: Some(Retention::WorkQueue),
            max_messages: Some(i64::MAX as u64),
            max_bytes: Some(1),
            max_age: Some(Duration::new(86_400 * 400, 1)),
            max_message_size: Some(i32::MAX as u64),
            discard: Some(Discard::New),
            replicas: Some(3),
            duplicate_window: Some(Duration::from_millis(1500)),
            description: Some("line one\nline \"two\"\t'three' \\ ☕ \u{0}".into()),
        })
        .consumer(ConsumerSpec {
            stream: "ORDERS-é_1".into(),
            durable: "billing".into(),
            target: "worker".into(),
            mode: ModeSpec::Pull(PullSpec {
                max_batch: Some(i64::MAX as u64),
                max_expires: Some(Duration::from_secs(30)),
                max_waiting: Some(1),
                ..PullSpec::default()
            }),
            server: ServerSettings {
                filter_subjects: vec!["orders.eu".into(), "legacy.*.orders".into()],
                start: StartPosition::Sequence(i64::MAX as u64),
                ack_wait: Some(Duration::from_secs(45)),
                max_deliver: Some(10),
                max_ack_pending: Some(i64::MAX as u64),
                backoff: vec![
                    Duration::from_millis(250),
                    Duration::from_secs(5),
                    Duration::new(3600, 999_999_999),
                ],
                description: Some(String::new()),
            },
            child: ChildSettings {
                max_hold: Some(Duration::from_nanos(44_999_999_999)),
                restart: RestartKind::Transient,
                dead_letter_subject: Some("dead.billing".into()),
                workers: Some(8),
                key: Some(ractor_jetstream::KeySpec::Header("Nats-Key".into())),
                confirm_acks: true,
                info_interval: Some(Duration::from_millis(1500)),
                advisories: true,
            },
        })
        .consumer(
            ConsumerSpec::new(
                "ORDERS-é_1",
                "audit",
                "worker",
                PushSpec::default()
                    .deliver_subject("deliver.audit")
                    .deliver_group("auditors")
                    .window(1000)
                    .idle_heartbeat(Duration::from_millis(100)),
            )
            .start(StartPosition::LastPerSubject)
            .restart(RestartKind::Temporary),
        )
        .consumer(ConsumerSpec::push(
            "ELSEWHERE",
            "undeclared-stream",
            "worker",
        ))
}

#[test]
fn a_full_topology_round_trips_through_toml_and_json() {
    let t = full();
    t.validate().expect("valid");

    let toml_text = t.to_toml_string().expect("TOML");
    assert_eq!(Topology::from_toml_str(&toml_text).expect("TOML loads"), t);
    // Written again, the text is the same.
    assert_eq!(
        Topology::from_toml_str(&toml_text)
            .and_then(|again| again.to_toml_string())
            .expect("TOML again"),
        toml_text
    );

    let json_text = serde_json::to_string_pretty(&t).expect("JSON");
    assert_eq!(Topology::from_json_str(&json_text).expect("JSON loads"), t);
    let value: Value = serde_json::from_str(&json_text).expect("JSON value");
    assert_eq!(value, tree(&t));

    // Across formats: TOML -> topology -> JSON -> topology.
    let via = Topology::from_json_str(
        &serde_json::to_string(&Topology::from_toml_str(&toml_text).expect("TOML")).expect("JSON"),
    )
    .expect("JSON loads");
    assert_eq!(via, t);

    // Defaults are left out when written.
    let minimal = Topology::new().stream(StreamSpec::new("S", ["s.>"]));
    let text = minimal.to_toml_string().expect("TOML");
    assert_eq!(
        text.trim(),
        "consumers = []\n\n[[streams]]\nname = \"S\"\nsubjects = [\"s.>\"]"
    );
    assert_eq!(Topology::from_toml_str(&text).expect("loads"), minimal);
    assert_eq!(Topology::from_toml_str("").expect("empty"), Topology::new());
    assert_eq!(
        Topology::from_json_str("{}").expect("empty"),
        Topology::new()
    );
}

#[test]
fn integers_beyond_i64_round_trip() {
    // TOML integers are i64 by the spec; the toml crate reads and writes
    // u64 all the same, so a start sequence up to u64::MAX survives.
    let t = Topology::new()
        .stream(StreamSpec::new("S", ["s.>"]))
        .consumer(ConsumerSpec::pull("S", "d", "t").start(StartPosition::Sequence(u64::MAX)));
    t.validate().expect("valid");
    let json_text = serde_json::to_string(&t).expect("JSON");
    assert_eq!(Topology::from_json_str(&json_text).expect("JSON loads"), t);
    let toml_text = t.to_toml_string().expect("TOML");
    assert_eq!(Topology::from_toml_str(&toml_text).expect("TOML loads"), t);
}

/// A window beyond `i64::MAX` is still above `max_ack_pending` (default
/// 1000): counts are compared as `u64`, never wrapped. (Once a known bug,
/// when the window was compared as `window as i64`.)
#[test]
fn a_window_beyond_i64_is_above_max_ack_pending() {
    let json_text = r#"{"consumers":[{"stream":"S","durable":"d","mode":"push","target":"t","max_in_flight":9223372036854775808}]}"#;
    let err = Topology::from_json_str(json_text).expect_err("a window of 2^63 is above 1000");
    assert!(
        err.validation()
            .is_some_and(|e| e.has_field("consumers[0].max_in_flight")),
        "{err}"
    );
    let toml_text = "[[consumers]]\nstream = \"S\"\ndurable = \"d\"\nmode = \"push\"\ntarget = \"t\"\nmax_in_flight = 18446744073709551615\n";
    let err = Topology::from_toml_str(toml_text).expect_err("a window of 2^64-1 is above 1000");
    assert!(
        err.validation()
            .is_some_and(|e| e.has_field("consumers[0].max_in_flight")),
        "{err}"
    );
}

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/topology.toml")
}

#[test]
fn the_example_topology_loads_and_round_trips() {
    let t = Topology::from_path(example_path()).expect("examples/topology.toml loads");
    let text = std::fs::read_to_string(example_path()).expect("read");
    assert_eq!(Topology::from_toml_str(&text).expect("from_toml_str"), t);

    assert_eq!(t.streams.len(), 1);
    assert_eq!(t.streams[0].name, "QUICKSTART_ORDERS");
    assert_eq!(t.streams[0].max_age, Some(Duration::from_secs(3600)));
    assert_eq!(
        t.streams[0].duplicate_window,
        Some(Duration::from_secs(120))
    );
    let modes: Vec<(&str, ConsumerMode)> = t
        .consumers
        .iter()
        .map(|c| (c.durable.as_str(), c.mode()))
        .collect();
    assert_eq!(
        modes,
        [
            ("fulfilment", ConsumerMode::Pull),
            ("audit", ConsumerMode::Push)
        ]
    );
    assert_eq!(t.consumers[0].child.max_hold, Some(Duration::from_secs(20)));
    assert_eq!(
        t.consumers[1].mode.as_push().and_then(|p| p.max_in_flight),
        Some(128)
    );

    let toml_text = t.to_toml_string().expect("TOML");
    assert_eq!(
        Topology::from_toml_str(&toml_text).expect("TOML round trip"),
        t
    );
    let json_text = serde_json::to_string_pretty(&t).expect("JSON");
    assert_eq!(
        Topology::from_json_str(&json_text).expect("JSON round trip"),
        t
    );

    // And as a .json file through from_path.
    let dir = tempfile::tempdir().expect("tempdir");
    let json_path = dir.path().join("topology.json");
    std::fs::write(&json_path, &json_text).expect("write");
    assert_eq!(Topology::from_path(&json_path).expect("from .json path"), t);

    // An unknown field in the example's own text names the field and line.
    let (line, _) = line_col(&text, "ack_wait = \"30s\"");
    let broken = text.replacen("ack_wait = \"30s\"", "ack_wiat = \"30s\"", 1);
    let err = Topology::from_toml_str(&broken).expect_err("unknown field");
    assert!(
        err.validation().is_some_and(|e| e.has_field("ack_wiat")),
        "{err}"
    );
    assert!(err.to_string().contains(&format!("line {line}")), "{err}");
}

#[test]
fn a_missing_or_unreadable_file_names_the_path() {
    let err = Topology::from_path("/nonexistent/topology.toml").expect_err("missing");
    assert!(
        err.validation().is_some_and(|e| e.has_field("path")),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bytes.toml");
    std::fs::write(&path, [0xff, 0xfe, 0x00]).expect("write");
    let err = Topology::from_path(&path).expect_err("not UTF-8");
    assert!(
        err.validation()
            .is_some_and(|e| e.errors().iter().all(|f| !f.field.is_empty())),
        "{err}"
    );
}

#[test]
fn topology_fuzz_seeds_hold_the_contract() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("crates/ractor-jetstream/fuzz/seeds/topology");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed directory") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read seed");
        let text = String::from_utf8_lossy(&bytes);
        load_both(&text, &text).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
        seen += 1;
    }
    assert!(seen > 0, "no seeds in {}", dir.display());
}
