//! The `soak` scenario: a bounded run of several minutes mixing fan-out,
//! DMs, churn with resumes (`join since`, gaps and duplicates checked),
//! registrations and logins, and history paging over WebSocket and HTTP,
//! while the server's RSS is sampled every second.
//!
//! An operation is a send (room or DM), a login, a registration, a history
//! page (either transport) or a reconnect (a churn client's resume). The
//! growth is RSS at the window's end minus RSS at the first sample at or
//! after the warm-up's end; per 1,000 operations, it divides by the
//! operations between those two samples.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use tokio::time::sleep_until;
use viche_client::{ClientError, Connection, HttpClient, Msg};

use crate::cli::{self, Cmd};
use crate::clock::{instant_at, mono_ns};
use crate::live::{Live, K};
use crate::net::{mint_token, register_and_login, register_only, Target, Tokens};
use crate::report::{c, h, Expectation, Report, RssSample, SoakSection, TimelinePoint};
use crate::run::{self, Prepared, Progress};
use crate::server::{self, Probe};
use crate::traffic::{self, Ctx, Start};

pub const OPERATIONS: &str = "an operation is a send (room or DM), a login, a registration, a history page (WebSocket \
                              or HTTP) or a reconnect (a churn client's resume)";

const MIB: f64 = 1024.0 * 1024.0;

/// Operations so far, by kind.
fn operations(live: &Live) -> BTreeMap<String, u64> {
    BTreeMap::from([
        ("sends".to_string(), live.get(K::Sends)),
        ("logins".to_string(), live.get(K::Logins)),
        ("registrations".to_string(), live.get(K::Registrations)),
        ("history pages".to_string(), live.get(K::HistoryPagesWs) + live.get(K::HistoryPagesHttp)),
        ("reconnects".to_string(), live.get(K::Reconnects)),
    ])
}

/// RSS and operations once a second from the start to the window's end
/// (the last sample exactly at the end); with each sample's time (ns) and
/// operations by kind.
struct Sampled {
    samples: Vec<RssSample>,
    at_ns: Vec<u64>,
    kinds: Vec<BTreeMap<String, u64>>,
    source: String,
}

async fn sample_rss(probe: Arc<Probe>, live: Arc<Live>, start: Start) -> Sampled {
    let mut out = Sampled { samples: Vec::new(), at_ns: Vec::new(), kinds: Vec::new(), source: "none".into() };
    let mut k = 0u64;
    loop {
        let grid = start.start_ns + k * 1_000_000_000;
        let at = grid.min(start.window_end_ns);
        sleep_until(instant_at(at)).await;
        let kinds = operations(&live);
        let (rss, source) = probe.rss().await;
        out.source = source;
        out.samples.push(RssSample {
            t_s: (at - start.start_ns) as f64 / 1e9,
            rss_bytes: rss,
            operations: kinds.values().sum(),
        });
        out.at_ns.push(at);
        out.kinds.push(kinds);
        if at >= start.window_end_ns {
            return out;
        }
        k += 1;
    }
}

/// The growth figures from the samples.
fn section(s: &Sampled, window_start_ns: u64, limit_mib: Option<f64>) -> SoakSection {
    let first = s.at_ns.iter().position(|t| *t >= window_start_ns).unwrap_or(s.at_ns.len().saturating_sub(1));
    let last = s.samples.len().saturating_sub(1);
    let after = &s.samples[first.min(last)..];
    let (a, b) = (s.samples.get(first), s.samples.get(last));
    let growth = match (a.and_then(|x| x.rss_bytes), b.and_then(|x| x.rss_bytes)) {
        (Some(x), Some(y)) => Some(y as i64 - x as i64),
        _ => None,
    };
    let ops = match (a, b) {
        (Some(x), Some(y)) => y.operations.saturating_sub(x.operations),
        _ => 0,
    };
    let by_kind = match (s.kinds.get(first), s.kinds.get(last)) {
        (Some(x), Some(y)) => {
            y.iter().map(|(k, v)| (k.clone(), v.saturating_sub(x.get(k).copied().unwrap_or(0)))).collect()
        }
        _ => BTreeMap::new(),
    };
    SoakSection {
        operations_definition: OPERATIONS.to_string(),
        rss_source: s.source.clone(),
        samples: s.samples.clone(),
        rss_at_warmup_end_bytes: a.and_then(|x| x.rss_bytes),
        rss_at_end_bytes: b.and_then(|x| x.rss_bytes),
        rss_peak_bytes: after.iter().filter_map(|x| x.rss_bytes).max(),
        rss_growth_bytes: growth,
        operations_after_warmup: ops,
        operations_by_kind: by_kind,
        rss_growth_per_1000_ops_bytes: growth.filter(|_| ops > 0).map(|g| g as f64 / ops as f64 * 1000.0),
        rss_slope_per_1000_ops_bytes: slope(after).map(|s| s * 1000.0),
        check_rss_growth_mib: limit_mib,
    }
}

