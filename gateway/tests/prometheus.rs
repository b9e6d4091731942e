//! Issue #4's proof against a real Prometheus: start viche and a
//! Prometheus scraping it every second, drive traffic with the client
//! crate (sends, DMs, a slow consumer, a rate-limited burst, failed logins),
//! then evaluate every query of every Grafana panel through Prometheus's
//! HTTP API and require data; check the config and the alerting rules with
//! promtool; require every metric name the dashboards and alerts use to be
//! one the server exports.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool` on the
//! PATH; `.ci/run` installs it). Without it the test is skipped, unless the
//! environment variable CI is set: then it fails, so CI cannot skip it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use viche_client::{ClientError, ClientFrame, Connection, Encoding, ErrorCode, Event, ServerFrame};

/// What the dashboards' variables become when their queries are evaluated
/// here. The rate window covers the whole test, so every counter that moved
/// has a non-zero rate.
const RATE_WINDOW: &str = "5m";

/// Large bodies, so that a client that does not read fills the kernel's
/// socket buffers and then its outbox (as in `e2e/limits.rs`).
const BIG: usize = 512 * 1024;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

fn grafana_dir() -> PathBuf {
    repo_root().join("grafana")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// `prometheus` and `promtool`, or `None` to skip (only when CI is unset).
fn tools() -> Option<(PathBuf, PathBuf)> {
    match (find_on_path("prometheus"), find_on_path("promtool")) {
        (Some(prometheus), Some(promtool)) => Some((prometheus, promtool)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but `prometheus`/`promtool` are not on the PATH: .ci/run must install Debian's prometheus package")
        }
        _ => {
            eprintln!(
                "SKIPPED: `prometheus` and `promtool` are not installed (apt-get install prometheus); CI is unset"
            );
            None
        }
    }
}

fn promtool(promtool: &Path, args: &[&str], dir: &Path) {
    let out = Command::new(promtool).args(args).current_dir(dir).output().expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus child process on a free loopback port with its own config
/// and TSDB in a temp dir; killed on drop.
struct Prometheus {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    http: reqwest::Client,
}

impl Prometheus {
    fn config(viche_port: u16, rules: &Path) -> String {
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: viche\n    scrape_interval: 1s\n    scrape_timeout: 1s\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: ['127.0.0.1:{viche_port}']\n",
            rules = rules.display()
        )
    }

    async fn start(binary: &Path, promtool_bin: &Path, viche_port: u16) -> Prometheus {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
        let mut last = String::new();
        // A fresh port (and dir) per attempt: another process may take the
        // port between our probe and Prometheus's bind.
        for _attempt in 0..5 {
            let dir = tempfile::Builder::new().prefix("viche-prometheus-").tempdir().expect("a temp dir");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(&config, Self::config(viche_port, &grafana_dir().join("alerts.yml")))
                .expect("writing prometheus.yml");
            promtool(promtool_bin, &["check", "config", config.to_str().unwrap()], dir.path());
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let log = File::create(dir.path().join("prometheus.log")).expect("prometheus log");
            let child = Command::new(binary)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--log.level=warn")
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawning prometheus");
            let mut p = Prometheus { child: Some(child), dir, port, http: http.clone() };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(status)) = p.child.as_mut().unwrap().try_wait() {
                    last = format!("prometheus exited with {status}: {}", p.log_tail());
                    break;
                }
                if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/-/ready")).send().await {
                    if r.status().is_success() {
                        return p;
                    }
                }
                assert!(Instant::now() < deadline, "prometheus not ready within 60 s: {}", p.log_tail());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("prometheus did not start: {last}");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = File::open(self.dir.path().join("prometheus.log")) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(4000)));
            let _ = f.read_to_string(&mut out);
        }
        out
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Value {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let resp = self.http.get(&url).query(params).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = resp.json().await.unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"));
        body
    }

    /// An instant query: `Ok(result)` or `Err(error text)`.
    async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = self.api("/api/v1/query", &[("query", expr)]).await;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        match &body["data"]["result"] {
            Value::Array(v) => Ok(v.clone()),
            other => Ok(vec![other.clone()]),
        }
    }

    /// The value of a query returning one sample, if it does.
    async fn scalar(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- prometheus log (tail) -----\n{}\n----- end -----", self.log_tail());
        }
    }
}

// ----- the exposition text ----------------------------------------------------

