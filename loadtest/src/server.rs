//! The server's side of the figures: its CPU time, resident memory and
//! delivery count, sampled at the start and end of the measured window.
//!
//! From `/metrics` (`viche_process_cpu_seconds_total`,
//! `viche_process_resident_memory_bytes`, `viche_deliveries_total`), and,
//! when the server runs on this machine, from `/proc/PID` as well: the
//! exported CPU counter has whole-second resolution, `/proc/PID/stat` has
//! clock ticks (10 ms). The PID is `--server-pid`, or found as the process
//! listening on the target's port.

use std::collections::BTreeMap;

use viche_client::HttpClient;

use crate::report::ServerFigures;

/// One sample of the server.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub deliveries: Option<u64>,
    /// `viche_send_deliver_latency_seconds` buckets: (le, cumulative count).
    pub send_deliver_buckets: Vec<(f64, f64)>,
    /// `viche_store_commit_duration_seconds` buckets, likewise.
    pub commit_buckets: Vec<(f64, f64)>,
    /// Busy CPU time of the whole machine (every process, all cores), from /proc/stat.
    pub machine_busy_seconds: Option<f64>,
    /// Frames the server wrote (every kind), and their bytes on the wire.
    pub frames_out: Option<u64>,
    pub frames_out_bytes: Option<u64>,
    /// CPUs the server may run on (`/proc/PID/status`), when its PID is known.
    pub cpus_allowed: Option<u64>,
    /// Where cpu and rss came from.
    pub source: String,
}

/// Parses Prometheus text: unlabelled series and the sum over labels, by
/// metric name.
pub fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(i) => match line[i..].find('}') {
                Some(j) => (&line[..i], &line[i + j + 1..]),
                None => continue,
            },
            None => match line.split_once(char::is_whitespace) {
                Some((name, rest)) => (name, rest),
                None => continue,
            },
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *out.entry(series.to_string()).or_insert(0.0) += v;
        }
    }
    out
}

/// The cumulative buckets of one histogram: (le, count), `+Inf` last.
pub fn buckets(text: &str, series: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let v = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, v))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// Samples the server, or the servers of a cluster (their figures summed).
pub struct Probe {
    nodes: Vec<Node>,
}

/// One server: its HTTP base, and its PID when known.
struct Node {
    http: HttpClient,
    pid: Option<u32>,
}

impl Probe {
    /// One server per `(base URL, PID)`; at least one.
    pub fn new(nodes: &[(String, Option<u32>)]) -> anyhow::Result<Self> {
        anyhow::ensure!(!nodes.is_empty(), "a probe needs a server");
        let nodes = nodes
            .iter()
            .map(|(url, pid)| {
                Ok(Node { http: HttpClient::with_timeout(url, std::time::Duration::from_secs(10))?, pid: *pid })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Probe { nodes })
    }

    /// The server's PID, when there is one server and it is known (the
    /// floor is measured beside one server only).
    pub fn pid(&self) -> Option<u32> {
        match &self.nodes[..] {
            [only] => only.pid,
            _ => None,
        }
    }

    /// The first server's `/metrics` text, when it answers 200.
    pub async fn metrics_text(&self) -> Option<String> {
        let resp = self.nodes[0].http.get_raw("/metrics", None).await.ok()?;
        (resp.status == 200).then_some(resp.body)
    }

    /// The server's RSS alone: /proc/PID/status (VmRSS) when the PID is
    /// known, else `viche_process_resident_memory_bytes`; with its source.
    pub async fn rss(&self) -> (Option<u64>, String) {
        if let Some(pid) = self.nodes[0].pid {
            if let Some(rss) = proc_rss_bytes(pid) {
                return (Some(rss), format!("proc:{pid}"));
            }
        }
        match self.metrics_text().await {
            Some(text) => (
                parse_prometheus(&text).get("viche_process_resident_memory_bytes").map(|v| *v as u64),
                "metrics".into(),
            ),
            None => (None, "none".into()),
        }
    }

    /// Every server's figures, summed (histogram buckets too); the CPUs
    /// allowed are those any of them may run on.
    pub async fn sample(&self) -> Sample {
        let mut samples = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            samples.push(node.sample().await);
        }
        let mut sum = samples.pop().expect("a probe has a server");
        let mut cpus: Option<std::collections::BTreeSet<usize>> =
            self.nodes.last().and_then(|n| crate::floor::allowed_cpus(n.pid)).map(|c| c.into_iter().collect());
        for (s, node) in samples.into_iter().zip(&self.nodes) {
            let add_f = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a + b);
            let add_u = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| a + b);
            sum.cpu_seconds = add_f(sum.cpu_seconds, s.cpu_seconds);
            sum.rss_bytes = add_u(sum.rss_bytes, s.rss_bytes);
            sum.deliveries = add_u(sum.deliveries, s.deliveries);
            sum.frames_out = add_u(sum.frames_out, s.frames_out);
            sum.frames_out_bytes = add_u(sum.frames_out_bytes, s.frames_out_bytes);
            sum.send_deliver_buckets = add_buckets(&sum.send_deliver_buckets, &s.send_deliver_buckets);
            sum.commit_buckets = add_buckets(&sum.commit_buckets, &s.commit_buckets);
            sum.source = format!("{}+{}", s.source, sum.source);
            if let (Some(all), Some(more)) = (cpus.as_mut(), crate::floor::allowed_cpus(node.pid)) {
                all.extend(more);
            }
        }
        if self.nodes.len() > 1 {
            sum.cpus_allowed = cpus.map(|c| c.len() as u64);
        }
        sum
    }
}

