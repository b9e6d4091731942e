//! The text tables of the `hostile`, `soak` and `floor` reports (the other
//! scenarios' table is [`Report::table`]), and the floor's lines that every
//! table giving server CPU per delivery shows beside it.

use std::collections::BTreeMap;

use crate::hist::Summary;
use crate::report::{c, h, FloorFigures, HostileKind, HostileSection, Report, ServerFigures, SoakSection};

/// `key  value` lines, keys padded to one width.
pub fn align(rows: &[(String, String)]) -> String {
    let width = rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

const MIB: f64 = 1024.0 * 1024.0;

fn map<V: std::fmt::Display>(m: &BTreeMap<String, V>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

fn ms(v: f64) -> String {
    format!("{v:.3}")
}

/// The hostile report: the normal users of both phases side by side, the
/// goal, then what each kind of hostile client observed.
pub fn hostile(r: &Report, hs: &HostileSection) -> String {
    let clean = &hs.clean;
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |k: &str, v: String| rows.push((k.to_string(), v));
    let p = &r.params;
    row("scenario", format!("hostile ({} process): {}", r.processes, hs.order));
    row(
        "normal users",
        format!(
            "{} rooms × {} members, {} senders per room at {}/s each, {} B bodies",
            p["rooms"], p["members"], p["senders"], p["rate"], p["body_bytes"]
        ),
    );
    row("window", format!("{:.1} s after {:.1} s warm-up, in each phase", r.window_s, r.warmup_s));
    let side = |a: String, b: String| format!("{a:>14}  {b:>14}");
    row("normal users:", side("clean".into(), "hostile".into()));
    let lat = |rep: &Report, name: &str| rep.latency.get(name).cloned().unwrap_or_default();
    for (name, label) in [(h::LATENCY, "send→deliver"), (h::LATENCY_FROM_DUE, "due→deliver"), (h::ACK, "send→ack")]
    {
        let (a, b) = (lat(clean, name), lat(r, name));
        type Pick = fn(&Summary) -> f64;
        let picks: [(&str, Pick); 5] = [
            ("p50", |s| s.p50_ms),
            ("p90", |s| s.p90_ms),
            ("p99", |s| s.p99_ms),
            ("p99.9", |s| s.p999_ms),
            ("max", |s| s.max_ms),
        ];
        for (q, f) in picks {
            if name != h::LATENCY && !matches!(q, "p50" | "p99") {
                continue;
            }
            row(&format!("  {label} {q} ms"), side(ms(f(&a)), ms(f(&b))));
        }
        row(&format!("  {label} count"), side(a.count.to_string(), b.count.to_string()));
    }
    let g = |rep: &Report, k: &str| rep.counters.get(k).copied().unwrap_or(0);
    row(
        "  sends/s offered",
        side(format!("{:.1}", clean.rates.offered_sends_per_s), format!("{:.1}", r.rates.offered_sends_per_s)),
    );
    row(
        "  sends/s achieved",
        side(format!("{:.1}", clean.rates.achieved_sends_per_s), format!("{:.1}", r.rates.achieved_sends_per_s)),
    );
    row(
        "  sends acked/sent",
        side(format!("{}/{}", g(clean, c::ACKS), g(clean, c::SENDS)), format!("{}/{}", g(r, c::ACKS), g(r, c::SENDS))),
    );
    row(
        "  deliveries/expected",
        side(
            format!("{}/{}", clean.loss.received, clean.loss.expected),
            format!("{}/{}", r.loss.received, r.loss.expected),
        ),
    );
    row("  lost", side(clean.loss.lost.to_string(), r.loss.lost.to_string()));
    row("  gaps", side(clean.loss.gaps.to_string(), r.loss.gaps.to_string()));
    row("  duplicates", side(clean.loss.duplicates.to_string(), r.loss.duplicates.to_string()));
    row("  sessions lost", side(g(clean, c::MEMBERS_LOST).to_string(), g(r, c::MEMBERS_LOST).to_string()));
    row(
        "  connections opened",
        side(
            format!("{}/{}", g(clean, c::CONNECTIONS_OPENED), g(clean, c::CONNECTIONS_TARGET)),
            format!("{}/{}", g(r, c::CONNECTIONS_OPENED), g(r, c::CONNECTIONS_TARGET)),
        ),
    );
    let cpu = |rep: &Report| rep.server.cpu_seconds.map_or("n/a".into(), |v| format!("{v:.2}"));
    row("  server CPU s", side(cpu(clean), cpu(r)));
    let per = |rep: &Report| rep.server.cpu_us_per_delivery.map_or("n/a".into(), |v| format!("{v:.2}"));
    row("  server CPU µs/delivery", side(per(clean), per(r)));
    let ratio = |rep: &Report| rep.server.ratio_to_floor.map_or("n/a".into(), |v| format!("{v:.2}×"));
    row("  × the floor", side(ratio(clean), ratio(r)));
    let rss = |rep: &Report| rep.server.rss_after_bytes.map_or("n/a".into(), |b| format!("{:.1}", b as f64 / MIB));
    row("  server RSS MiB at end", side(rss(clean), rss(r)));
    // Other work on the machine skews a phase: say how much there was.
    let gen = |rep: &Report| g(rep, c::GENERATOR_CPU_US) as f64 / 1e6;
    row("  generator CPU s", side(format!("{:.2}", gen(clean)), format!("{:.2}", gen(r))));
    let others = |rep: &Report| {
        rep.server
            .machine_cpu_seconds
            .map_or("n/a".into(), |m| format!("{:.2}", (m - rep.server.cpu_seconds.unwrap_or(0.0) - gen(rep)).max(0.0)))
    };
    row("  machine CPU s, others", side(others(clean), others(r)));
    match (&r.floor, &r.server.floor_missing) {
        (Some(f), _) => row("floor (after both phases)", floor_line(f)),
        (None, Some(why)) => row("floor", why.clone()),
        (None, None) => {}
    }
    row("  errors (clean)", map(&clean.errors_by_code));
    row("  errors (hostile)", map(&r.errors_by_code));
    row("  closes (clean)", map(&clean.closes_by_code));
    row("  closes (hostile)", map(&r.closes_by_code));
    let cmp = &hs.comparison;
    let verdict = |ok: bool| if ok { "met" } else { "NOT MET" };
    row(
        "goal",
        format!(
            "hostile p99 {} ms = {} × clean p99 {} ms (at most {}×: {}); nothing lost: {} → {}",
            ms(cmp.hostile.latency.p99_ms),
            cmp.p99_ratio.map_or("n/a".into(), |v| format!("{v:.2}")),
            ms(cmp.clean.latency.p99_ms),
            cmp.p99_ratio_max,
            verdict(cmp.p99_within_goal),
            if cmp.nothing_lost { "yes" } else { "NO" },
            if cmp.goal_met { "goal met" } else { "goal NOT MET" }
        ),
    );
    for (key, label) in [
        ("non_readers", "non-readers"),
        ("slowloris", "slowloris"),
        ("login_flood", "login flood"),
        ("reconnect_storm", "reconnect storm"),
        ("junk_frames", "junk frames"),
    ] {
        if let Some(k) = hs.clients.get(key) {
            row(label, kind_line(k));
        }
    }
    for (phase, k) in &hs.login_probe {
        row(&format!("login probe ({phase})"), kind_line(k));
    }
    for (phase, view) in &hs.server_view {
        let shown: Vec<String> = view
            .iter()
            .map(|(k, v)| format!("{} {}", k.trim_start_matches("viche_").replace("_total", ""), v))
            .collect();
        row(&format!("server /metrics ({phase})"), if shown.is_empty() { "n/a".into() } else { shown.join(", ") });
    }
    row("problems", if r.problems.is_empty() { "none".into() } else { r.problems.join("; ") });
    align(&rows)
}

/// One line for a hostile kind: its counters, then how things ended, then timings.
fn kind_line(k: &HostileKind) -> String {
    let mut parts = vec![map(&k.counters)];
    if !k.outcomes.is_empty() {
        parts.push(format!("ended: {}", map(&k.outcomes)));
    }
    let timings: Vec<String> = k
        .latency
        .iter()
        .filter(|(_, s)| s.count > 0)
        .map(|(name, s)| {
            format!("{name} p50/p99/max {}/{}/{} ms (n = {})", ms(s.p50_ms), ms(s.p99_ms), ms(s.max_ms), s.count)
        })
        .collect();
    if !timings.is_empty() {
        parts.push(timings.join(", "));
    }
    parts.join(" | ")
}

/// The soak's rows, before "problems".
pub fn soak_rows(r: &Report, s: &SoakSection) -> Vec<(String, String)> {
    let g = |k: &str| r.counters.get(k).copied().unwrap_or(0);
    let mut rows = Vec::new();
    rows.push((
        "history pages".to_string(),
        format!("{} over WebSocket, {} over HTTP", g(c::HISTORY_PAGES_WS), g(c::HISTORY_PAGES_HTTP)),
    ));
    rows.push((
        "operations".to_string(),
        format!(
            "{} after the warm-up ({}); {}",
            s.operations_after_warmup,
            map(&s.operations_by_kind),
            s.operations_definition
        ),
    ));
    let mib = |b: Option<u64>| b.map_or("n/a".to_string(), |b| format!("{:.2}", b as f64 / MIB));
    rows.push((
        "RSS samples".to_string(),
        format!(
            "{} MiB at the warm-up's end → {} MiB at the end (peak {} MiB), {} samples ({})",
            mib(s.rss_at_warmup_end_bytes),
            mib(s.rss_at_end_bytes),
            mib(s.rss_peak_bytes),
            s.samples.len(),
            s.rss_source
        ),
    ));
    rows.push((
        "RSS growth".to_string(),
        match s.rss_growth_bytes {
            Some(b) => format!(
                "{:+.2} MiB after the warm-up = {} KiB per 1,000 operations (least-squares slope: {} KiB per 1,000)",
                b as f64 / MIB,
                s.rss_growth_per_1000_ops_bytes.map_or("n/a".into(), |v| format!("{:+.2}", v / 1024.0)),
                s.rss_slope_per_1000_ops_bytes.map_or("n/a".into(), |v| format!("{:+.2}", v / 1024.0)),
            ),
            None => "n/a (RSS not sampled)".into(),
        },
    ));
    if let Some(limit) = s.check_rss_growth_mib {
        let ok = s.rss_growth_bytes.is_some_and(|b| (b as f64) <= limit * MIB);
        rows.push((
            "RSS check".to_string(),
            format!("growth at most {limit} MiB: {}", if ok { "ok" } else { "FAILED" }),
        ));
    }
    rows
}

/// The server's CPU per delivery against the floor, for the "server CPU"
/// row: `floor 9.50 µs (20000 deliveries/s, 2000 sockets, 193-byte frames) → 1.81× the floor`.
pub fn against_floor(s: &ServerFigures, floor: Option<&FloorFigures>) -> String {
    match (floor, s.floor_us_per_delivery) {
        (Some(f), Some(us)) => format!(
            "floor {us:.2} µs ({:.0} deliveries/s, {} sockets, {}-byte frames) → {}",
            f.offered_per_s,
            f.connections,
            f.frame_bytes,
            s.ratio_to_floor.map_or("n/a".to_string(), |r| format!("{r:.2}× the floor"))
        ),
        _ => format!("floor {}", s.floor_missing.as_deref().unwrap_or("not measured")),
    }
}

/// One line of how a floor was measured and whether it holds.
pub fn floor_line(f: &FloorFigures) -> String {
    let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("CPU {c}"));
    format!(
        "{:.2} µs per delivery: {} deliveries in {:.1} s ({:.0}/s of {:.0}/s offered) to {} loopback sockets, \
         {}-byte frames, {} per write, {:.1} writes per wakeup; sender {}, reader {} ({:.2} µs per delivery); {} \
         stalls; {}",
        f.us_per_delivery,
        f.deliveries,
        f.window_s,
        f.achieved_per_s,
        f.offered_per_s,
        f.connections,
        f.frame_bytes,
        f.frames_per_write,
        f.writes as f64 / f.wakeups.max(1) as f64,
        cpu(f.sender_cpu),
        cpu(f.reader_cpu),
        f.reader_us_per_delivery,
        f.stalls,
        if f.problems.is_empty() { "every byte read".to_string() } else { f.problems.join("; ") }
    )
}

/// The `floor` scenario's report.
pub fn floor(r: &Report, f: &FloorFigures) -> String {
    let cpu = |c: Option<usize>| c.map_or("unpinned".to_string(), |c| format!("pinned to CPU {c}"));
    let rows: Vec<(String, String)> = vec![
        (
            "scenario".into(),
            format!(
                "floor: one write(2) of {} frame{} per {} to {} loopback sockets, round-robin, nothing else",
                f.frames_per_write,
                if f.frames_per_write == 1 { "" } else { "s" },
                if f.frames_per_write == 1 {
                    "delivery".to_string()
                } else {
                    format!("{} deliveries", f.frames_per_write)
                },
                f.connections
            ),
        ),
        ("frame".into(), format!("{} bytes: {}", f.frame_bytes, f.frame_bytes_source)),
        ("window".into(), format!("{:.2} s after {:.1} s warm-up", f.window_s, f.warmup_s)),
        (
            "deliveries/s".into(),
            format!(
                "offered {:.0}, achieved {:.0} ({} deliveries, {} writes in the window)",
                f.offered_per_s, f.achieved_per_s, f.deliveries, f.writes
            ),
        ),
        (
            "sender".into(),
            format!(
                "{}; {} wakeups in the window ({:.1} writes each, tick {} µs), at worst {:.3} ms behind schedule",
                cpu(f.sender_cpu),
                f.wakeups,
                f.writes as f64 / f.wakeups.max(1) as f64,
                f.tick_us,
                f.late_max_ms
            ),
        ),
        (
            "sender CPU".into(),
            format!("{:.3} s over the window = {:.2} µs per delivery (the floor)", f.sender_cpu_s, f.us_per_delivery),
        ),
        (
            "reader CPU".into(),
            format!(
                "{:.3} s over the window = {:.2} µs per delivery ({})",
                f.reader_cpu_s,
                f.reader_us_per_delivery,
                cpu(f.reader_cpu)
            ),
        ),
        (
            "bytes".into(),
            format!(
                "{} written, {} read, {} never written ({} deliveries in all); {} sockets differ",
                f.bytes_written, f.bytes_read, f.bytes_unwritten, f.deliveries_total, f.sockets_short
            ),
        ),
        ("stalls".into(), format!("{} writes would block or were short (their rest went out later)", f.stalls)),
        ("problems".into(), if r.problems.is_empty() { "none".into() } else { r.problems.join("; ") }),
    ];
    align(&rows)
}
