/*!
Name resolution without a thread per request.

ureq resolves the host of every request, even one that goes on to reuse a pooled
connection, and its default resolver runs `getaddrinfo` on a new thread whenever a
resolve timeout is set, so that it can give up on a hung DNS server. [`super::http::agent`]
must set one (an adapter thread blocked for ever in `getaddrinfo` cannot be stopped), so
every request started a thread: each long poll, each message sent, each typing indicator,
even to `127.0.0.1` where there is nothing to look up.

[`Resolver`] answers without a thread where no lookup is needed: an IP literal
(`127.0.0.1`, `[::1]`) and `localhost`, which RFC 6761 §6.3 reserves for the loopback
addresses. A real name is looked up by ureq's own resolver (a thread it can abandon when
the timeout passes) and the answer is kept for [`TTL`], for every agent of the process,
so a bot that talks to `api.telegram.org` starts at most one lookup thread a minute
however busy it is. `getaddrinfo` does not tell a record's own TTL; a minute is short
enough that a server that moved is found again soon. A failed lookup is not kept: the
next request tries again.
*/

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ureq::config::{Config, IpFamily};
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver as Resolve};
use ureq::unversioned::transport::NextTimeout;

/// How long a looked-up answer is used before the name is looked up again.
pub const TTL: Duration = Duration::from_secs(60);

/// The most names remembered. A gateway talks to a handful of hosts; the oldest answer
/// makes room for a new one.
const MAX_NAMES: usize = 16;

/// Answers remembered by every agent of the process (agents are built per adapter
/// generation, and per request by the `openai` backend, so a cache per agent would
/// forget too soon).
static ANSWERS: Mutex<Answers> = Mutex::new(Answers { entries: Vec::new() });

/// The resolver of every agent built by [`super::http::agent`].
#[derive(Debug, Default)]
pub struct Resolver;

impl Resolve for Resolver {
    fn resolve(&self, uri: &Uri, config: &Config, timeout: NextTimeout) -> Result<ResolvedSocketAddrs, ureq::Error> {
        // Anything unusual (a proxy scheme, a URI without a host) goes to ureq's resolver,
        // which also reports a bad URI the way ureq does.
        let Some((host, port)) = host_and_port(uri) else {
            return DefaultResolver::default().resolve(uri, config, timeout);
        };
        let family = config.ip_family();
        if let Some(ips) = literal(host) {
            return addresses(ips.into_iter().map(|ip| SocketAddr::new(ip, port)), family);
        }
        let key = format!("{host}:{port} {family:?}");
        if let Some(known) = ANSWERS.lock().get(&key, Instant::now()) {
            return Ok(known);
        }
        let found = DefaultResolver::default().resolve(uri, config, timeout)?;
        ANSWERS.lock().put(key, found.clone(), Instant::now());
        Ok(found)
    }
}

/// The host (without the brackets of an IPv6 literal) and port of an `http` or `https`
/// URI; `None` for any other.
fn host_and_port(uri: &Uri) -> Option<(&str, u16)> {
    let default_port = match uri.scheme_str()? {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = uri.authority()?;
    let host = authority.host();
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Some((host, authority.port_u16().unwrap_or(default_port)))
}

/// The addresses of a host that needs no lookup: an IP literal, or `localhost`.
fn literal(host: &str) -> Option<Vec<IpAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(vec![ip]);
    }
    // IPv4 first: most local servers (Ollama, llama.cpp, test fakes) bind 127.0.0.1 only,
    // and ureq tries the addresses in order.
    let name = host.strip_suffix('.').unwrap_or(host);
    name.eq_ignore_ascii_case("localhost").then(|| vec![Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()])
}

/// `addrs` of the wanted family, as ureq wants them: at least one, or `HostNotFound`.
fn addresses(addrs: impl Iterator<Item = SocketAddr>, family: IpFamily) -> Result<ResolvedSocketAddrs, ureq::Error> {
    let mut out = DefaultResolver::default().empty();
    for addr in family.keep_wanted(addrs) {
        if out.try_push(addr).is_err() {
            break;
        }
    }
    if out.is_empty() { Err(ureq::Error::HostNotFound) } else { Ok(out) }
}

/// Looked-up answers, oldest first.
struct Answers {
    entries: Vec<(String, ResolvedSocketAddrs, Instant)>,
}