/// Two servers' cumulative buckets, summed bound by bound (the same
/// bounds: the same build).
fn add_buckets(a: &[(f64, f64)], b: &[(f64, f64)]) -> Vec<(f64, f64)> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.0 != y.0) {
        return Vec::new();
    }
    a.iter().zip(b).map(|(x, y)| (x.0, x.1 + y.1)).collect()
}

impl Node {
    async fn sample(&self) -> Sample {
        let mut s = Sample { source: "none".into(), machine_busy_seconds: machine_busy_seconds(), ..Sample::default() };
        if let Ok(resp) = self.http.get_raw("/metrics", None).await {
            if resp.status == 200 {
                let m = parse_prometheus(&resp.body);
                s.cpu_seconds = m.get("viche_process_cpu_seconds_total").copied();
                s.rss_bytes = m.get("viche_process_resident_memory_bytes").map(|v| *v as u64);
                s.deliveries = m.get("viche_deliveries_total").map(|v| *v as u64);
                s.frames_out = m.get("viche_frames_out_total").map(|v| *v as u64);
                s.frames_out_bytes = m.get("viche_frames_out_bytes_total").map(|v| *v as u64);
                s.send_deliver_buckets = buckets(&resp.body, "viche_send_deliver_latency_seconds_bucket");
                s.commit_buckets = buckets(&resp.body, "viche_store_commit_duration_seconds_bucket");
                s.source = "metrics".into();
            }
        }
        if let Some(pid) = self.pid {
            if let (Some(cpu), Some(rss)) = (proc_cpu_seconds(pid), proc_rss_bytes(pid)) {
                s.cpu_seconds = Some(cpu);
                s.rss_bytes = Some(rss);
                s.cpus_allowed = crate::floor::allowed_cpus(Some(pid)).map(|cpus| cpus.len() as u64);
                s.source = format!("proc:{pid}");
            }
        }
        s
    }
}

/// Every series of a Prometheus text by its full name (labels included).
pub fn series(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some((name, value)) = line.rsplit_once(char::is_whitespace) {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(name.trim().to_string(), v);
            }
        }
    }
    out
}

/// Counters that only measure traffic volume: left out of the server's view.
const VOLUME: [&str; 9] = [
    "viche_frames_in_bytes_total",
    "viche_frames_out_total",
    "viche_frames_out_bytes_total",
    "viche_deliveries_total",
    "viche_messages_stored_total",
    "viche_replayed_messages_total",
    "viche_process_cpu_seconds_total",
    "viche_logins_total",
    "viche_registrations_total",
];