/// Every sample of a `/metrics` text: (name, labels text) → value.
fn samples(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], &series[i..]),
            None => (series, ""),
        };
        if let Ok(v) = value.parse::<f64>() {
            out.insert((name.to_string(), labels.to_string()), v);
        }
    }
    out
}

/// The sum of every series of `name`.
fn total(samples: &BTreeMap<(String, String), f64>, name: &str) -> f64 {
    samples.iter().filter(|((n, _), _)| n == name).map(|(_, v)| v).sum()
}

fn value_of(samples: &BTreeMap<(String, String), f64>, name: &str, labels: &str) -> f64 {
    samples.get(&(name.to_string(), labels.to_string())).copied().unwrap_or(0.0)
}

/// The metric names a scrape exposes (histograms with their series names).
fn exported_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.insert(name.to_string());
        if kind == "histogram" || kind == "summary" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// `viche_…` identifiers in a query or rule text.
fn viche_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("viche_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

async fn scrape(server: &Server) -> String {
    let r = server.http().get_raw("/metrics", None).await.expect("GET /metrics");
    assert_eq!(r.status, 200);
    r.body
}

// ----- the dashboards -----------------------------------------------------------

struct PanelQuery {
    dashboard: String,
    panel: String,
    expr: String,
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = grafana_dir().join("dashboards");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("grafana/dashboards") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).unwrap();
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            out.push((path.file_name().unwrap().to_string_lossy().into_owned(), json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        out.push(p);
        for nested in p["panels"].as_array().into_iter().flatten() {
            out.push(nested);
        }
    }
    out
}

/// Checks what makes a dashboard importable into any Grafana 10 or 11 and
/// readable; returns its queries.
fn check_dashboard(file: &str, d: &Value, problems: &mut Vec<String>) -> Vec<PanelQuery> {
    let schema = d["schemaVersion"].as_u64().unwrap_or(0);
    if schema < 38 {
        problems.push(format!("{file}: schemaVersion {schema} < 38"));
    }
    let vars = d["templating"]["list"].as_array().cloned().unwrap_or_default();
    if !vars.iter().any(|v| v["type"] == "datasource" && v["name"] == "datasource" && v["query"] == "prometheus") {
        problems.push(format!("{file}: no `datasource` template variable of type datasource (prometheus)"));
    }
    for v in &vars {
        if v["type"] == "query" && v["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{file}: variable {} does not use ${{datasource}}", v["name"]));
        }
    }
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        if !ids.insert(p["id"].as_u64().unwrap_or(0)) {
            problems.push(format!("{file}: duplicate panel id {}", p["id"]));
        }
        if p["type"] == "row" {
            continue;
        }
        if p["description"].as_str().is_none_or(|s| s.trim().is_empty()) {
            problems.push(format!("{file}: panel {title:?} has no description"));
        }
        if p["fieldConfig"]["defaults"]["unit"].as_str().is_none_or(|s| s.is_empty()) {
            problems.push(format!("{file}: panel {title:?} has no unit"));
        }
        if p["datasource"]["uid"] != "${datasource}" {
            problems.push(format!("{file}: panel {title:?} does not use the ${{datasource}} variable"));
        }
        let targets = p["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{file}: panel {title:?} has no query"));
        }
        for t in targets {
            if t["datasource"]["uid"] != "${datasource}" {
                problems.push(format!("{file}: a query of {title:?} does not use the ${{datasource}} variable"));
            }
            match t["expr"].as_str() {
                Some(expr) if !expr.trim().is_empty() => queries.push(PanelQuery {
                    dashboard: file.to_string(),
                    panel: title.clone(),
                    expr: expr.to_string(),
                }),
                _ => problems.push(format!("{file}: a query of {title:?} has no expr")),
            }
        }
    }
    queries
}

/// The template variables substituted as Grafana would for this target.
fn substitute(expr: &str, instance: &str) -> String {
    expr.replace("$__rate_interval", RATE_WINDOW)
        .replace("$__interval", "1s")
        .replace("${job}", "viche")
        .replace("$job", "viche")
        .replace("${instance}", instance)
        .replace("$instance", instance)
}

// ----- traffic -------------------------------------------------------------------

async fn wait_reply_any(conn: &mut Connection, req: u64) -> Result<ServerFrame, ClientError> {
    conn.wait_reply(req, T).await
}

