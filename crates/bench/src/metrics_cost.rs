//! The metrics case: what recording the library's metrics costs, on pull
//! batch 100 and push, with a Prometheus recorder
//! (`metrics-exporter-prometheus`, without its HTTP listener) against no
//! recorder at all.
//!
//! The facade takes one global recorder per process, so the case installs
//! a switch in front of the Prometheus one: a child registers its metric
//! handles when it starts, and gets real ones while the switch is on and
//! no-op ones while it is off. Each round runs the same library side with
//! metrics off, then on (a fresh child each), on a fresh stream of
//! `--messages` messages; rates are medians over `--rounds` pairs, and
//! `paired_ratio` the median of the per-pair ratios.
//!
//! ```text
//! RESULT mode=pull batch=100 metrics=off msgs_per_s=R messages=N
//! RESULT mode=pull batch=100 metrics=on msgs_per_s=R ratio=X paired_ratio=Y messages=N
//! ```
//!
//! (and the same for `mode=push window=W`). The goal: `ratio` at least
//! 0.97 (at most 3 % lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use async_nats::jetstream;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};
use ractor_jetstream::ConsumerSpec;

use super::{
    BoxError, Options, check_all_acked, fetch_all, fill, median, spawn_pull_child,
    spawn_push_child, spawn_target,
};

/// The pull batch the case measures.
const BATCH: usize = 100;

/// A recorder that hands out real handles while on, no-op ones while off.
struct Switch {
    on: Arc<AtomicBool>,
    inner: PrometheusRecorder,
}

impl Recorder for Switch {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }
    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }
    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }
    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_counter(key, metadata)
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_gauge(key, metadata)
        } else {
            Gauge::noop()
        }
    }
    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        if self.on.load(Ordering::Relaxed) {
            self.inner.register_histogram(key, metadata)
        } else {
            Histogram::noop()
        }
    }
}

/// One measured row: the rates off and on.
pub(crate) struct MetricsRow {
    mode: &'static str,
    size: usize,
    messages: u64,
    off: f64,
    on: f64,
    paired: f64,
}

impl MetricsRow {
    pub fn lines(&self) -> [String; 2] {
        let size = match self.mode {
            "pull" => format!("batch={}", self.size),
            _ => format!("window={}", self.size),
        };
        [
            format!(
                "RESULT mode={} {size} metrics=off msgs_per_s={:.0} messages={}",
                self.mode, self.off, self.messages
            ),
            format!(
                "RESULT mode={} {size} metrics=on msgs_per_s={:.0} ratio={:.3} paired_ratio={:.3} messages={}",
                self.mode,
                self.on,
                self.on / self.off,
                self.paired,
                self.messages
            ),
        ]
    }
}

/// Runs the case; see the module docs.
pub(crate) async fn metrics_case(
    js: &jetstream::Context,
    options: &Options,
) -> Result<Vec<MetricsRow>, BoxError> {
    let on = Arc::new(AtomicBool::new(false));
    let inner = PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(Switch {
        on: on.clone(),
        inner,
    })
    .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let n = options.messages;
    let mut rows = Vec::new();
    for mode in ["pull", "push"] {
        let (mut off_rates, mut on_rates, mut paired) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..options.rounds {
            let mut pair = [0.0; 2];
            for (i, metrics_on) in [false, true].into_iter().enumerate() {
                on.store(metrics_on, Ordering::Relaxed);
                pair[i] = match mode {
                    "pull" => pull_run(js, n).await?,
                    _ => push_run(js, n, options.window).await?,
                };
            }
            eprintln!("round: metrics {mode} off={:.0} on={:.0}", pair[0], pair[1]);
            off_rates.push(pair[0]);
            on_rates.push(pair[1]);
            paired.push(pair[1] / pair[0]);
        }
        on.store(false, Ordering::Relaxed);
        rows.push(MetricsRow {
            mode: if mode == "pull" { "pull" } else { "push" },
            size: if mode == "pull" {
                BATCH
            } else {
                options.window
            },
            messages: n,
            off: median(&mut off_rates),
            on: median(&mut on_rates),
            paired: median(&mut paired),
        });
    }
    Ok(rows)
}

/// One pull run at batch [`BATCH`]; returns its rate.
async fn pull_run(js: &jetstream::Context, n: u64) -> Result<f64, BoxError> {
    fill(js, n).await?;
    let (target, _probe) = spawn_target(n).await?;
    let spec = ConsumerSpec::pull("BENCH", "metered", "bench");
    let child = spawn_pull_child(js, spec, target.get_derived().into()).await?;
    let elapsed = fetch_all(js, "metered", &child, n, BATCH).await?;
    check_all_acked(js, "metered", n).await?;
    child.stop(None);
    target.stop(None);
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// One push run with `window`; returns its rate.
async fn push_run(js: &jetstream::Context, n: u64, window: usize) -> Result<f64, BoxError> {
    fill(js, n).await?;
    let (target, mut probe) = spawn_target(n).await?;
    let started = Instant::now();
    let child = spawn_push_child(js, "metered", window, &target).await?;
    probe.wait_all().await?;
    js.client().flush().await?;
    let elapsed = started.elapsed();
    check_all_acked(js, "metered", n).await?;
    child.stop(None);
    target.stop(None);
    Ok(n as f64 / elapsed.as_secs_f64())
}