/// Gauges shown at the end of a period.
const GAUGES: [&str; 4] =
    ["viche_connections_open", "viche_sessions", "viche_outbox_depth_max", "viche_process_open_fds"];

/// What the server counted between two `/metrics` texts: the increase of
/// every counter (`…_total`) that moved, but for traffic volume and
/// `frames_in` other than `bad_frame`; and a few gauges (`…@end`) at the
/// second text.
pub fn view(before: &str, after: &str) -> BTreeMap<String, f64> {
    let (a, b) = (series(before), series(after));
    let mut out = BTreeMap::new();
    for (k, v) in &b {
        let name = k.split('{').next().unwrap_or(k);
        if name.ends_with("_total")
            && !VOLUME.contains(&name)
            && (name != "viche_frames_in_total" || k.contains("bad_frame"))
        {
            let d = v - a.get(k).copied().unwrap_or(0.0);
            if d != 0.0 {
                out.insert(k.clone(), d);
            }
        } else if GAUGES.contains(&name) {
            out.insert(format!("{k}@end"), *v);
        }
    }
    out
}

/// The figures over a window from its two samples. `delivered` is the
/// generator's own count, used when the server exports none.
pub fn figures(before: &Sample, after: &Sample, delivered: u64) -> ServerFigures {
    let cpu = match (before.cpu_seconds, after.cpu_seconds) {
        (Some(a), Some(b)) => Some((b - a).max(0.0)),
        _ => None,
    };
    let deliveries = match (before.deliveries, after.deliveries) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let per = deliveries.unwrap_or(delivered);
    let (per_1000, per_us) = match cpu {
        Some(cpu) if per > 0 => (Some(cpu / per as f64 * 1000.0), Some(cpu / per as f64 * 1e6)),
        _ => (None, None),
    };
    ServerFigures {
        source: if after.source == before.source {
            after.source.clone()
        } else {
            format!("{} → {}", before.source, after.source)
        },
        cpu_seconds: cpu,
        deliveries,
        cpu_s_per_1000_deliveries: per_1000,
        cpu_us_per_delivery: per_us,
        rss_before_bytes: before.rss_bytes,
        rss_after_bytes: after.rss_bytes,
        rss_per_session_bytes: None,
        sessions: None,
        send_deliver_within: shares(&before.send_deliver_buckets, &after.send_deliver_buckets),
        commit_within: shares(&before.commit_buckets, &after.commit_buckets),
        machine_cpu_seconds: match (before.machine_busy_seconds, after.machine_busy_seconds) {
            (Some(a), Some(b)) => Some((b - a).max(0.0)),
            _ => None,
        },
        cpus_allowed: after.cpus_allowed,
        frame_bytes_mean: match (before.frames_out, after.frames_out, before.frames_out_bytes, after.frames_out_bytes) {
            (Some(fa), Some(fb), Some(ba), Some(bb)) if fb > fa && bb > ba => Some((bb - ba) as f64 / (fb - fa) as f64),
            _ => None,
        },
        ..ServerFigures::default()
    }
}

/// The share of the window's observations at or under each bucket bound
/// (in ms), from two cumulative samples of one histogram.
fn shares(before: &[(f64, f64)], after: &[(f64, f64)]) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let count = |b: &[(f64, f64)], le: f64| b.iter().find(|(l, _)| *l == le).map_or(0.0, |(_, v)| *v);
    let total = count(after, f64::INFINITY) - count(before, f64::INFINITY);
    if total <= 0.0 {
        return out;
    }
    for &(le, v) in after.iter().filter(|(le, _)| le.is_finite()) {
        let share = (v - count(before, le)) / total;
        out.insert(format!("{}", le * 1000.0), (share * 10_000.0).round() / 10_000.0);
    }
    out
}