/// Drives every kind of traffic the dashboards show.
async fn drive_traffic(server: &Server) {
    let http = server.http();
    // Registrations (argon2 hashes) and logins (argon2 verifies).
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let carol = server.user("carol").await;
    let slow_token = server.user("slowpoke").await;
    http.login("alice", PASSWORD).await.expect("a good login");

    // Sessions in a room: sends, typing, history, ping, a DM.
    let mut a = server.connect(&alice).await;
    let mut b = server.connect(&bob).await;
    let mut c = server.connect_enc(&carol, Encoding::Json).await;
    for conn in [&mut a, &mut b, &mut c] {
        conn.join("lobby", None).await.unwrap();
    }
    send_n(&mut a, "lobby", 20, "a").await;
    send_n(&mut b, "lobby", 5, "b").await;
    a.typing("lobby").await.unwrap();
    a.history("lobby", None, Some(10)).await.unwrap();
    a.ping().await.unwrap();
    for i in 0..5 {
        a.dm("bob", &format!("hi bob {i}"), &format!("dm-{i}")).await.unwrap();
    }
    server.http().history(&alice, "lobby", None, Some(5)).await.expect("HTTP history");
    let _ = server.http().get_raw("/readyz", None).await.unwrap();

    // A rate-limited burst: past the burst of 50, `rate_limited`.
    let frames: Vec<_> = (0..80u64)
        .map(|i| ClientFrame::Send {
            req: 5000 + i,
            room: "lobby".into(),
            body: format!("burst {i}"),
            cid: format!("burst-{i}"),
            reply_to: None,
        })
        .collect();
    c.send_frames(&frames).await.unwrap();
    let mut limited = 0;
    for i in 0..80u64 {
        match wait_reply_any(&mut c, 5000 + i).await {
            Ok(ServerFrame::Ack { .. }) => {}
            Err(ClientError::Server { code: ErrorCode::RateLimited, .. }) => limited += 1,
            other => panic!("burst reply {i}: {other:?}"),
        }
    }
    assert!(limited > 0, "the burst was rate limited");

    // A frame that does not decode, and a token that does not verify.
    c.send_raw_text("{not json".into()).await.unwrap();
    let _ = c
        .wait_for(T, |f| matches!(f, ServerFrame::Error { code: ErrorCode::BadFrame, .. }))
        .await
        .expect("bad_frame error");
    match Connection::open(&server.ws_url(), "not-a-token", Encoding::MsgPack).await {
        Err(_) => {}
        Ok(_) => panic!("a bad token was accepted"),
    }

    // A slow consumer: joins the firehose and reads nothing.
    let mut slow = server.connect(&slow_token).await;
    slow.join("firehose", None).await.unwrap();
    let mut sender = server.connect(&alice).await;
    sender.join("firehose", None).await.unwrap();
    let body = "z".repeat(BIG);
    let mut closed = false;
    for i in 0..120 {
        send_retrying(&mut sender, "firehose", &body, &format!("big{i}")).await;
        sender.take_pending();
        if i % 5 == 4 {
            let s = samples(&scrape(server).await);
            if value_of(&s, "viche_slow_consumers_total", "{reason=\"outbox_full\"}") >= 1.0 {
                closed = true;
                break;
            }
        }
    }
    assert!(closed, "the slow consumer was closed");
    let close = loop {
        match slow.next_frame(Duration::from_secs(60)).await.expect("the slow consumer is closed") {
            Event::Frame(_) => {}
            Event::Closed(info) => break info,
        }
    };
    // The close frame is written only if the socket takes it within 1 s;
    // a client that reads nothing is reset instead.
    assert!(matches!(close.code, Some(4008) | None), "{close}");

    // Failed logins: a wrong password, unknown users, then 429.
    let err = http.login("alice", "wrong password!").await.expect_err("a wrong password");
    assert_eq!(err.status(), Some(401), "{err}");
    let mut limited_logins = 0;
    for i in 0..12 {
        match http.login(&format!("nobody{i}"), "wrong password!").await {
            Err(e) if e.status() == Some(401) => {}
            Err(e) if e.status() == Some(429) => limited_logins += 1,
            other => panic!("failed login {i}: {other:?}"),
        }
    }
    assert!(limited_logins > 0, "failed logins were rate limited");

    // Everyone leaves; closes are counted by code.
    for mut conn in [a, b, c, sender] {
        let _ = conn.close().await;
    }
}

