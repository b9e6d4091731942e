//! A run: the coordinator (checks, server samples, progress, the report)
//! and, with `--workers N`, the worker processes it re-executes.
//!
//! Workers speak lines on their stdout, to the coordinator:
//! `SETUP ready failed total` while connecting, `READY ready failed total`,
//! `TICK t sends deliveries errors p99_ns` once a second, and
//! `REPORT {json}` (a [`Raw`]) at the end. The coordinator answers on
//! their stdin with one line, `GO start_ns window_start_ns window_end_ns`
//! (CLOCK_MONOTONIC, shared by every process of the machine). A worker
//! whose stdin closes before it is done exits at once.

use std::net::IpAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use viche_client::{Encoding, HttpClient};

use crate::cli::{self, Cli, Cmd, Command, EncodingArg};
use crate::clock::{instant_at, mono_ns, unix_ms};
use crate::live::Live;
use crate::net::{self, Target, Tokens};
use crate::report::{c, Expectation, Host, Raw, Report, TimelinePoint};
use crate::server::{self, Probe};
use crate::traffic::{self, Ctx, Running, Start};

/// Time from "everyone is ready" to the first send.
const START_DELAY: Duration = Duration::from_millis(300);

pub async fn main(cli: Cli) -> anyhow::Result<u8> {
    let cmd = match cli.cmd {
        Command::Server(cmd) => cmd,
        Command::Floor(a) => {
            // Its own bound: the warm-up, the window, the pairs' setup, flush and drain.
            watchdog(Duration::from_secs_f64(a.warmup.max(0.0) + a.duration.max(0.0) + 120.0));
            return crate::floor::scenario(a).await;
        }
    };
    cmd.validate().map_err(anyhow::Error::msg)?;
    let common = cmd.common().clone();
    let targets = net::targets(&common.url, common.allow_remote)?;
    if targets.len() > 1 && matches!(cmd, Cmd::Hostile(_) | Cmd::Soak(_)) {
        bail!("{}: one --url only (several are for the traffic scenarios, over a cluster)", cmd.name());
    }
    let target = targets[0].clone();
    let source_ips = match &common.source_ips {
        Some(spec) => net::source_ips(spec, common.allow_remote)?,
        None => Vec::new(),
    };
    let tokens = tokens(&cmd)?;
    // Every run stops by itself: a watchdog ends the process past its bound
    // (`hostile` runs two phases, each with its setup, warm-up, window and drain).
    let phases = if matches!(cmd, Cmd::Hostile(_)) { 2.0 } else { 1.0 };
    let floor = if common.no_floor { 0.0 } else { common.floor_duration + 30.0 };
    let budget = phases * (common.setup_timeout + common.warmup + common.duration + common.drain) + floor + 60.0;
    watchdog(Duration::from_secs_f64(budget + if common.worker_index.is_some() { 30.0 } else { 0.0 }));
    match (common.worker_index, &cmd) {
        (Some(index), _) => worker(cmd, targets, source_ips, tokens, index).await,
        (None, Cmd::Hostile(_)) => crate::hostile::coordinator(cmd, target, source_ips, tokens).await,
        (None, Cmd::Soak(_)) => crate::soak::coordinator(cmd, target, source_ips, tokens).await,
        (None, _) => coordinator(cmd, targets, source_ips, tokens).await,
    }
}

fn tokens(cmd: &Cmd) -> anyhow::Result<Tokens> {
    let common = cmd.common();
    let ttl =
        Duration::from_secs_f64((common.setup_timeout + common.warmup + common.duration + common.drain).max(86_400.0));
    Ok(match (common.login, &common.jwt_secret, cmd) {
        (_, None, Cmd::Hostile(_)) | (true, _, Cmd::Hostile(_)) => {
            bail!("hostile needs --jwt-secret (the server's) and no --login: its hundreds of clients get minted tokens")
        }
        (true, _, _) => Tokens::Login,
        (false, Some(secret), _) => Tokens::Mint { secret: secret.clone(), ttl },
        (false, None, Cmd::Dm(_) | Cmd::Login(_) | Cmd::Soak(_)) => Tokens::Register,
        (false, None, _) => {
            bail!("give --jwt-secret (the server's, to mint tokens) or --login (register and log in real users)")
        }
    })
}

