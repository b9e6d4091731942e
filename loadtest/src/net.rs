//! Where the load goes and where it comes from: the target (loopback only
//! unless `--allow-remote`), the source addresses of `--source-ips`, and
//! the tokens (minted with `--jwt-secret`, or real users through HTTP).

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use viche_client::{ClientError, HttpClient};

/// The server's HTTP base and WebSocket URLs.
#[derive(Clone, Debug)]
pub struct Target {
    pub http: String,
    pub ws: String,
    pub host: String,
    pub port: u16,
}

/// Parses `--url` (`http://host:port`, also `ws://host:port[/ws]`) and
/// refuses anything but loopback unless `allow_remote`.
pub fn target(url: &str, allow_remote: bool) -> anyhow::Result<Target> {
    let url = url.trim_end_matches('/');
    let (scheme, rest) = url.split_once("://").ok_or_else(|| anyhow!("--url {url}: expected http://HOST:PORT"))?;
    if !matches!(scheme, "http" | "ws") {
        bail!("--url {url}: only http:// (or ws://) is supported");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse::<u16>().with_context(|| format!("--url {url}: bad port"))?,
        ),
        _ => (authority.trim_start_matches('[').trim_end_matches(']').to_string(), 80),
    };
    if host.is_empty() {
        bail!("--url {url}: no host");
    }
    if !allow_remote {
        let addrs: Vec<_> =
            (host.as_str(), port).to_socket_addrs().with_context(|| format!("resolving {host}"))?.collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            bail!("--url {url}: {host} is not a loopback address; load goes only to this machine unless --allow-remote is given");
        }
    }
    let hostport = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok(Target { http: format!("http://{hostport}"), ws: format!("ws://{hostport}/ws"), host, port })
}

/// Parses `--url`'s list: one URL, or several separated by commas (the
/// nodes of a cluster; sessions are spread over them in turn).
pub fn targets(spec: &str, allow_remote: bool) -> anyhow::Result<Vec<Target>> {
    let targets: Vec<Target> = spec
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| target(u, allow_remote))
        .collect::<anyhow::Result<_>>()?;
    if targets.is_empty() {
        bail!("--url: no URL given");
    }
    if targets.len() > TARGETS_MAX {
        bail!("--url: at most {TARGETS_MAX} servers");
    }
    Ok(targets)
}

/// Servers one run may spread its sessions over.
pub const TARGETS_MAX: usize = 64;

/// Parses `--source-ips`: comma-separated addresses or IPv4 ranges
/// `A-B` (e.g. `127.0.0.2-127.0.0.9`). Loopback only unless `allow_remote`.
pub fn source_ips(spec: &str, allow_remote: bool) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--source-ips: {a}"))?;
            let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--source-ips: {b}"))?;
            let (a, b) = (u32::from(a), u32::from(b));
            if b < a || b - a > 65_535 {
                bail!("--source-ips: bad range {part}");
            }
            out.extend((a..=b).map(|ip| IpAddr::V4(Ipv4Addr::from(ip))));
        } else {
            out.push(part.parse::<IpAddr>().with_context(|| format!("--source-ips: {part}"))?);
        }
    }
    if out.is_empty() {
        bail!("--source-ips: no address");
    }
    if !allow_remote {
        if let Some(ip) = out.iter().find(|ip| !ip.is_loopback()) {
            bail!("--source-ips: {ip} is not a loopback address (give --allow-remote to use it)");
        }
    }
    Ok(out)
}

/// An HS256 token for `user`, valid for `ttl` (at least a minute), signed
/// with the server's secret.
pub fn mint_token(secret: &str, user: &str, ttl: Duration) -> String {
    viche_client::token::mint(secret, user, viche_client::token::now_s() + ttl.as_secs().max(60))
}

/// How sessions get their tokens.
#[derive(Clone, Debug)]
pub enum Tokens {
    /// Minted locally with the server's secret (argon2 is not measured).
    Mint { secret: String, ttl: Duration },
    /// Real users: registered, then logged in, through the HTTP API.
    Login,
    /// Registered through the HTTP API (the registration's token).
    Register,
}

/// Registers `user` (a `409` means it exists) and logs in; a `429` is
/// waited out (its `Retry-After`) until `deadline`. Returns the login's
/// token.
pub async fn register_and_login(
    http: &HttpClient,
    user: &str,
    password: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<String> {
    retry_429(deadline, || http.register(user, password)).await.or_else(|e| match e.status() {
        Some(409) => Ok(None),
        _ => Err(e),
    })?;
    let auth = retry_429(deadline, || http.login(user, password)).await?;
    auth.map(|a| a.token).ok_or_else(|| anyhow!("login of {user}: no answer"))
}

/// Registers `user` and returns the registration's token (`409`: logs in).
pub async fn register_only(
    http: &HttpClient,
    user: &str,
    password: &str,
    deadline: tokio::time::Instant,
) -> anyhow::Result<String> {
    match retry_429(deadline, || http.register(user, password)).await {
        Ok(Some(a)) => Ok(a.token),
        Err(e) if e.status() == Some(409) => Ok(retry_429(deadline, || http.login(user, password))
            .await?
            .ok_or_else(|| anyhow!("login of {user}: no answer"))?
            .token),
        Ok(None) => Err(anyhow!("register {user}: no answer")),
        Err(e) => Err(e.into()),
    }
}

async fn retry_429<T, F, Fut>(deadline: tokio::time::Instant, mut f: F) -> Result<Option<T>, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.status() == Some(429) => {
                let wait = Duration::from_secs(e_retry_after(&e).unwrap_or(1).max(1));
                if tokio::time::Instant::now() + wait > deadline {
                    return Err(e);
                }
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn e_retry_after(e: &ClientError) -> Option<u64> {
    match e {
        ClientError::Http { retry_after, .. } => *retry_after,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_are_several_targets_in_order() {
        let t = super::targets("http://127.0.0.1:1, http://127.0.0.1:2/,ws://127.0.0.1:3/ws", false).unwrap();
        assert_eq!(t.iter().map(|t| t.port).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(t[2].ws, "ws://127.0.0.1:3/ws");
        assert!(super::targets("", false).is_err() && super::targets(" , ", false).is_err());
        assert!(super::targets("http://127.0.0.1:1,http://10.1.2.3:2", false).is_err(), "every one loopback");
        let many = vec!["http://127.0.0.1:1"; TARGETS_MAX + 1].join(",");
        assert!(super::targets(&many, false).is_err());
    }

    #[test]
    fn targets() {
        let t = target("http://127.0.0.1:8080", false).unwrap();
        assert_eq!((t.http.as_str(), t.ws.as_str(), t.port), ("http://127.0.0.1:8080", "ws://127.0.0.1:8080/ws", 8080));
        let t = target("ws://localhost:9000/ws", false).unwrap();
        assert_eq!(t.http, "http://localhost:9000");
        assert!(target("http://[::1]:8080", false).is_ok());
        assert!(target("http://10.1.2.3:8080", false).is_err());
        assert!(target("http://10.1.2.3:8080", true).is_ok());
        assert!(target("https://127.0.0.1:8080", false).is_err());
    }

    #[test]
    fn source_ranges() {
        let ips = source_ips("127.0.0.2-127.0.0.4, 127.0.0.9", false).unwrap();
        assert_eq!(
            ips.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
            ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.9"]
        );
        assert!(source_ips("192.168.1.1", false).is_err());
        assert!(source_ips("127.0.0.9-127.0.0.2", false).is_err());
    }
}
