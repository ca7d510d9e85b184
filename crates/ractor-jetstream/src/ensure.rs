//! Making streams and durable consumers exist on the server, and mapping
//! the server's errors.
//!
//! Streams: a missing stream is created; an existing one is reused when it
//! matches, updated when the difference is one the server allows in place,
//! and otherwise left alone with an [`Error::StreamConflict`] naming the
//! fields. A user's stream is never deleted or replaced.
//!
//! Consumers: a missing durable is created from its spec; an existing one is
//! bound by name, after checking its mode (push or pull). Fields the spec
//! sets that differ are updated when the server allows it. A bound
//! consumer keeps its position: its start position is never reset. A create
//! that loses a race with another process binds to what the other created.
//! A push consumer gets flow control and idle heartbeats, unless it has a
//! queue group (`deliver_group`), which gets neither.
//!
//! All JetStream API calls go through one function, so every failure is
//! classified the same way into a [`ServerErrorKind`].
//!
//! Why not async-nats' own calls (`get_or_create_stream`,
//! `create_consumer_strict_on_stream`, `update_consumer_on_stream`, ...):
//! each request here is raced against the connection's permission reports
//! for its own API subject, which the caller must know (otherwise a refused
//! request only times out), and every answer, whichever call it came from,
//! goes through one classification into [`ServerErrorKind`]; those calls
//! hide the subject and return a different error type each. The requests
//! are `js.request` on the documented API subjects, with async-nats' own
//! config and info types, so nothing of the wire format is written here.

use async_nats::jetstream::{self, consumer, stream};
use serde::{Serialize, de::DeserializeOwned};

use crate::connection::Connection;
use crate::error::{Error, ServerErrorKind};
use crate::spec::{ConsumerMode, ConsumerSpec, StreamSpec};

mod reconcile;

use reconcile::reconcile;

/// What [`ensure_stream`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamAction {
    /// The stream did not exist and was created.
    Created,
    /// The stream existed and these fields were updated in place.
    Updated(Vec<String>),
    /// The stream existed and matched the spec.
    Unchanged,
}

/// What [`ensure_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumerAction {
    /// The consumer did not exist and was created.
    Created,
    /// The consumer existed and these fields were updated in place.
    Updated(Vec<String>),
    /// The consumer existed and was bound as it is.
    Bound,
}

// Server error codes (see nats-server's `server/errors.json`) that the
// client library does not name.
const CONSUMER_ALREADY_EXISTS: u64 = 10148;
const CONSUMER_DOES_NOT_EXIST: u64 = 10149;

/// Sends one JetStream API request (`subject` without the `$JS.API.`
/// prefix) and classifies any failure. `op` describes the operation for the
/// error message.
///
/// On a [`Connection`] that collects permission reports (one made by
/// `connect`), a permission violation that the server reports for this
/// request (the publish to the API subject, or the subscription its reply
/// needs) ends it at once with
/// [`ServerErrorKind::PermissionDenied`]; otherwise it would only time out.
pub(crate) async fn api_request<T, V>(
    conn: &Connection,
    op: &str,
    subject: String,
    payload: &T,
) -> Result<V, Error>
where
    T: ?Sized + Serialize,
    V: DeserializeOwned,
{
    let denials = conn.denials();
    let since = denials.map_or(0, |d| d.mark());
    let request = conn
        .jetstream()
        .request::<_, T, jetstream::response::Response<V>>(subject.clone(), payload);
    let result = match denials {
        Some(denials) => {
            tokio::select! {
                biased;
                result = request => result,
                denial = denials.wait(since, &subject) => return Err(denial.to_error(op)),
            }
        }
        None => request.await,
    };
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            // A report may come in just after the request gave up, or the
            // reply subscription may have been refused on an earlier request.
            if let Some(denial) = denials.and_then(|d| d.find(since, &subject, true)) {
                return Err(denial.to_error(op));
            }
            return Err(request_error(op, err));
        }
    };
    match response {
        jetstream::response::Response::Ok(value) => Ok(value),
        jetstream::response::Response::Err { error } => Err(api_error(op, &error)),
    }
}

/// Classifies a failed request (the server never answered).
///
/// Every request classified here goes to the JetStream API, so nobody
/// listening there ("no responders") means that JetStream is not enabled on
/// the server, or not for this account or domain:
/// [`ServerErrorKind::JetStreamNotEnabled`].
pub(crate) fn request_error(op: &str, err: jetstream::context::RequestError) -> Error {
    use jetstream::context::RequestErrorKind as K;
    match err.kind() {
        K::NoResponders => Error::server(
            op,
            ServerErrorKind::JetStreamNotEnabled,
            "no responders: nothing answers on the JetStream API; JetStream is not enabled on the server, or not for this account or domain",
        ),
        K::TimedOut => Error::server(
            op,
            ServerErrorKind::Timeout,
            "the JetStream API did not answer in time",
        ),
        K::InvalidSubject => Error::server_caused(op, ServerErrorKind::BadRequest, err),
        K::Other => Error::server_caused(op, ServerErrorKind::Other, err),
    }
}

