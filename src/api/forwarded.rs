//! Who the client is when linesight runs behind a reverse proxy (an ingress or load balancer on
//! EKS, nginx on an edge device).
//!
//! Behind a proxy every connection comes from the proxy. The client's own address, which the
//! sign-in allowance counts by and the audit trail records, is then in the `X-Forwarded-For`
//! header the proxy adds, and whether the client used HTTPS (which the session cookie's
//! `Secure` attribute follows) in `X-Forwarded-Proto`. Anyone can send those headers, so they
//! are believed only from the proxies named in `api.trusted_proxies`, and only as far as the
//! chain of trusted proxies goes: `X-Forwarded-For` is read from its right end (the address
//! the last proxy saw), skipping addresses that are themselves trusted proxies, and the first
//! address that is not one is the client. An address a client wrote into the header itself
//! lies to the left of that and is never taken. With no trusted proxies (the default) the
//! headers are ignored and the client is the connection's peer.
//!
//! Written here rather than taken from a crate: the crates for this either trust one fixed
//! header from every peer or take the right-most entry without a list of trusted networks;
//! what plants need is the walk over a list (nginx's `real_ip_recursive`), a few lines over
//! `ipnet`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One entry of `api.trusted_proxies`: an address ("10.0.0.7") or a network ("10.0.0.0/8",
/// "fd00::/8").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNetwork(IpNet);

impl ProxyNetwork {
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.0.contains(ip)
    }
}

impl FromStr for ProxyNetwork {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(ProxyNetwork(net.trunc()));
        }
        s.parse::<IpAddr>()
            .map(|ip| ProxyNetwork(IpNet::from(ip)))
            .map_err(|_| {
                format!(
                    "{s:?} is neither an address (\"10.0.0.7\") nor a network (\"10.0.0.0/8\", \"fd00::/8\")"
                )
            })
    }
}

impl fmt::Display for ProxyNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for ProxyNetwork {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ProxyNetwork {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What the server knows of a request's client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Client {
    /// The client's address: the connection's peer, or the address a trusted proxy forwarded;
    /// none for a request made in-process.
    pub address: Option<IpAddr>,
    /// A trusted proxy said the client spoke HTTPS to it (`X-Forwarded-Proto: https`).
    pub forwarded_https: bool,
}

impl Client {
    /// The client of a request that came over a connection from `peer` with `headers`.
    pub fn resolve(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[ProxyNetwork]) -> Client {
        let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
        let Some(peer) = peer.map(canonical) else {
            return Client::default();
        };
        if !is_trusted(&peer) {
            return Client {
                address: Some(peer),
                forwarded_https: false,
            };
        }
        // Every header line, in order; each a comma-separated list whose last entry is the
        // nearest hop. Read byte for byte: a line the client started with bytes that are not
        // text must not hide the entries the proxies appended to it.
        let lines: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let hops: Vec<&str> = lines.iter().flat_map(|v| v.split(',')).collect();
        let mut address = peer;
        for hop in hops.iter().rev() {
            // An entry that is not an address ends the walk at the last address known.
            let Some(ip) = parse_hop(hop) else { break };
            address = ip;
            if !is_trusted(&ip) {
                break;
            }
        }
        // The nearest proxy's word on the scheme: the last value of the last header line.
        let forwarded_https = headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        Client {
            address: Some(address),
            forwarded_https,
        }
    }
}

/// An `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:443`), which some proxies add.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .map(canonical)
}

