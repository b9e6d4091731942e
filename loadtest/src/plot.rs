//! `--plot FILE.svg`: latency percentiles per second over the run (top)
//! and the histogram of send→deliver latency over the window (bottom);
//! for `hostile`, the percentiles of the clean phase (top) and of the
//! hostile phase (bottom) on one scale; for `soak`, the server's RSS over
//! the run (top) and the percentiles (bottom).
//! plotters' SVG backend writes text as SVG text: no font files needed.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::report::{h, Report, SoakSection};

pub fn write_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(420);
    let procs = format!("{} process{}", report.processes, if report.processes == 1 { "" } else { "es" });
    if let Some(hs) = &report.hostile {
        // Both phases on one scale, one above the other.
        let y = y_range(&[&hs.clean, report]);
        let title = |phase: &str| format!("viche-load hostile, {phase}: normal users' send→deliver latency per second");
        percentiles(&top, &hs.clean, &title("clean phase"), y)?;
        percentiles(&bottom, report, &title("hostile phase"), y)?;
    } else if let Some(soak) = &report.soak {
        rss(&top, report, soak)?;
        let title = format!("viche-load soak: send→deliver latency per second ({procs})");
        percentiles(&bottom, report, &title, y_range(&[report]))?;
    } else {
        let title = format!("viche-load {}: send→deliver latency ({procs})", report.scenario);
        percentiles(&top, report, &title, y_range(&[report]))?;
        histogram(&bottom, report)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// (min, max) ms of the percentile lines of these reports (log scale).
fn y_range(reports: &[&Report]) -> (f64, f64) {
    let rows = || reports.iter().flat_map(|r| r.timeline.iter()).filter(|r| r.max_ms > 0.0);
    let y_max = rows().map(|r| r.max_ms).fold(1.0f64, f64::max) * 1.5;
    let y_min = rows().map(|r| r.p50_ms).filter(|v| *v > 0.0).fold(y_max, f64::min).max(0.001) / 1.5;
    (y_min.min(y_max / 10.0), y_max)
}

/// Percentiles per second over the run, log scale.
fn percentiles<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    report: &Report,
    title: &str,
    (y_min, y_max): (f64, f64),
) -> anyhow::Result<()> {
    let rows: Vec<_> = report.timeline.iter().filter(|r| r.max_ms > 0.0).collect();
    let t_max = report.timeline.iter().map(|r| r.t).max().unwrap_or(1).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start (warm-up included)")
        .y_desc("ms (log)")
        .y_labels(12)
        .y_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(err)?;
    type Pick = fn(&crate::report::TimelineRow) -> f64;
    let series: [(&str, Pick, RGBColor); 5] = [
        ("p50", |r| r.p50_ms, RGBColor(31, 119, 180)),
        ("p90", |r| r.p90_ms, RGBColor(44, 160, 44)),
        ("p99", |r| r.p99_ms, RGBColor(255, 127, 14)),
        ("p99.9", |r| r.p999_ms, RGBColor(214, 39, 40)),
        ("max", |r| r.max_ms, RGBColor(80, 80, 80)),
    ];
    for (name, f, color) in series {
        chart
            .draw_series(LineSeries::new(rows.iter().map(|r| (r.t as f64, f(r).max(y_min))), color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    if report.warmup_s > 0.0 {
        chart
            .draw_series(LineSeries::new(
                vec![(report.warmup_s, y_min), (report.warmup_s, y_max)],
                MAGENTA.mix(0.6).stroke_width(2),
            ))
            .map_err(err)?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MAGENTA.mix(0.6).stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The server's RSS over the run (`soak`), MiB.
fn rss<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, report: &Report, soak: &SoakSection) -> anyhow::Result<()> {
    const MIB: f64 = 1024.0 * 1024.0;
    let pts: Vec<(f64, f64)> =
        soak.samples.iter().filter_map(|s| s.rss_bytes.map(|b| (s.t_s, b as f64 / MIB))).collect();
    let t_max = soak.samples.iter().map(|s| s.t_s).fold(1.0f64, f64::max);
    let hi = pts.iter().map(|p| p.1).fold(1.0f64, f64::max);
    let lo = pts.iter().map(|p| p.1).fold(hi, f64::min);
    let pad = ((hi - lo) * 0.1).max(1.0);
    let caption = format!(
        "viche-load soak: server RSS ({}), growth after the warm-up {} MiB = {} KiB per 1,000 operations",
        soak.rss_source,
        soak.rss_growth_bytes.map_or("n/a".into(), |b| format!("{:+.2}", b as f64 / MIB)),
        soak.rss_growth_per_1000_ops_bytes.map_or("n/a".into(), |b| format!("{:+.2}", b / 1024.0)),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..t_max, (lo - pad).max(0.0)..hi + pad)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the start (warm-up included)")
        .y_desc("RSS, MiB")
        .y_label_formatter(&|v| format!("{v:.1}"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(pts.iter().copied(), RGBColor(31, 119, 180).stroke_width(2)))
        .map_err(err)?
        .label("RSS")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], RGBColor(31, 119, 180).stroke_width(2)));
    if report.warmup_s > 0.0 {
        chart
            .draw_series(LineSeries::new(
                vec![(report.warmup_s, (lo - pad).max(0.0)), (report.warmup_s, hi + pad)],
                MAGENTA.mix(0.6).stroke_width(2),
            ))
            .map_err(err)?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], MAGENTA.mix(0.6).stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// The histogram of send→deliver latency over the window.
fn histogram<DB: DrawingBackend>(bottom: &DrawingArea<DB, Shift>, report: &Report) -> anyhow::Result<()> {
    // Bottom: the histogram, logarithmic buckets (×1.25) from 10 µs.
    let hist = report.histograms.get(h::LATENCY).cloned().unwrap_or_default();
    let mut bars: Vec<(f64, f64, u64)> = Vec::new();
    if !hist.is_empty() {
        let mut lo_ns = 0f64;
        for v in hist.0.iter_log(10_000, 1.25) {
            let hi_ns = v.value_iterated_to() as f64;
            let count = v.count_since_last_iteration();
            if count > 0 {
                bars.push(((lo_ns / 1e6).max(0.001), (hi_ns / 1e6).max(0.0011), count));
            }
            lo_ns = hi_ns;
        }
    }
    let x_lo = bars.iter().map(|b| b.0).fold(f64::MAX, f64::min).clamp(0.001, 0.01);
    let x_hi = bars.iter().map(|b| b.1).fold(1.0f64, f64::max) * 1.2;
    let c_max = bars.iter().map(|b| b.2).max().unwrap_or(1).max(1) as f64 * 1.1;
    let s = hist.summary();
    let caption = format!(
        "histogram over the window: n = {}, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        s.count, s.p50_ms, s.p99_ms, s.p999_ms, s.max_ms
    );
    let mut chart = ChartBuilder::on(bottom)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..c_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("send→deliver, ms (log)")
        .y_desc("deliveries")
        .x_label_formatter(&|v| format!("{v:.3}"))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            bars.iter().map(|&(lo, hi, n)| {
                Rectangle::new([(lo.max(x_lo), 0.0), (hi, n as f64)], RGBColor(31, 119, 180).filled())
            }),
        )
        .map_err(err)?;
    Ok(())
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plot: {e:?}")
}