/// Classifies an error answer from the JetStream API.
pub(crate) fn api_error(op: &str, err: &jetstream::Error) -> Error {
    use jetstream::ErrorCode as C;
    let code = err.error_code();
    let kind = match code {
        C::JETSTREAM_NOT_ENABLED | C::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT => {
            ServerErrorKind::JetStreamNotEnabled
        }
        C::STREAM_NOT_FOUND => ServerErrorKind::StreamNotFound,
        C::CONSUMER_NOT_FOUND => ServerErrorKind::ConsumerNotFound,
        C::CONSUMER_NAME_EXIST => ServerErrorKind::ConsumerNameTaken,
        C::ACCOUNT_RESOURCES_EXCEEDED
        | C::MAXIMUM_CONSUMERS_LIMIT
        | C::MAXIMUM_STREAMS_LIMIT
        | C::STORAGE_RESOURCES_EXCEEDED
        | C::MEMORY_RESOURCES_EXCEEDED
        | C::INSUFFICIENT_RESOURCES
        | C::STREAM_LIMITS => ServerErrorKind::LimitsExceeded,
        jetstream::ErrorCode(CONSUMER_ALREADY_EXISTS) => ServerErrorKind::ConsumerNameTaken,
        jetstream::ErrorCode(CONSUMER_DOES_NOT_EXIST) => ServerErrorKind::ConsumerNotFound,
        _ if err.code() == 400 => ServerErrorKind::BadRequest,
        _ => ServerErrorKind::Other,
    };
    Error::server_caused(op, kind, err.clone())
}