impl Answers {
    /// The answer for `key` if it is younger than [`TTL`] at `now`.
    fn get(&self, key: &str, now: Instant) -> Option<ResolvedSocketAddrs> {
        let (_, addrs, at) = self.entries.iter().find(|(k, _, _)| k == key)?;
        (now.saturating_duration_since(*at) < TTL).then(|| addrs.clone())
    }

    fn put(&mut self, key: String, addrs: ResolvedSocketAddrs, now: Instant) {
        self.entries.retain(|(k, _, _)| *k != key);
        if self.entries.len() >= MAX_NAMES {
            self.entries.remove(0);
        }
        self.entries.push((key, addrs, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ureq::Timeout;
    use ureq::unversioned::transport::time::Duration as UreqDuration;

    /// A timeout that has already passed: nothing that waits for a lookup thread can
    /// succeed in it.
    fn no_time_left() -> NextTimeout {
        NextTimeout { after: UreqDuration::Exact(Duration::ZERO), reason: Timeout::Resolve, ..NextTimeout::default() }
    }

    fn resolve(url: &str) -> Result<Vec<SocketAddr>, ureq::Error> {
        let uri: Uri = url.parse().unwrap();
        Resolver.resolve(&uri, &Config::default(), no_time_left()).map(|a| a.to_vec())
    }

    /// Issue 8 §4: ureq's resolver started a thread for every request, even to an IP
    /// address. An address that needs no lookup is answered on the calling thread, so
    /// it resolves even with no time left to wait for a helper.
    #[test]
    fn r_an_ip_literal_or_localhost_resolves_without_a_lookup_thread() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:443".parse().unwrap();
        assert_eq!(resolve("http://127.0.0.1:8080/bot1/getMe").unwrap(), [v4]);
        assert_eq!(resolve("https://[::1]/x").unwrap(), [v6]);
        let localhost = ["127.0.0.1:80".parse().unwrap(), "[::1]:80".parse().unwrap()];
        assert_eq!(resolve("http://localhost/").unwrap(), localhost);
        assert_eq!(resolve("http://LocalHost./").unwrap(), localhost);
    }

    #[test]
    fn the_wanted_ip_family_is_kept() {
        let uri: Uri = "http://localhost:9/".parse().unwrap();
        let config = Config::builder().ip_family(IpFamily::Ipv6Only).build();
        let got = Resolver.resolve(&uri, &config, no_time_left()).unwrap();
        assert_eq!(got.to_vec(), ["[::1]:9".parse::<SocketAddr>().unwrap()]);
        let config = Config::builder().ip_family(IpFamily::Ipv4Only).build();
        let uri: Uri = "http://[::1]:9/".parse().unwrap();
        assert!(matches!(Resolver.resolve(&uri, &config, no_time_left()), Err(ureq::Error::HostNotFound)));
    }

    #[test]
    fn other_uris_go_to_ureqs_resolver() {
        assert!(matches!(resolve("ftp://127.0.0.1/"), Err(ureq::Error::BadUri(_))));
        assert!(matches!(resolve("/relative"), Err(ureq::Error::BadUri(_))));
    }

    #[test]
    fn answers_are_kept_for_a_minute_and_the_oldest_make_room() {
        let mut answers = Answers { entries: Vec::new() };
        let t0 = Instant::now();
        let mut addrs = DefaultResolver::default().empty();
        addrs.push("10.0.0.1:443".parse().unwrap());
        answers.put("a:443".into(), addrs.clone(), t0);
        assert_eq!(answers.get("a:443", t0 + TTL - Duration::from_millis(1)).as_deref(), Some(&addrs[..]));
        assert!(answers.get("a:443", t0 + TTL).is_none());
        assert!(answers.get("b:443", t0).is_none());
        for n in 0..MAX_NAMES {
            answers.put(format!("n{n}"), addrs.clone(), t0);
        }
        assert_eq!(answers.entries.len(), MAX_NAMES);
        assert!(answers.get("a:443", t0).is_none(), "the oldest name made room");
        // A new answer replaces the old one for the same name.
        answers.put("n5".into(), addrs.clone(), t0 + TTL);
        assert!(answers.get("n5", t0 + TTL).is_some());
        assert_eq!(answers.entries.len(), MAX_NAMES);
    }
}
