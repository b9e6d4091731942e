//! The Prometheus exporter: the recorder and its buckets; every metric of
//! the table (`viche_engine::metrics::ALL`) described, and its series
//! whose labels are known registered at zero at start; the gauges sampled
//! at each scrape; process metrics; and the readiness gauge.
//!
//! Every metric, with what to do when its alert fires, is in
//! `docs/operations.md` (a test below checks it lists exactly the table);
//! the dashboards and alerts in `grafana/` use only names exported here
//! (checked by `gateway/tests/prometheus.rs`).

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use viche_engine::metrics::{self as table, Kind, Metric, Source};
use viche_engine::Engine;

/// Histogram buckets of every `_seconds` histogram: they resolve 50 µs
/// to 10 s (above the last bucket, only `+Inf`), finer between 1 and 2.5
/// ms, where the send→deliver target (p99 ≤ 2 ms) lies.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0015, 0.002, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// Messages per store commit (`--writer-batch-max` is 4096 by default).
pub const BATCH_SIZE_BUCKETS: &[f64] =
    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0];

/// How often histogram samples are folded into their buckets when nobody
/// scrapes (a scrape folds them too); without it they would pile up.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);
/// What `/metrics` renders from.
pub struct Exporter {
    handle: PrometheusHandle,
    process: metrics_process::Collector,
    engine: Arc<Engine>,
}

/// Installs the Prometheus recorder, describes every metric and registers
/// the known series at zero (so that rates and alerts have a series before
/// the first event). Must run before the engine starts.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(table::WRITER_BATCH_SIZE.name.into()), BATCH_SIZE_BUCKETS)?
        .install_recorder()?;
    describe();
    register_known_series();
    // The hot-path handles bind to the recorder installed now.
    viche_engine::metrics::hot();
    Ok(handle)
}

impl Exporter {
    /// Starts the upkeep and the readiness probe, and sets what is fixed
    /// for the life of the process.
    pub fn start(handle: PrometheusHandle, engine: Arc<Engine>) -> Self {
        let process = metrics_process::Collector::new("viche_");
        process.describe();
        process.collect();
        table::BUILD_INFO.gauge_with(env!("CARGO_PKG_VERSION")).set(1.0);
        table::WRITER_QUEUE_CAPACITY.gauge().set(engine.writer_queue_capacity() as f64);
        set_ready_gauge(&engine);

        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        Self { handle, process, engine }
    }

    /// The text of `/metrics`: sampled gauges refreshed, then everything.
    pub fn render(&self) -> String {
        self.engine.sample_metrics();
        set_ready_gauge(&self.engine);
        self.process.collect();
        self.handle.render()
    }
}

/// `viche_store_ready`: the answer `/readyz` gives now.
fn set_ready_gauge(engine: &Engine) {
    let ready = engine.not_ready().is_none();
    table::STORE_READY.gauge().set(if ready { 1.0 } else { 0.0 });
}

/// Every series of the table whose label values are all known in advance,
/// at zero (a histogram is rendered, empty, once registered).
fn register_known_series() {
    for m in table::ALL.iter().filter(|m| m.source != Source::Process) {
        match m.labels {
            [] => register(m, &[]),
            [only] if !only.values.is_empty() => {
                for value in only.values {
                    register(m, &[(only.key, value)]);
                }
            }
            _ => {} // a label with open values (route × status, version)
        }
    }
}

fn register(m: &Metric, labels: &[(&'static str, &'static str)]) {
    let labels: Vec<metrics::Label> = labels.iter().map(|(k, v)| metrics::Label::new(*k, *v)).collect();
    let key = metrics::Key::from_parts(m.name, labels);
    let meta = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
    metrics::with_recorder(|recorder| match m.kind {
        Kind::Counter => recorder.register_counter(&key, &meta).absolute(0),
        Kind::Gauge => recorder.register_gauge(&key, &meta).increment(0.0),
        Kind::Histogram => drop(recorder.register_histogram(&key, &meta)),
    });
}

/// Describes every metric of the table that Viche keeps (the process
/// collector describes its own).
fn describe() {
    for m in table::ALL.iter().filter(|m| m.source != Source::Process) {
        metrics::with_recorder(|recorder| match m.kind {
            Kind::Counter => recorder.describe_counter(m.name.into(), Some(m.unit), m.help.into()),
            Kind::Gauge => recorder.describe_gauge(m.name.into(), Some(m.unit), m.help.into()),
            Kind::Histogram => recorder.describe_histogram(m.name.into(), Some(m.unit), m.help.into()),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// `docs/operations.md`'s metric rows: name → (type column, label keys).
    fn documented() -> BTreeMap<String, (String, Vec<String>)> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operations.md");
        let text = std::fs::read_to_string(path).expect("docs/operations.md is readable");
        let mut rows = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("| `viche_")) {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 4, "a metric row has name, type, labels, meaning: {line}");
            let name = cells[0].trim_matches('`').to_string();
            let labels = cells[2].split(',').map(|l| l.trim().trim_matches('`').to_string()).filter(|l| !l.is_empty());
            let previous = rows.insert(name.clone(), (cells[1].to_string(), labels.collect()));
            assert!(previous.is_none(), "{name} is documented twice");
        }
        rows
    }

    #[test]
    fn docs_operations_lists_exactly_the_metrics_table() {
        let docs = documented();
        for m in table::ALL {
            let Some((kind, labels)) = docs.get(m.name) else {
                panic!("{} is exported but not documented in docs/operations.md", m.name)
            };
            assert!(kind.starts_with(m.kind.as_str()), "{}: documented as {kind:?}, declared a {:?}", m.name, m.kind);
            assert_eq!(kind.contains("sampled"), m.source == Source::Sampled, "{}: sampled or not", m.name);
            let keys: Vec<String> = m.labels.iter().map(|l| l.key.to_string()).collect();
            assert_eq!(labels, &keys, "{}: labels", m.name);
        }
        for name in docs.keys() {
            assert!(table::ALL.iter().any(|m| m.name == name), "{name} is documented but not in the metrics table");
        }
    }
}
