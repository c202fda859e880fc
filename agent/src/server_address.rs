//! `--server-address HOST:PORT`: a server by DNS name or IP. A name is
//! resolved to every address it has each time the agent connects, so
//! servers added behind a name, or moved, are found without a restart.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

/// A server's name (or IP) and port, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddress {
    host: String,
    port: u16,
}

impl FromStr for ServerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| "no port (expected HOST:PORT)".to_string())?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("port {port:?} is not a number from 0 to 65535"))?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid {
            return Err(format!(
                "{host:?} is neither an IP address nor a DNS name (expected HOST:PORT; IPv6 as [ADDR]:PORT)"
            ));
        }
        Ok(ServerAddress {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl From<SocketAddr> for ServerAddress {
    fn from(addr: SocketAddr) -> Self {
        ServerAddress {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for ServerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Every address of every server, in the configured order; a name's
/// addresses sorted, then turned by `seed` (an agent's own number) so that
/// agents given one name start on different servers. Names that do not
/// resolve now are logged and left out.
pub async fn resolve_all(servers: &[ServerAddress], seed: u64) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for server in servers {
        match tokio::net::lookup_host((server.host.as_str(), server.port)).await {
            Ok(addrs) => {
                for addr in turned(addrs.collect(), seed) {
                    if !out.contains(&addr) {
                        out.push(addr);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "cannot resolve the server's name")
            }
        }
    }
    out
}

/// `addrs` sorted, without repeats, and turned left by `seed`.
fn turned(mut addrs: Vec<SocketAddr>, seed: u64) -> Vec<SocketAddr> {
    addrs.sort();
    addrs.dedup();
    if !addrs.is_empty() {
        let turn = (seed % addrs.len() as u64) as usize;
        addrs.rotate_left(turn);
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_parse() {
        let a: ServerAddress = "Signet.Example.org:8081".parse().unwrap();
        assert_eq!(a.to_string(), "signet.example.org:8081");
        let b: ServerAddress = "[::1]:8081".parse().unwrap();
        assert_eq!(b.to_string(), "[::1]:8081");
        assert_eq!(
            "10.0.0.1:1".parse::<ServerAddress>().unwrap().to_string(),
            "10.0.0.1:1"
        );
        for (bad, says) in [
            ("signet", "no port"),
            ("signet:http", "not a number"),
            ("bad_name:8081", "neither an IP address nor a DNS name"),
            ("-x.org:1", "neither"),
            (":8081", "neither"),
        ] {
            let err = bad.parse::<ServerAddress>().expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn agents_spread_over_a_names_addresses() {
        let addrs: Vec<SocketAddr> = ["10.0.0.3:1", "10.0.0.1:1", "10.0.0.2:1", "10.0.0.1:1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let firsts: Vec<SocketAddr> = (0..6).map(|seed| turned(addrs.clone(), seed)[0]).collect();
        let one: SocketAddr = "10.0.0.1:1".parse().unwrap();
        // Whatever the resolver's order, the same seed gives the same list.
        let mut reversed = addrs.clone();
        reversed.reverse();
        assert_eq!(turned(reversed, 4), turned(addrs.clone(), 4));
        assert_eq!(turned(addrs.clone(), 4).len(), 3, "repeats removed");
        assert_eq!(firsts[0], one);
        assert_eq!(firsts[3], one);
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert_eq!(
            distinct.len(),
            3,
            "three seeds, three first servers: {firsts:?}"
        );
    }

    #[tokio::test]
    async fn localhost_resolves_and_bad_names_are_left_out() {
        let servers: Vec<ServerAddress> =
            ["localhost:8081", "no-such-host.invalid:8081", "127.0.0.2:9"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let addrs = resolve_all(&servers, 0).await;
        assert!(
            addrs.contains(&"127.0.0.1:8081".parse().unwrap()),
            "{addrs:?}"
        );
        assert_eq!(addrs.last(), Some(&"127.0.0.2:9".parse().unwrap()));
        assert!(
            addrs
                .iter()
                .all(|a| a.port() != 8081 || a.ip().is_loopback())
        );
    }
}