pub(crate) fn watchdog(after: Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        eprintln!("viche-load: the run passed its time bound ({:.0} s); exiting", after.as_secs_f64());
        std::process::exit(3);
    });
}

pub(crate) fn random_tag() -> String {
    let x = cli::mix(unix_ms() ^ mono_ns(), std::process::id() as u64);
    format!("lt{:07x}", x & 0xfff_ffff)
}

pub fn host() -> Host {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    Host { nproc: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), cpu_model, kernel }
}

pub(crate) fn ctx(
    cmd: &Cmd,
    targets: &[Target],
    source_ips: &[IpAddr],
    tokens: Tokens,
    tag: &str,
    live: Arc<Live>,
) -> anyhow::Result<Arc<Ctx>> {
    let common = cmd.common();
    let timeout = Duration::from_secs(60);
    // HTTP (tokens, history) goes to the first server.
    let target = &targets[0];
    let http = if source_ips.is_empty() {
        vec![HttpClient::with_timeout(&target.http, timeout)?]
    } else {
        source_ips
            .iter()
            .map(|ip| HttpClient::with_local_address(&target.http, timeout, Some(*ip)))
            .collect::<Result<_, _>>()?
    };
    Ok(Arc::new(Ctx {
        ws_urls: targets.iter().map(|t| t.ws.clone()).collect(),
        senders_on_first_url: common.senders_on_first_url,
        tokens,
        encoding: match common.encoding {
            EncodingArg::Msgpack => Encoding::MsgPack,
            EncodingArg::Json => Encoding::Json,
        },
        source_ips: source_ips.to_vec(),
        http,
        connect_sem: Arc::new(Semaphore::new(common.connect_concurrency)),
        live,
        stop: CancellationToken::new(),
        setup_deadline: Instant::now() + Duration::from_secs_f64(common.setup_timeout),
        run_tag: tag.to_string(),
        password: common.password.clone(),
    }))
}

pub(crate) fn start_of(cmd: &Cmd) -> Start {
    let common = cmd.common();
    let start_ns = mono_ns() + START_DELAY.as_nanos() as u64;
    let window_start_ns = start_ns + (common.warmup * 1e9) as u64;
    Start { start_ns, window_start_ns, window_end_ns: window_start_ns + (common.duration * 1e9) as u64 }
}

// ----- progress --------------------------------------------------------------

#[derive(Clone)]
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    warmup_s: f64,
}

impl Progress {
    pub(crate) fn new(enabled: bool, warmup_s: f64) -> Self {
        let bar = enabled.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed_precise} [{bar:28}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        Progress { bar, warmup_s }
    }

    pub(crate) fn setup(&self, ready: usize, failed: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position((ready + failed) as u64);
            bar.set_message(format!("sessions connecting: {ready} ready, {failed} failed"));
        }
    }

    pub(crate) fn running(&self, seconds: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(seconds);
            bar.set_position(0);
            bar.set_message("starting");
        }
    }

    pub(crate) fn tick(&self, t: u64, sends: u64, deliveries: u64, errors: u64, p99_ms: f64, total_s: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(t.min(total_s));
            let phase = if (t as f64) <= self.warmup_s {
                "warm-up"
            } else if t <= total_s {
                "measuring"
            } else {
                "draining"
            };
            bar.set_message(format!(
                "{phase}: {sends} sends/s, {deliveries} deliveries/s, p99 {p99_ms:.2} ms, {errors} errors"
            ));
        }
    }

    pub(crate) fn message(&self, text: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(text.to_string());
        }
    }

    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

// ----- the coordinator -------------------------------------------------------

/// What every coordinator starts with: the server answers, its PID (for
/// /proc), the run's tag.
pub(crate) struct Prepared {
    pub tag: String,
    pub started_unix_ms: u64,
    pub probe: Arc<Probe>,
    pub baseline: server::Sample,
}

