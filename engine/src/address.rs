//! Client addresses as every per-address limit sees them: an IPv4
//! address, or an IPv6 /64 prefix. An IPv6 client is given a whole /64 by
//! its provider and can rotate through it at will, so keying by its full
//! address would give it 2^64 fresh buckets.

use std::net::{IpAddr, Ipv6Addr};

/// The key of `ip` for per-address limits (an IPv4-mapped IPv6 address
/// counts as its IPv4 address).
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_and_ipv4_by_itself() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b), "one /64, one key");
        assert_ne!(limit_key(a), limit_key(c));
        assert_eq!(limit_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(limit_key(v4), v4);
        assert_eq!(limit_key("::ffff:192.0.2.7".parse().unwrap()), v4);
        assert_ne!(limit_key("192.0.2.8".parse().unwrap()), v4);
    }
}