/// Busy CPU seconds of the machine since boot: every state of /proc/stat's
/// `cpu` line but idle and iowait.
#[allow(unsafe_code)] // sysconf
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let f: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    if f.len() < 8 {
        return None;
    }
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy as f64 / hz)
}

#[allow(unsafe_code)] // sysconf
fn proc_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ") ".
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The PID of the process listening on TCP `port` on this machine, found
/// through /proc/net/tcp{,6} and the processes' open sockets.
pub fn find_listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let local_port = f[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                inodes.push(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let text = "# HELP x y\n# TYPE viche_deliveries_total counter\nviche_deliveries_total 1234\n\
                    viche_frames_out_total{type=\"msg\"} 5\nviche_frames_out_total{type=\"ack\"} 7\n\
                    viche_process_resident_memory_bytes 1.5e7\n";
        let m = parse_prometheus(text);
        assert_eq!(m["viche_deliveries_total"], 1234.0);
        assert_eq!(m["viche_frames_out_total"], 12.0);
        assert_eq!(m["viche_process_resident_memory_bytes"], 15_000_000.0);
    }

    #[test]
    fn the_servers_view_of_a_period() {
        let a = "viche_connections_closed_total{code=\"4008\"} 1\nviche_deliveries_total 10\n\
                 viche_frames_in_total{type=\"bad_frame\"} 2\nviche_frames_in_total{type=\"send\"} 5\n";
        let b = "viche_connections_closed_total{code=\"4008\"} 4\nviche_deliveries_total 99\n\
                 viche_frames_in_total{type=\"bad_frame\"} 7\nviche_frames_in_total{type=\"send\"} 50\n\
                 viche_rate_limited_total{kind=\"login\"} 3\nviche_connections_open 12\n";
        let v = view(a, b);
        assert_eq!(v["viche_connections_closed_total{code=\"4008\"}"], 3.0);
        assert_eq!(v["viche_frames_in_total{type=\"bad_frame\"}"], 5.0);
        assert_eq!(v["viche_rate_limited_total{kind=\"login\"}"], 3.0);
        assert_eq!(v["viche_connections_open@end"], 12.0);
        assert_eq!(v.len(), 4, "{v:?}");
    }

    #[test]
    fn figures_over_a_window() {
        let a = Sample {
            cpu_seconds: Some(1.0),
            rss_bytes: Some(10),
            deliveries: Some(1000),
            source: "metrics".into(),
            ..Sample::default()
        };
        let b = Sample {
            cpu_seconds: Some(1.5),
            rss_bytes: Some(20),
            deliveries: Some(501_000),
            source: "metrics".into(),
            ..Sample::default()
        };
        let f = figures(&a, &b, 0);
        assert_eq!(f.deliveries, Some(500_000));
        assert_eq!(f.frame_bytes_mean, None, "no frame counters");
        let a = Sample { frames_out: Some(10), frames_out_bytes: Some(1_900), ..a };
        let b = Sample { frames_out: Some(1_010), frames_out_bytes: Some(194_900), ..b };
        assert_eq!(figures(&a, &b, 0).frame_bytes_mean, Some(193.0));
        assert!((f.cpu_us_per_delivery.unwrap() - 1.0).abs() < 1e-9);
        assert!((f.cpu_s_per_1000_deliveries.unwrap() - 0.001).abs() < 1e-12);
    }

    #[test]
    fn shares_of_a_histogram_over_a_window() {
        let t0 = "h_bucket{le=\"0.001\"} 10\nh_bucket{le=\"0.005\"} 10\nh_bucket{le=\"+Inf\"} 10\n";
        let t1 = "h_bucket{le=\"0.001\"} 60\nh_bucket{le=\"0.005\"} 100\nh_bucket{le=\"+Inf\"} 110\n";
        let s = shares(&buckets(t0, "h_bucket"), &buckets(t1, "h_bucket"));
        assert_eq!(s["1"], 0.5);
        assert_eq!(s["5"], 0.9);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(proc_cpu_seconds(pid).is_some());
        assert!(proc_rss_bytes(pid).unwrap() > 0);
    }
}