/// Checks that every server answers, finds their PIDs, samples them once.
pub(crate) async fn prepare(cmd: &Cmd, targets: &[Target]) -> anyhow::Result<Prepared> {
    let common = cmd.common();
    let tag = common.run_tag.clone().unwrap_or_else(random_tag);
    let started_unix_ms = unix_ms();
    let mut nodes = Vec::with_capacity(targets.len());
    for target in targets {
        let http = HttpClient::with_timeout(&target.http, Duration::from_secs(10))?;
        let health = http
            .get_raw("/healthz", None)
            .await
            .with_context(|| format!("the server at {} does not answer", target.http))?;
        if health.status != 200 {
            bail!("the server at {} answers /healthz with {}", target.http, health.status);
        }
        let loopback = target.host == "localhost" || target.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
        // --server-pid names the first server's only.
        let given = if nodes.is_empty() { common.server_pid } else { None };
        let pid = given.or_else(|| if loopback { server::find_listening_pid(target.port) } else { None });
        nodes.push((target.http.clone(), pid));
    }
    let probe = Arc::new(Probe::new(&nodes)?);
    let baseline = probe.sample().await;
    eprintln!(
        "viche-load {}: target {}, run tag {tag}, {} process{}, server pid {}",
        cmd.name(),
        targets.iter().map(|t| t.http.as_str()).collect::<Vec<_>>().join(","),
        common.workers,
        if common.workers == 1 { "" } else { "es" },
        nodes
            .iter()
            .map(|(_, pid)| pid.map_or("unknown (figures from /metrics)".to_string(), |p| p.to_string()))
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(Prepared { tag, started_unix_ms, probe, baseline })
}

/// Prints the table, writes `--json` and `--plot`.
pub(crate) fn output(report: &Report, common: &cli::Common) -> anyhow::Result<()> {
    write_report(report, common.json.as_deref(), common.plot.as_deref())
}

/// Prints the table, writes the JSON report and the plot where asked.
pub(crate) fn write_report(
    report: &Report,
    json: Option<&std::path::Path>,
    plot: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }
    if let Some(path) = plot {
        crate::plot::write_svg(report, path)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(())
}

async fn coordinator(cmd: Cmd, targets: Vec<Target>, source_ips: Vec<IpAddr>, tokens: Tokens) -> anyhow::Result<u8> {
    let common = cmd.common().clone();
    let Prepared { tag, started_unix_ms, probe, baseline } = prepare(&cmd, &targets).await?;
    let progress = Progress::new(!common.no_progress, common.warmup);
    let total_s = (common.warmup + common.duration).ceil() as u64;
    let drain = Duration::from_secs_f64(common.drain);
    let is_login = matches!(cmd, Cmd::Login(_));
    let setup_deadline = Instant::now() + Duration::from_secs_f64(common.setup_timeout);

    let (raw, start, samples, window_s) = if common.workers == 1 {
        let live = Arc::new(Live::default());
        let ctx = ctx(&cmd, &targets, &source_ips, tokens, &tag, live.clone())?;
        if let Cmd::Login(a) = &cmd {
            let start = start_of(&cmd);
            progress.message("registering, then logging in");
            let before = probe.sample().await;
            sleep_until(instant_at(start.start_ns)).await;
            let plan = crate::login::LoginPlan {
                users: cli::login_users(a, &tag, 0, 1),
                concurrency: a.concurrency,
                password: common.password.clone(),
            };
            let end_ns = start.start_ns + ((common.warmup + common.duration) * 1e9) as u64;
            let raw = crate::login::run(plan, ctx.http.clone(), live, end_ns).await;
            let window_s = (mono_ns() - start.start_ns) as f64 / 1e9;
            let after = probe.sample().await;
            (raw, start, (before, after), window_s)
        } else {
            let running = traffic::spawn(cli::plan(&cmd, &tag, 0, 1), ctx);
            wait_local_setup(&running, &progress, setup_deadline).await;
            let (ready, failed) = running.setup_progress();
            if ready == 0 {
                running.abort().await;
                progress.finish();
                bail!("no session could connect ({failed} failed); is the server's secret the one given?");
            }
            let start = start_of(&cmd);
            let scraper = scrape_window(probe.clone(), start);
            progress.running(total_s);
            let p = progress.clone();
            let raw = running
                .run(start, drain, move |pt: &TimelinePoint| {
                    p.tick(pt.t, pt.sends, pt.deliveries, pt.errors, pt.latency.quantile_ms(0.99), total_s)
                })
                .await;
            let samples = scraper.await.context("server sampler")?;
            (raw, start, samples, common.duration)
        }
    } else {
        let mut workers = Workers::spawn(&cmd, &tag)?;
        let outcome = workers.run(&cmd, &probe, &progress, setup_deadline, total_s, is_login).await;
        workers.shutdown().await;
        outcome?
    };
    progress.finish();
    let _ = start;

    let exp = Expectation {
        warmup_s: if is_login { 0.0 } else { common.warmup },
        window_s,
        deliveries_per_send: cli::deliveries_per_send(&cmd),
        expected_closes: Vec::new(),
    };
    let (before, after) = samples;
    let mut figures = server::figures(&before, &after, raw.get(c::DELIVERIES_IN_WINDOW));
    if let Cmd::Connections(_) = cmd {
        let sessions = raw.get(c::CONNECTIONS_OPENED);
        figures.rss_before_bytes = baseline.rss_bytes;
        figures.sessions = Some(sessions);
        if let (Some(b), Some(a)) = (baseline.rss_bytes, after.rss_bytes) {
            if sessions > 0 {
                figures.rss_per_session_bytes = Some((a as f64 - b as f64) / sessions as f64);
            }
        }
    }
    let mut report = Report::finalize(cmd.name(), &raw, &exp, figures);
    report.command = std::env::args().collect();
    report.params = cmd.params();
    report.started_unix_ms = started_unix_ms;
    report.host = host();
    if targets.len() > 1 {
        // The floor is a model of one server's work: not comparable.
        crate::floor::apply(&mut report, &Err("not measured (several servers)".into()));
    } else if let Some(floor) = crate::floor::beside(&report, &common, probe.pid()).await {
        crate::floor::apply(&mut report, &floor);
    }
    if let Cmd::Login(a) = &cmd {
        let done = raw.get(c::REGISTRATIONS) + raw.get(c::LOGINS) + raw.get(c::HTTP_FAILURES);
        if done < 2 * a.users as u64 {
            report.problems.push(format!(
                "{} of {} requests not made before the time bound",
                2 * a.users as u64 - done,
                2 * a.users
            ));
        }
    }
    output(&report, &common)?;
    Ok(if common.check && !report.problems.is_empty() { 1 } else { 0 })
}

pub(crate) async fn wait_local_setup(running: &Running, progress: &Progress, deadline: Instant) {
    loop {
        let (ready, failed) = running.setup_progress();
        progress.setup(ready, failed, running.total());
        if ready + failed >= running.total() || Instant::now() >= deadline {
            return;
        }
        tokio::select! {
            _ = running.wait_ready(deadline) => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Samples the server at the start and at the end of the window.
pub(crate) fn scrape_window(
    probe: Arc<Probe>,
    start: Start,
) -> tokio::task::JoinHandle<(server::Sample, server::Sample)> {
    tokio::spawn(async move {
        sleep_until(instant_at(start.window_start_ns)).await;
        let a = probe.sample().await;
        sleep_until(instant_at(start.window_end_ns)).await;
        let b = probe.sample().await;
        (a, b)
    })
}

// ----- worker processes ------------------------------------------------------

struct Workers {
    children: Vec<tokio::process::Child>,
    stdins: Vec<tokio::process::ChildStdin>,
    lines: mpsc::UnboundedReceiver<(usize, Option<String>)>,
}

type Outcome = (Raw, Start, (server::Sample, server::Sample), f64);

impl Workers {
    fn spawn(cmd: &Cmd, tag: &str) -> anyhow::Result<Self> {
        let common = cmd.common();
        let n = common.workers;
        let exe = std::env::current_exe().context("locating this program to start its workers")?;
        let (tx, rx) = mpsc::unbounded_channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..n {
            let mut command = tokio::process::Command::new(&exe);
            command.args(std::env::args_os().skip(1));
            command.args(["--worker-index", &i.to_string(), "--worker-count", &n.to_string()]);
            if !common.no_progress {
                command.arg("--no-progress");
            }
            if common.run_tag.is_none() {
                command.args(["--run-tag", tag]);
            }
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true);
            let mut child = command.spawn().with_context(|| format!("starting worker {i}"))?;
            let stdout = child.stdout.take().context("worker stdout")?;
            stdins.push(child.stdin.take().context("worker stdin")?);
            children.push(child);
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if tx.send((i, Some(line))).is_err() {
                        return;
                    }
                }
                let _ = tx.send((i, None));
            });
        }
        Ok(Workers { children, stdins, lines: rx })
    }

    /// The next line of any worker; `None` as the line means that worker's
    /// output ended (fine once it has sent its report).
    async fn next(&mut self, deadline: Instant) -> anyhow::Result<(usize, Option<String>)> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => bail!("the workers are gone"),
            Err(_) => bail!("the workers did not answer in time"),
        }
    }

    async fn run(
        &mut self,
        cmd: &Cmd,
        probe: &Arc<Probe>,
        progress: &Progress,
        setup_deadline: Instant,
        total_s: u64,
        is_login: bool,
    ) -> anyhow::Result<Outcome> {
        let common = cmd.common();
        let n = self.children.len();
        let mut setup = vec![(0usize, 0usize, 0usize); n];
        let mut ready = vec![false; n];
        while !ready.iter().all(|r| *r) {
            let (i, line) = self.next(setup_deadline + Duration::from_secs(10)).await?;
            let Some(line) = line else { bail!("worker {i} ended early (see its messages above)") };
            let mut f = line.split_whitespace();
            match f.next() {
                Some(kind @ ("SETUP" | "READY")) => {
                    let nums: Vec<usize> = f.filter_map(|x| x.parse().ok()).collect();
                    if nums.len() == 3 {
                        setup[i] = (nums[0], nums[1], nums[2]);
                    }
                    ready[i] |= kind == "READY";
                    let (r, fl, t) = setup.iter().fold((0, 0, 0), |a, s| (a.0 + s.0, a.1 + s.1, a.2 + s.2));
                    progress.setup(r, fl, t);
                }
                Some("ERROR") => bail!("worker {i}: {}", line.trim_start_matches("ERROR ")),
                _ => {}
            }
        }
        let (ready_total, failed_total) = setup.iter().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        if ready_total == 0 && !is_login {
            bail!("no session could connect ({failed_total} failed); is the server's secret the one given?");
        }
        let start = start_of(cmd);
        let before_login = if is_login { Some(probe.sample().await) } else { None };
        let go = format!("GO {} {} {}\n", start.start_ns, start.window_start_ns, start.window_end_ns);
        for stdin in &mut self.stdins {
            stdin.write_all(go.as_bytes()).await.context("starting a worker")?;
            stdin.flush().await?;
        }
        let scraper = (!is_login).then(|| scrape_window(probe.clone(), start));
        progress.running(total_s);
        let mut ticks: std::collections::BTreeMap<u64, (u64, u64, u64, u64, usize)> = Default::default();
        let mut raws: Vec<Option<Raw>> = vec![None; n];
        let end = instant_at(start.window_end_ns) + Duration::from_secs_f64(common.drain) + Duration::from_secs(30);
        while raws.iter().any(|r| r.is_none()) {
            let (i, line) = self.next(end).await?;
            // A worker that has reported may end before the others do.
            let Some(line) = line else {
                if raws[i].is_none() {
                    bail!("worker {i} ended early (see its messages above)");
                }
                continue;
            };
            if let Some(rest) = line.strip_prefix("REPORT ") {
                raws[i] = Some(serde_json::from_str(rest).with_context(|| format!("worker {i}'s report"))?);
            } else if let Some(rest) = line.strip_prefix("TICK ") {
                let v: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
                if v.len() == 5 {
                    let e = ticks.entry(v[0]).or_default();
                    e.0 += v[1];
                    e.1 += v[2];
                    e.2 += v[3];
                    e.3 = e.3.max(v[4]);
                    e.4 += 1;
                    if e.4 == n {
                        progress.tick(v[0], e.0, e.1, e.2, e.3 as f64 / 1e6, total_s);
                    }
                }
            } else if let Some(rest) = line.strip_prefix("ERROR ") {
                bail!("worker {i}: {rest}");
            }
        }
        let raws: Vec<Raw> = raws.into_iter().flatten().collect();
        let raw = Raw::merged(&raws);
        let (samples, window_s) = match scraper {
            Some(s) => (s.await.context("server sampler")?, common.duration),
            None => {
                let after = probe.sample().await;
                ((before_login.unwrap_or_default(), after), (mono_ns() - start.start_ns) as f64 / 1e9)
            }
        };
        Ok((raw, start, samples, window_s))
    }

    async fn shutdown(&mut self) {
        self.stdins.clear();
        for child in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.start_kill();
            }
        }
    }
}

fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

async fn worker(
    cmd: Cmd,
    targets: Vec<Target>,
    source_ips: Vec<IpAddr>,
    tokens: Tokens,
    index: usize,
) -> anyhow::Result<u8> {
    let common = cmd.common().clone();
    let n = common.worker_count.max(1);
    let Some(tag) = common.run_tag.clone() else { bail!("a worker needs --run-tag") };
    let live = Arc::new(Live::default());
    let ctx = ctx(&cmd, &targets, &source_ips, tokens, &tag, live.clone())?;
    // The coordinator's one line; then EOF (or the coordinator's end) stops us.
    let (go_tx, mut go_rx) = mpsc::unbounded_channel::<Start>();
    let reported = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let done = reported.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let v: Vec<u64> =
                line.strip_prefix("GO ").unwrap_or("").split_whitespace().filter_map(|x| x.parse().ok()).collect();
            if v.len() == 3 {
                let _ = go_tx.send(Start { start_ns: v[0], window_start_ns: v[1], window_end_ns: v[2] });
            }
        }
        if !done.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("viche-load worker {index}: the coordinator is gone; exiting");
            std::process::exit(4);
        }
    });
    let drain = Duration::from_secs_f64(common.drain);
    if let Cmd::Login(a) = &cmd {
        say("READY 0 0 0");
        let Some(start) = go_rx.recv().await else { return Ok(4) };
        sleep_until(instant_at(start.start_ns)).await;
        let plan = crate::login::LoginPlan {
            users: cli::login_users(a, &tag, index, n),
            concurrency: a.concurrency,
            password: common.password.clone(),
        };
        let end_ns = start.start_ns + ((common.warmup + common.duration) * 1e9) as u64;
        let raw = crate::login::run(plan, ctx.http.clone(), live, end_ns).await;
        reported.store(true, std::sync::atomic::Ordering::SeqCst);
        say(&format!("REPORT {}", serde_json::to_string(&raw)?));
        return Ok(0);
    }
    let running = traffic::spawn(cli::plan(&cmd, &tag, index, n), ctx.clone());
    loop {
        let (ready, failed) = running.setup_progress();
        if ready + failed >= running.total() || Instant::now() >= ctx.setup_deadline {
            say(&format!("READY {ready} {failed} {}", running.total()));
            break;
        }
        say(&format!("SETUP {ready} {failed} {}", running.total()));
        tokio::select! {
            _ = running.wait_ready(ctx.setup_deadline) => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
    let Some(start) = go_rx.recv().await else { return Ok(4) };
    let raw = running
        .run(start, drain, |pt: &TimelinePoint| {
            say(&format!(
                "TICK {} {} {} {} {}",
                pt.t,
                pt.sends,
                pt.deliveries,
                pt.errors,
                (pt.latency.quantile_ms(0.99) * 1e6) as u64
            ));
        })
        .await;
    reported.store(true, std::sync::atomic::Ordering::SeqCst);
    say(&format!("REPORT {}", serde_json::to_string(&raw)?));
    Ok(0)
}
