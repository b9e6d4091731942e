//! The address of the client behind a request: the TCP peer, unless the
//! peer is one of `--trusted-proxies` (the reverse proxy that terminates
//! TLS, say), in which case the client is the one that proxy names in
//! `X-Forwarded-For` or `Forwarded`. Every per-address limit uses it.
//!
//! The headers are read right to left: each trusted proxy appends the
//! address it received the request from, so the rightmost address that is
//! not a trusted proxy is the first one no trusted party vouches for, and
//! the client. Anything to its left is whatever the client claimed.

use std::net::IpAddr;

use hyper::header::{HeaderMap, FORWARDED};
use ipnet::IpNet;

/// `--trusted-proxies`: the networks whose forwarding headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// From `CIDR,CIDR,...` (a bare address is a /32 or /128); empty: none.
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let net = match part.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => match part.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(format!("--trusted-proxies: {part:?} is not a CIDR like 10.0.0.0/8")),
                },
            };
            nets.push(net.trunc());
        }
        Ok(Self(nets))
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }

    /// The client's address for a request from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = unmapped(peer);
        if !self.trusts(peer) {
            return peer;
        }
        // Every hop the proxies recorded, oldest first.
        let mut hops: Vec<IpAddr> = Vec::new();
        for value in headers.get_all(FORWARDED) {
            let Ok(value) = value.to_str() else { continue };
            for element in value.split(',') {
                for pair in element.split(';') {
                    let Some((key, v)) = pair.trim().split_once('=') else { continue };
                    if key.trim().eq_ignore_ascii_case("for") {
                        if let Some(ip) = parse_node(v) {
                            hops.push(ip);
                        }
                    }
                }
            }
        }
        if hops.is_empty() {
            for value in headers.get_all("x-forwarded-for") {
                let Ok(value) = value.to_str() else { continue };
                hops.extend(value.split(',').filter_map(|v| v.trim().parse::<IpAddr>().ok()).map(unmapped));
            }
        }
        hops.into_iter().rev().find(|ip| !self.trusts(*ip)).unwrap_or(peer)
    }
}

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A `for=` node of RFC 7239: `192.0.2.1`, `"192.0.2.1:8080"`,
/// `"[2001:db8::1]:443"`; obfuscated or `unknown` nodes are skipped.
fn parse_node(value: &str) -> Option<IpAddr> {
    let v = value.trim().trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok().map(unmapped);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(unmapped(ip));
    }
    v.rsplit_once(':').and_then(|(host, _port)| host.parse().ok()).map(unmapped)
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn headers_are_ignored_unless_the_peer_is_trusted() {
        let none = TrustedProxies::parse("").unwrap();
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(none.client(ip("198.51.100.1"), &h), ip("198.51.100.1"), "a client cannot claim another address");
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        assert_eq!(proxies.client(ip("198.51.100.1"), &h), ip("198.51.100.1"), "an untrusted peer is the client");
        assert_eq!(proxies.client(ip("10.1.2.3"), &h), ip("203.0.113.9"), "a trusted proxy names the client");
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        // The client claims 1.1.1.1; the first proxy saw it come from 203.0.113.9.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("203.0.113.9"));
        let h = headers(&[("x-forwarded-for", "10.0.0.5")]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("10.0.0.1"), "all trusted: the peer");
        let h = headers(&[]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("10.0.0.1"), "no header: the peer");
    }

    #[test]
    fn forwarded_is_read_before_x_forwarded_for() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&[
            ("forwarded", "for=\"[2001:db8::7]:443\";proto=https, for=10.0.0.9"),
            ("x-forwarded-for", "192.0.2.200"),
        ]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        let h = headers(&[("forwarded", "for=unknown, for=\"192.0.2.60:4711\"")]);
        assert_eq!(proxies.client(ip("10.0.0.1"), &h), ip("192.0.2.60"));
    }

    #[test]
    fn bad_cidrs_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("proxy.example").is_err());
        assert_eq!(
            TrustedProxies::parse("::ffff:10.0.0.1").unwrap().client(ip("10.0.0.1"), &headers(&[])),
            ip("10.0.0.1")
        );
    }
}