// ----- the test --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_hold_against_a_real_prometheus() {
    let Some((prometheus_bin, promtool_bin)) = tools() else { return };

    // The shipped config and rules pass promtool (the config names
    // alerts.yml relative to itself, hence the working directory).
    let grafana = grafana_dir();
    promtool(&promtool_bin, &["check", "config", "prometheus.yml"], &grafana);
    promtool(&promtool_bin, &["check", "rules", "alerts.yml"], &grafana);
    if grafana.join("alerts_test.yml").exists() {
        promtool(&promtool_bin, &["test", "rules", "alerts_test.yml"], &grafana);
    }

    let server = Server::start_with(Opts {
        max_frame_bytes: Some(1024 * 1024),
        max_body_bytes: Some(BIG as u64),
        outbox_max_bytes: Some(4 * 1024 * 1024),
        // A few failed logins from one address are enough to see 429s,
        // however slow argon2 runs (at the default refill of one every 2 s,
        // a loaded machine's 2 s hashes never emptied the bucket).
        extra_args: ["--failed-logins-per-address-burst", "8", "--failed-logins-per-address-per-minute", "1"]
            .map(String::from)
            .to_vec(),
        ..Opts::default()
    })
    .await;
    let prometheus = Prometheus::start(&prometheus_bin, &promtool_bin, server.port()).await;
    let instance = format!("127.0.0.1:{}", server.port());

    // Prometheus scrapes viche.
    let deadline = Instant::now() + T;
    while prometheus.scalar(&format!("up{{job=\"viche\",instance=\"{instance}\"}}")).await != Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped viche: {:?}",
            prometheus.api("/api/v1/targets", &[]).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drive_traffic(&server).await;

    // Every connection has ended and been counted once, by close code.
    let deadline = Instant::now() + T;
    let text = loop {
        let text = scrape(&server).await;
        let s = samples(&text);
        if total(&s, "viche_connections_open") == 0.0 && total(&s, "viche_sessions") == 0.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "connections still open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = samples(&text);
    assert_eq!(
        total(&s, "viche_connections_accepted_total"),
        total(&s, "viche_connections_closed_total"),
        "every accepted connection is closed once"
    );
    assert!(value_of(&s, "viche_connections_closed_total", "{code=\"4008\"}") >= 1.0);
    assert!(value_of(&s, "viche_connections_closed_total", "{code=\"4001\"}") >= 1.0);
    assert!(value_of(&s, "viche_rate_limited_total", "{kind=\"send\"}") >= 1.0);
    assert!(value_of(&s, "viche_rate_limited_total", "{kind=\"login\"}") >= 1.0);
    assert!(value_of(&s, "viche_auth_failures_total", "{reason=\"wrong_password\"}") >= 1.0);
    assert!(value_of(&s, "viche_auth_failures_total", "{reason=\"unknown_user\"}") >= 1.0);
    assert!(value_of(&s, "viche_frames_in_total", "{type=\"bad_frame\"}") >= 1.0);
    assert!(value_of(&s, "viche_frames_out_total", "{type=\"msg\"}") >= total(&s, "viche_deliveries_total"));
    assert!(
        total(&s, "viche_deliveries_total") > total(&s, "viche_messages_stored_total"),
        "fan-out delivers to several members"
    );
    assert_eq!(total(&s, "viche_store_ready"), 1.0);

    // Prometheus has what viche last said (traffic is over, so these no
    // longer change), and has scraped twice since, so that series born
    // late in the traffic have two samples for rate().
    for name in [
        "viche_messages_stored_total",
        "viche_auth_failures_total",
        "viche_rate_limited_total",
        "viche_connections_closed_total",
    ] {
        let want = total(&s, name);
        let deadline = Instant::now() + T;
        while prometheus.scalar(&format!("sum({name})")).await != Some(want) {
            assert!(Instant::now() < deadline, "prometheus did not catch up with {name} = {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // Every metric name used by a dashboard or an alert is exported.
    let exported = exported_names(&text);
    let mut used = BTreeMap::<String, String>::new();
    let mut problems = Vec::new();
    let mut queries = Vec::new();
    let all = dashboards();
    assert!(all.len() >= 3, "grafana/dashboards has the overview, storage and auth/abuse dashboards");
    for (file, d) in &all {
        queries.extend(check_dashboard(file, d, &mut problems));
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            for name in viche_names(&v["definition"].to_string()) {
                used.entry(name).or_insert_with(|| format!("{file} variable {}", v["name"]));
            }
        }
    }
    for q in &queries {
        for name in viche_names(&q.expr) {
            used.entry(name).or_insert_with(|| format!("{} / {}", q.dashboard, q.panel));
        }
    }
    let alerts_text = std::fs::read_to_string(grafana.join("alerts.yml")).unwrap();
    for name in viche_names(&alerts_text) {
        used.entry(name).or_insert_with(|| "alerts.yml".into());
    }
    for (name, where_) in &used {
        if !exported.contains(name) {
            problems.push(format!("{where_}: uses {name}, which the server does not export"));
        }
    }
    assert!(used.len() >= 25, "the dashboards use {} metric names", used.len());

    // The dashboards' variables resolve.
    let jobs = prometheus.api("/api/v1/label/job/values", &[("match[]", "viche_build_info")]).await;
    assert!(
        jobs["data"].as_array().is_some_and(|v| v.iter().any(|j| j == "viche")),
        "label_values(viche_build_info, job): {jobs}"
    );
    let instances =
        prometheus.api("/api/v1/label/instance/values", &[("match[]", "viche_build_info{job=~\"viche\"}")]).await;
    assert!(instances["data"].as_array().is_some_and(|v| v.iter().any(|i| *i == instance)), "instances: {instances}");

    // Every panel's query returns data.
    let mut evaluated = 0;
    let mut nonzero = 0;
    for q in &queries {
        let expr = substitute(&q.expr, &instance);
        if expr.contains('$') {
            problems.push(format!("{} / {}: unknown variable left in {expr}", q.dashboard, q.panel));
            continue;
        }
        match prometheus.query(&expr).await {
            Err(e) => problems.push(format!("{} / {}: {expr}: {e}", q.dashboard, q.panel)),
            Ok(result) if result.is_empty() => {
                problems.push(format!("{} / {}: no data for {expr}", q.dashboard, q.panel))
            }
            Ok(result) => {
                evaluated += 1;
                let any_nonzero = result.iter().any(|r| {
                    r["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v.is_finite() && v != 0.0)
                });
                nonzero += any_nonzero as usize;
            }
        }
    }
    eprintln!("{evaluated} of {} panel queries returned data ({nonzero} with a non-zero value)", queries.len());

    // The headline numbers are real, not just present.
    let sel = format!("job=\"viche\",instance=\"{instance}\"");
    for (what, expr) in [
        ("send→deliver p99", format!("histogram_quantile(0.99, sum by (le) (rate(viche_send_deliver_latency_seconds_bucket{{{sel}}}[{RATE_WINDOW}])))")),
        ("deliveries/s", format!("sum(rate(viche_deliveries_total{{{sel}}}[{RATE_WINDOW}]))")),
        ("commit p50", format!("histogram_quantile(0.5, sum by (le) (rate(viche_store_commit_duration_seconds_bucket{{{sel}}}[{RATE_WINDOW}])))")),
        ("slow consumers", format!("sum(increase(viche_slow_consumers_total{{{sel}}}[{RATE_WINDOW}]))")),
        ("rate-limited sends", format!("sum(increase(viche_rate_limited_total{{{sel},kind=\"send\"}}[{RATE_WINDOW}]))")),
        ("failed logins", format!("sum(increase(viche_auth_failures_total{{{sel},reason=~\"wrong_password|unknown_user\"}}[{RATE_WINDOW}]))")),
        ("DMs in", format!("sum(increase(viche_frames_in_total{{{sel},type=\"dm\"}}[{RATE_WINDOW}]))")),
        ("argon2 p50", format!("histogram_quantile(0.5, sum by (le) (rate(viche_argon2_duration_seconds_bucket{{{sel}}}[{RATE_WINDOW}])))")),
        ("resident memory", format!("sum(viche_process_resident_memory_bytes{{{sel}}})")),
        ("open fds", format!("sum(viche_process_open_fds{{{sel}}})")),
    ] {
        match prometheus.scalar(&expr).await {
            Some(v) if v.is_finite() && v > 0.0 => eprintln!("{what}: {v}"),
            other => problems.push(format!("{what}: expected a positive value from {expr}, got {other:?}")),
        }
    }

    // Prometheus loaded every alerting rule and evaluates it without error.
    let deadline = Instant::now() + T;
    loop {
        let rules = prometheus.api("/api/v1/rules", &[]).await;
        let list: Vec<Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let unhealthy: Vec<String> = list
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{} {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if !list.is_empty() && unhealthy.is_empty() {
            assert!(list.len() >= 5, "alert rules loaded: {}", list.len());
            break;
        }
        if Instant::now() > deadline {
            problems.push(format!("alert rules not all healthy: {unhealthy:?} ({} loaded)", list.len()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert!(problems.is_empty(), "{} problems:\n{}", problems.len(), problems.join("\n"));
}