/// The problem `--check-rss-growth-mib` finds, if any.
pub fn rss_problem(soak: &SoakSection) -> Option<String> {
    let limit = soak.check_rss_growth_mib?;
    match soak.rss_growth_bytes {
        None => Some("the server's RSS could not be sampled: --check-rss-growth-mib cannot be checked".into()),
        Some(g) if g as f64 > limit * MIB => Some(format!(
            "the server's RSS grew {:.2} MiB after the warm-up ({:.2} → {:.2} MiB), more than \
             --check-rss-growth-mib {limit}",
            g as f64 / MIB,
            soak.rss_at_warmup_end_bytes.unwrap_or(0) as f64 / MIB,
            soak.rss_at_end_bytes.unwrap_or(0) as f64 / MIB
        )),
        Some(_) => None,
    }
}

/// Least-squares slope of RSS (bytes) against operations.
pub fn slope(samples: &[RssSample]) -> Option<f64> {
    let pts: Vec<(f64, f64)> =
        samples.iter().filter_map(|s| s.rss_bytes.map(|r| (s.operations as f64, r as f64))).collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// A token for a helper user (minted, or registered and logged in).
async fn token_for(ctx: &Ctx, http: &HttpClient, user: &str) -> anyhow::Result<String> {
    match &ctx.tokens {
        Tokens::Mint { secret, ttl } => Ok(mint_token(secret, user, *ttl)),
        Tokens::Login | Tokens::Register => register_and_login(http, user, &ctx.password, ctx.setup_deadline).await,
    }
}

/// Calls `f(n)` at `rate` per second from `start_ns` until `end_ns` (a
/// late call goes at once; calls never overlap).
async fn paced<F, Fut>(rate: f64, start_ns: u64, end_ns: u64, mut f: F)
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    if rate <= 0.0 {
        return;
    }
    let interval = (1e9 / rate).max(1.0) as u64;
    let mut next = start_ns;
    let mut n = 0u64;
    while next < end_ns {
        sleep_until(instant_at(next)).await;
        f(n).await;
        n += 1;
        next += interval;
    }
}

fn http_error(what: &str, e: &ClientError) -> String {
    match e.status() {
        Some(s) => format!("{what} http {s}"),
        None => format!("{what} transport"),
    }
}

async fn registrations(
    http: HttpClient,
    tag: String,
    password: String,
    rate: f64,
    start: Start,
    live: Arc<Live>,
    users: Arc<Mutex<Vec<String>>>,
) {
    paced(rate, start.start_ns, start.window_end_ns, |n| {
        let (http, live, users, password) = (&http, &live, &users, &password);
        let user = format!("{tag}g{}", n + 1);
        async move {
            let t0 = mono_ns();
            match http.register(&user, password).await {
                Ok(_) => {
                    live.inc(K::Registrations);
                    live.record(h::REGISTER, mono_ns() - t0);
                    users.lock().push(user);
                }
                Err(e) => {
                    live.inc(K::HttpFailures);
                    live.error(&http_error("register", &e));
                }
            }
        }
    })
    .await
}

async fn logins(
    http: HttpClient,
    password: String,
    rate: f64,
    start: Start,
    live: Arc<Live>,
    users: Arc<Mutex<Vec<String>>>,
) {
    paced(rate, start.start_ns, start.window_end_ns, |n| {
        let (http, live, password) = (&http, &live, &password);
        let user = {
            let users = users.lock();
            users[n as usize % users.len()].clone()
        };
        async move {
            let t0 = mono_ns();
            match http.login(&user, password).await {
                Ok(_) => {
                    live.inc(K::Logins);
                    live.record(h::LOGIN, mono_ns() - t0);
                }
                Err(e) => {
                    live.inc(K::HttpFailures);
                    live.error(&http_error("login", &e));
                }
            }
        }
    })
    .await
}

/// A history page is dense: seqs newest first, each one less than the
/// previous, the first just under `before` (when given).
pub fn dense(messages: &[Msg], before: Option<u64>) -> bool {
    let steps = messages.windows(2).all(|w| w[1].seq + 1 == w[0].seq);
    let top = match (before, messages.first()) {
        (Some(b), Some(m)) => m.seq + 1 == b,
        _ => true,
    };
    steps && top
}

