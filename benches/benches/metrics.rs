//! What recording metrics costs on the hot path, per call, with the
//! Prometheus recorder installed and without any (what `--no-metrics`
//! gives). The calls are the ones the server makes:
//!
//! - per message published to a room: the stored-messages counter, the
//!   deliveries counter, the frames-out counter (each one add of N), and one
//!   sample of the send→deliver histogram (with its `Instant::elapsed`);
//! - per socket flush: the bytes-out counter;
//! - for comparison, a `metrics::counter!` macro with a label, which looks
//!   its key up in the registry on every call (what handles avoid).
//!
//! Handles are obtained the way `engine/src/metrics.rs` does, once; the
//! "noop" ones before the recorder is installed, the "prometheus" ones
//! after (a process has one global recorder, so both are measured in this
//! order). The fan-out bench measures the push per member itself.
//!
//! Run: `cargo bench -p viche-benches --bench metrics`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use metrics::{Counter, Histogram};

struct Handles {
    stored: Counter,
    deliveries: Counter,
    frames_out: Counter,
    latency: Histogram,
    bytes_out: Counter,
}

fn handles() -> Handles {
    Handles {
        stored: metrics::counter!("viche_messages_stored_total"),
        deliveries: metrics::counter!("viche_deliveries_total"),
        frames_out: metrics::counter!("viche_frames_out_total", "type" => "msg"),
        latency: metrics::histogram!("viche_send_deliver_latency_seconds"),
        bytes_out: metrics::counter!("viche_frames_out_bytes_total"),
    }
}

fn per_message(h: &Handles, received_at: Instant) {
    h.stored.increment(1);
    h.deliveries.increment(black_box(100));
    h.frames_out.increment(black_box(100));
    h.latency.record(received_at.elapsed().as_secs_f64());
}

fn bench_set(c: &mut Criterion, recorder: &str, h: &Handles) {
    let mut g = c.benchmark_group(format!("metrics/{recorder}"));
    let received_at = Instant::now();
    g.bench_function("per_message", |b| b.iter(|| per_message(h, black_box(received_at))));
    g.bench_function("per_flush", |b| b.iter(|| h.bytes_out.increment(black_box(1500))));
    g.bench_function("macro_with_label", |b| {
        b.iter(|| metrics::counter!("viche_frames_in_total", "type" => black_box("send")).increment(1))
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let noop = handles();
    bench_set(c, "noop", &noop);
    let handle =
        metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder().expect("installing the recorder");
    let real = handles();
    bench_set(c, "prometheus", &real);
    // Histogram samples are buffered until rendered; fold them as the
    // server's upkeep does, so memory stays flat.
    handle.run_upkeep();
}

criterion_group!(benches, bench);
criterion_main!(benches);
