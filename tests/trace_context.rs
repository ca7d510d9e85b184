//! Trace context across NATS (the `otel` feature), against a real server:
//! a message published inside a span carries its `traceparent`; the
//! consumer's delivery span continues that trace, and the target's span
//! is the delivery span's child. The spans are collected by an in-memory
//! OpenTelemetry exporter behind the `tracing-opentelemetry` layer, which
//! this binary installs as its one global subscriber (hence one test).
//! The message is consumed through the supervisor, as an application does.

mod common;

use std::time::Duration;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use ractor_jetstream::ConsumerSpec;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use common::{Env, create_stream, forwarding_target, next, wait_for_consumer};

fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans
        .iter()
        .find(|span| span.name == name)
        .unwrap_or_else(|| {
            let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
            panic!("no span {name:?} among {names:?}")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_makes_the_delivery_span_continue_the_publishers_trace() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::DEBUG)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let server = nats_harness::NatsServer::start()
        .await
        .expect("start nats-server");
    let client = async_nats::connect(server.url()).await.expect("connect");
    let env = Env {
        js: async_nats::jetstream::new(client.clone()),
        client,
        server,
    };
    create_stream(&env.js, "T", &["t.>"]).await;

    // Published inside a span: its context travels in the headers.
    let (trace_id, publish_span_id): (TraceId, SpanId) = {
        let publish = tracing::info_span!("publish");
        let _entered = publish.enter();
        let mut headers = async_nats::HeaderMap::new();
        ractor_jetstream::otel::inject_current(&mut headers);
        assert!(headers.get("traceparent").is_some(), "{headers:?}");
        env.js
            .publish_with_headers("t.a", headers, "traced".into())
            .await
            .expect("publish")
            .await
            .expect("stored");
        let context = publish.context();
        let span = context.span();
        let ids = span.span_context();
        (ids.trace_id(), ids.span_id())
    };
    assert_ne!(trace_id, TraceId::INVALID);

    // Consumed through the supervisor, as an application does.
    let (target, mut rx) = forwarding_target().await;
    let topology =
        ractor_jetstream::Topology::new().consumer(ConsumerSpec::pull("T", "traced", "t"));
    let args = ractor_jetstream::SupervisorArgs::new(env.js.clone(), topology)
        .target("t", target.get_derived());
    let (supervisor, _) = ractor_jetstream::SupervisorHandle::spawn(None, args)
        .await
        .expect("supervisor starts");
    let pull = supervisor.pull("traced").await.expect("pull handle");
    let fetching = tokio::spawn(async move { pull.fetch(1, Some(Duration::from_secs(2))).await });
    let delivery = next(&mut rx).await;
    {
        // The target's work, inside the delivery's span.
        let work = tracing::info_span!(parent: delivery.span(), "work");
        let _entered = work.enter();
    }
    delivery.ack();
    fetching.await.expect("fetch task").expect("fetch");
    // The server takes acks in from a queue of its own, so a consumer info
    // asked right after them on the same connection may not show them yet.
    wait_for_consumer(&env.js, "T", "traced", "the ack", |info| {
        info.ack_floor.stream_sequence == 1
    })
    .await;

    provider.force_flush().expect("flush");
    let spans = exporter.get_finished_spans().expect("spans");
    let delivered = find(&spans, "delivery");
    let work = find(&spans, "work");
    assert_eq!(delivered.span_context.trace_id(), trace_id);
    assert_eq!(delivered.parent_span_id, publish_span_id);
    assert_eq!(work.span_context.trace_id(), trace_id);
    assert_eq!(work.parent_span_id, delivered.span_context.span_id());
}