/// Pages each fan-out room back to its first message, then starts again
/// from the newest: alternately over a WebSocket session and over HTTP.
async fn history(ctx: Arc<Ctx>, http: HttpClient, token: String, rooms: Vec<String>, rate: f64, start: Start) {
    let live = ctx.live.clone();
    let mut ws: Option<Connection> = None;
    let mut cursors: Vec<[Option<u64>; 2]> = vec![[None, None]; rooms.len()];
    let interval = if rate > 0.0 { (1e9 / rate).max(1.0) as u64 } else { return };
    let mut next = start.start_ns;
    let mut n = 0usize;
    while next < start.window_end_ns {
        sleep_until(instant_at(next)).await;
        next += interval;
        let over_ws = n & 1 == 0;
        let r = (n / 2) % rooms.len();
        n += 1;
        let room = &rooms[r];
        let before = cursors[r][usize::from(!over_ws)];
        let t0 = mono_ns();
        let page = if over_ws {
            if ws.is_none() {
                match Connection::connect_from(ctx.ws_url(0), ctx.encoding, ctx.source_ips.first().copied()).await {
                    Ok(mut conn) => match conn.hello(&token).await {
                        Ok(_) => ws = Some(conn),
                        Err(e) => {
                            live.error(&format!("history ws: hello {}", e.code().map_or("failed", |c| c.as_str())))
                        }
                    },
                    Err(_) => live.error("history ws: connect failed"),
                }
            }
            let Some(conn) = ws.as_mut() else { continue };
            match conn.history(room, before, Some(50)).await {
                Ok(page) => {
                    live.inc(K::HistoryPagesWs);
                    live.record(h::HISTORY_WS, mono_ns() - t0);
                    Some(page)
                }
                Err(e) => {
                    live.error(&format!("history ws: {}", e.code().map_or("failed", |c| c.as_str())));
                    if matches!(e, ClientError::Closed(_)) {
                        ws = None;
                    }
                    None
                }
            }
        } else {
            match http.history(&token, room, before, Some(50)).await {
                Ok(page) => {
                    live.inc(K::HistoryPagesHttp);
                    live.record(h::HISTORY_HTTP, mono_ns() - t0);
                    Some(page)
                }
                Err(e) => {
                    live.inc(K::HttpFailures);
                    live.error(&http_error("history", &e));
                    None
                }
            }
        };
        if let Some(page) = page {
            if !dense(&page.messages, before) {
                live.error("history page not dense");
            }
            cursors[r][usize::from(!over_ws)] = if page.more { page.messages.last().map(|m| m.seq) } else { None };
        }
    }
    if let Some(mut conn) = ws {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
    }
}