/// The stream's info, or `None` when it does not exist.
pub(crate) async fn stream_info(
    conn: &Connection,
    name: &str,
) -> Result<Option<stream::Info>, Error> {
    let op = format!("stream info {name}");
    match api_request(
        conn,
        &op,
        format!("STREAM.INFO.{name}"),
        &serde_json::json!({}),
    )
    .await
    {
        Ok(info) => Ok(Some(info)),
        Err(err) if err.server_kind() == Some(ServerErrorKind::StreamNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Creates the stream, reuses it, or updates it in place; see the module
/// docs.
///
/// `connection` is a [`Connection`] or a JetStream context (`&js`): through
/// a `Connection` made by `connect`, a request the account may not make
/// fails at once with [`ServerErrorKind::PermissionDenied`]; through a plain
/// context it fails when it times out.
pub async fn ensure_stream(
    connection: impl Into<Connection>,
    spec: &StreamSpec,
) -> Result<StreamAction, Error> {
    let conn = &connection.into();
    spec.validate()?;
    let name = &spec.name;
    let Some(existing) = stream_info(conn, name).await? else {
        let op = format!("create stream {name}");
        let _: stream::Info = api_request(
            conn,
            &op,
            format!("STREAM.CREATE.{name}"),
            &spec.to_config(),
        )
        .await?;
        tracing::info!(stream = %name, "created stream");
        return Ok(StreamAction::Created);
    };
    let diff = spec.diff(&existing.config);
    if !diff.immutable.is_empty() {
        return Err(Error::StreamConflict {
            stream: name.clone(),
            fields: diff.immutable,
            detail:
                "these fields cannot be changed on an existing stream; the stream was left as it is"
                    .into(),
        });
    }
    if diff.mutable.is_empty() {
        return Ok(StreamAction::Unchanged);
    }
    let mut config = existing.config.clone();
    spec.apply_to(&mut config);
    let op = format!("update stream {name}");
    match api_request::<_, stream::Info>(conn, &op, format!("STREAM.UPDATE.{name}"), &config).await
    {
        Ok(_) => {
            tracing::info!(stream = %name, fields = ?diff.mutable, "updated stream");
            Ok(StreamAction::Updated(diff.mutable))
        }
        Err(Error::Server {
            kind: ServerErrorKind::BadRequest | ServerErrorKind::Other,
            detail,
            ..
        }) => Err(Error::StreamConflict {
            stream: name.clone(),
            fields: diff.mutable,
            detail: format!("the server refused the update: {detail}"),
        }),
        Err(err) => Err(err),
    }
}

/// The consumer's info, or `None` when it does not exist.
pub(crate) async fn consumer_info(
    conn: &Connection,
    stream: &str,
    durable: &str,
) -> Result<Option<consumer::Info>, Error> {
    let op = format!("consumer info {stream}/{durable}");
    match api_request(
        conn,
        &op,
        format!("CONSUMER.INFO.{stream}.{durable}"),
        &serde_json::json!({}),
    )
    .await
    {
        Ok(info) => Ok(Some(info)),
        Err(err) if err.server_kind() == Some(ServerErrorKind::ConsumerNotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

#[derive(Serialize)]
struct CreateConsumer<'a> {
    stream_name: &'a str,
    config: &'a consumer::Config,
    action: &'a str,
}

async fn put_consumer(
    conn: &Connection,
    op: &str,
    stream: &str,
    config: &consumer::Config,
    action: &str,
) -> Result<consumer::Info, Error> {
    let name = config.durable_name.as_deref().unwrap_or_default();
    let request = CreateConsumer {
        stream_name: stream,
        config,
        action,
    };
    api_request(
        conn,
        op,
        format!("CONSUMER.CREATE.{stream}.{name}"),
        &request,
    )
    .await
}

/// The mode a consumer has on the server.
pub(crate) fn server_mode(config: &consumer::Config) -> ConsumerMode {
    if config.deliver_subject.is_some() {
        ConsumerMode::Push
    } else {
        ConsumerMode::Pull
    }
}

/// Creates the durable consumer, or binds to the existing one by name; see
/// the module docs. Returns the consumer's info as the server has it.
///
/// Several processes may ensure one durable at once (members of a queue
/// group): the one whose create loses the race binds to the consumer the
/// other created.
///
/// `connection` is a [`Connection`] or a JetStream context (`&js`): through
/// a `Connection` made by `connect`, a request the account may not make
/// fails at once with [`ServerErrorKind::PermissionDenied`]; through a plain
/// context it fails when it times out.
pub async fn ensure_consumer(
    connection: impl Into<Connection>,
    spec: &ConsumerSpec,
) -> Result<(consumer::Info, ConsumerAction), Error> {
    let conn = &connection.into();
    spec.validate()?;
    let (stream, durable) = (spec.stream.as_str(), spec.durable.as_str());
    let existing = match consumer_info(conn, stream, durable).await? {
        Some(info) => info,
        None => match create_consumer(conn, spec).await? {
            Create::Created(info) => return Ok((*info, ConsumerAction::Created)),
            Create::Raced(err) => {
                tracing::debug!(
                    stream,
                    durable,
                    "created concurrently elsewhere; binding to it"
                );
                consumer_info(conn, stream, durable).await?.ok_or_else(|| {
                    Error::ConsumerConflict {
                        stream: stream.into(),
                        durable: durable.into(),
                        fields: vec!["(created and deleted concurrently)".into()],
                        detail: err.to_string(),
                    }
                })?
            }
        },
    };
    bind_consumer(conn, spec, existing).await
}

/// What a create request came to.
enum Create {
    Created(Box<consumer::Info>),
    /// Another client created the consumer first (with its own deliver
    /// subject, say); this is the server's refusal.
    Raced(Error),
}

async fn create_consumer(conn: &Connection, spec: &ConsumerSpec) -> Result<Create, Error> {
    let (stream, durable) = (spec.stream.as_str(), spec.durable.as_str());
    let deliver = spec
        .mode
        .as_push()
        .is_some_and(|push| push.deliver_subject.is_none())
        .then(|| conn.client().new_inbox());
    let config = spec.to_config(deliver);
    let op = format!("create consumer {stream}/{durable}");
    match put_consumer(conn, &op, stream, &config, "create").await {
        Ok(info) => {
            tracing::info!(stream, durable, mode = %spec.mode(), "created durable consumer");
            Ok(Create::Created(Box::new(info)))
        }
        Err(err) if err.server_kind() == Some(ServerErrorKind::ConsumerNameTaken) => {
            Ok(Create::Raced(err))
        }
        Err(err) => Err(err),
    }
}

/// Binds to an existing consumer: checks its mode and applies what the spec
/// changes.
async fn bind_consumer(
    conn: &Connection,
    spec: &ConsumerSpec,
    info: consumer::Info,
) -> Result<(consumer::Info, ConsumerAction), Error> {
    let (stream, durable) = (spec.stream.as_str(), spec.durable.as_str());
    let actual = server_mode(&info.config);
    if actual != spec.mode() {
        return Err(Error::ModeMismatch {
            stream: stream.into(),
            durable: durable.into(),
            expected: spec.mode(),
            actual,
        });
    }
    let (config, fields) = reconcile(spec, &info.config)?;
    if fields.is_empty() {
        return Ok((info, ConsumerAction::Bound));
    }
    let op = format!("update consumer {stream}/{durable}");
    match put_consumer(conn, &op, stream, &config, "update").await {
        Ok(info) => {
            tracing::info!(stream, durable, ?fields, "updated durable consumer");
            Ok((info, ConsumerAction::Updated(fields)))
        }
        Err(Error::Server {
            kind:
                ServerErrorKind::BadRequest
                | ServerErrorKind::Other
                | ServerErrorKind::ConsumerNameTaken,
            detail,
            ..
        }) => Err(Error::ConsumerConflict {
            stream: stream.into(),
            durable: durable.into(),
            fields,
            detail: format!("the server refused the update: {detail}"),
        }),
        Err(err) => Err(err),
    }
}