/// An IPv4 client reaching a dual-stack socket shows as `::ffff:a.b.c.d`; it is the same
/// client as `a.b.c.d`, and `10.0.0.0/8` must match it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<ProxyNetwork> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn entries_are_addresses_or_networks_and_bad_ones_are_named() {
        assert!(
            "10.0.0.0/8"
                .parse::<ProxyNetwork>()
                .unwrap()
                .contains(&"10.9.8.7".parse().unwrap())
        );
        let one: ProxyNetwork = " 10.0.0.7 ".parse().unwrap();
        assert!(one.contains(&"10.0.0.7".parse().unwrap()));
        assert!(!one.contains(&"10.0.0.8".parse().unwrap()));
        // Host bits are dropped: "10.1.2.3/8" is 10.0.0.0/8.
        assert_eq!(
            "10.1.2.3/8".parse::<ProxyNetwork>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert!("fd00::/8".parse::<ProxyNetwork>().is_ok());
        let err = "ingress".parse::<ProxyNetwork>().unwrap_err();
        assert!(
            err.contains("\"ingress\"") && err.contains("10.0.0.0/8"),
            "{err}"
        );
        assert!("10.0.0.0/33".parse::<ProxyNetwork>().is_err());
    }

    #[test]
    fn without_trusted_proxies_the_headers_are_ignored() {
        let h = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let c = Client::resolve(ip("10.0.0.5"), &h, &[]);
        assert_eq!(c.address, ip("10.0.0.5"));
        assert!(!c.forwarded_https);
        // Nor from a peer outside the trusted networks.
        let c = Client::resolve(ip("198.51.100.9"), &h, &nets(&["10.0.0.0/8"]));
        assert_eq!(c.address, ip("198.51.100.9"));
        assert!(!c.forwarded_https);
    }

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted = nets(&["10.0.0.0/8", "172.16.0.1"]);
        // The client wrote its own (false) entry first; the proxies appended the real ones.
        let h = headers(&[("x-forwarded-for", "203.0.113.66, 192.0.2.1, 172.16.0.1")]);
        let c = Client::resolve(ip("10.0.0.5"), &h, &trusted);
        assert_eq!(c.address, ip("192.0.2.1"));
        // Several header lines read as one list.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.66"),
            ("x-forwarded-for", "192.0.2.1:5123, 10.2.3.4"),
        ]);
        assert_eq!(
            Client::resolve(ip("10.0.0.5"), &h, &trusted).address,
            ip("192.0.2.1")
        );
        // Only trusted hops: the farthest of them.
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.2.3.4")]);
        assert_eq!(
            Client::resolve(ip("10.0.0.5"), &h, &trusted).address,
            ip("10.9.9.9")
        );
        // No header: the proxy itself.
        assert_eq!(
            Client::resolve(ip("10.0.0.5"), &HeaderMap::new(), &trusted).address,
            ip("10.0.0.5")
        );
        // An entry that is not an address stops the walk at the last one known.
        let h = headers(&[("x-forwarded-for", "192.0.2.1, unknown, 10.2.3.4")]);
        assert_eq!(
            Client::resolve(ip("10.0.0.5"), &h, &trusted).address,
            ip("10.2.3.4")
        );
        // Bytes that are not text, written by the client before the proxy's entry, do not
        // hide that entry.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\x80\xff, 192.0.2.5").unwrap(),
        );
        assert_eq!(
            Client::resolve(ip("10.0.0.5"), &h, &trusted).address,
            ip("192.0.2.5")
        );
        // IPv6, bracketed with a port, and an IPv4 peer on a dual-stack socket.
        let h = headers(&[("x-forwarded-for", "[2001:db8::7]:443")]);
        assert_eq!(
            Client::resolve(ip("::ffff:10.0.0.5"), &h, &trusted).address,
            ip("2001:db8::7")
        );
    }

    #[test]
    fn https_is_the_nearest_trusted_proxys_word() {
        let trusted = nets(&["10.0.0.0/8"]);
        let c = Client::resolve(
            ip("10.0.0.5"),
            &headers(&[("x-forwarded-proto", "HTTPS")]),
            &trusted,
        );
        assert!(c.forwarded_https);
        let c = Client::resolve(
            ip("10.0.0.5"),
            &headers(&[("x-forwarded-proto", "https, http")]),
            &trusted,
        );
        assert!(!c.forwarded_https);
        assert!(!Client::resolve(None, &HeaderMap::new(), &trusted).forwarded_https);
    }
}