pub async fn coordinator(
    cmd: Cmd,
    target: Target,
    source_ips: Vec<std::net::IpAddr>,
    tokens: Tokens,
) -> anyhow::Result<u8> {
    let Cmd::Soak(a) = &cmd else { bail!("not the soak scenario") };
    let common = a.common.clone();
    let Prepared { tag, started_unix_ms, probe, .. } = run::prepare(&cmd, std::slice::from_ref(&target)).await?;
    let progress = Progress::new(!common.no_progress, common.warmup);
    let live = Arc::new(Live::default());
    let ctx = run::ctx(&cmd, std::slice::from_ref(&target), &source_ips, tokens, &tag, live.clone())?;
    let plan = cli::plan(&cmd, &tag, 0, 1);
    let fanout_rooms: Vec<String> = plan.rooms[..a.rooms].to_vec();
    let running = traffic::spawn(plan, ctx.clone());
    run::wait_local_setup(&running, &progress, ctx.setup_deadline).await;
    let (ready, failed) = running.setup_progress();
    if ready == 0 {
        running.abort().await;
        progress.finish();
        bail!("no session could connect ({failed} failed); is the server's secret the one given?");
    }
    // The helpers: a history reader, and a first registered user to log in.
    progress.message("registering the first user");
    let http = ctx.http[0].clone();
    let history_token = token_for(&ctx, &http, &format!("{tag}hist")).await.context("the history reader's token")?;
    let users = Arc::new(Mutex::new(Vec::new()));
    if a.logins_rate > 0.0 {
        let first = format!("{tag}g0");
        register_only(&http, &first, &common.password, ctx.setup_deadline)
            .await
            .with_context(|| format!("registering {first}"))?;
        users.lock().push(first);
    }
    for name in [h::REGISTER, h::LOGIN, h::HISTORY_WS, h::HISTORY_HTTP] {
        live.declare(name);
    }

    let start = run::start_of(&cmd);
    let scraper = run::scrape_window(probe.clone(), start);
    let sampler = tokio::spawn(sample_rss(probe.clone(), live.clone(), start));
    let mut helpers = Vec::new();
    helpers.push(tokio::spawn(registrations(
        http.clone(),
        tag.clone(),
        common.password.clone(),
        a.registrations_rate,
        start,
        live.clone(),
        users.clone(),
    )));
    if a.logins_rate > 0.0 {
        helpers.push(tokio::spawn(logins(
            http.clone(),
            common.password.clone(),
            a.logins_rate,
            start,
            live.clone(),
            users.clone(),
        )));
    }
    helpers.push(tokio::spawn(history(ctx.clone(), http.clone(), history_token, fanout_rooms, a.history_rate, start)));
    let total_s = (common.warmup + common.duration).ceil() as u64;
    progress.running(total_s);
    let p = progress.clone();
    let raw = running
        .run(start, Duration::from_secs_f64(common.drain), move |pt: &TimelinePoint| {
            p.tick(pt.t, pt.sends, pt.deliveries, pt.errors, pt.latency.quantile_ms(0.99), total_s)
        })
        .await;
    // The helpers stopped at the window's end; a request still in flight is given a while.
    for task in helpers {
        if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
            live.error("soak helper still busy after the drain");
        }
    }
    let sampled = sampler.await.context("RSS sampler")?;
    let samples = scraper.await.context("server sampler")?;
    progress.finish();
    // Everything counted, the helpers' last requests included.
    let _ = raw;
    let raw = live.snapshot();

    let exp = Expectation {
        warmup_s: common.warmup,
        window_s: common.duration,
        deliveries_per_send: cli::deliveries_per_send(&cmd),
        expected_closes: Vec::new(),
    };
    let figures = server::figures(&samples.0, &samples.1, raw.get(c::DELIVERIES_IN_WINDOW));
    let mut report = Report::finalize("soak", &raw, &exp, figures);
    report.command = std::env::args().collect();
    report.params = cmd.params();
    report.started_unix_ms = started_unix_ms;
    report.host = run::host();
    let soak = section(&sampled, start.window_start_ns, a.check_rss_growth_mib);
    // Rates of the window, not of warm-up + window.
    let window = common.duration.max(1e-9);
    let by = |k: &str| soak.operations_by_kind.get(k).copied().unwrap_or(0) as f64 / window;
    report.rates.registrations_per_s = by("registrations");
    report.rates.logins_per_s = by("logins");
    if let Some(problem) = rss_problem(&soak) {
        report.problems.push(problem);
    }
    report.soak = Some(soak);
    if let Some(floor) = crate::floor::beside(&report, &common, probe.pid()).await {
        crate::floor::apply(&mut report, &floor);
    }
    run::output(&report, &common)?;
    let check = common.check || a.check_rss_growth_mib.is_some();
    Ok(if check && !report.problems.is_empty() { 1 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Msg {
        Msg { room: "r".into(), seq, from: "u".into(), body: "b".into(), cid: "c".into(), ts: 0, ..Msg::default() }
    }

    #[test]
    fn dense_pages() {
        assert!(dense(&[msg(9), msg(8), msg(7)], Some(10)));
        assert!(dense(&[msg(9), msg(8)], None));
        assert!(!dense(&[msg(9), msg(7)], None));
        assert!(!dense(&[msg(8), msg(7)], Some(10)));
        assert!(dense(&[], Some(1)));
    }

    #[test]
    fn growth_per_operation_and_slope() {
        let mut s = Sampled { samples: Vec::new(), at_ns: Vec::new(), kinds: Vec::new(), source: "proc:1".into() };
        for t in 0..6u64 {
            s.samples.push(RssSample { t_s: t as f64, rss_bytes: Some(1_000_000 + 2_000 * t), operations: 500 * t });
            s.at_ns.push(t * 1_000_000_000);
            s.kinds.push(BTreeMap::from([("sends".to_string(), 500 * t)]));
        }
        let sec = section(&s, 2_000_000_000, Some(1.0));
        assert_eq!(sec.rss_at_warmup_end_bytes, Some(1_004_000));
        assert_eq!(sec.rss_growth_bytes, Some(6_000));
        assert_eq!(sec.operations_after_warmup, 1_500);
        assert_eq!(sec.operations_by_kind["sends"], 1_500);
        assert!((sec.rss_growth_per_1000_ops_bytes.unwrap() - 4_000.0).abs() < 1e-6);
        assert!((sec.rss_slope_per_1000_ops_bytes.unwrap() - 4_000.0).abs() < 1e-6);
        assert_eq!(sec.rss_peak_bytes, Some(1_010_000));
        // 6,000 B of growth against a limit of 1 MiB, then of 0.005 MiB.
        assert_eq!(rss_problem(&sec), None);
        let tight = SoakSection { check_rss_growth_mib: Some(0.005), ..sec.clone() };
        assert!(rss_problem(&tight).unwrap().contains("more than --check-rss-growth-mib 0.005"));
        let unsampled = SoakSection { rss_growth_bytes: None, ..sec };
        assert!(rss_problem(&unsampled).unwrap().contains("could not be sampled"));
    }
}
