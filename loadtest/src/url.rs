//! The URLs the tool talks to: a plain-HTTP target's socket address and authority, and the
//! resolution of a reference (a WHEP redirect's or session's `Location`) against the URL it
//! came from, as a browser's `new URL(location, base)` does (RFC 3986 §5.2; the path part is
//! testkit's [`testkit::hls::resolve`]).

use std::net::{SocketAddr, ToSocketAddrs};

/// Where a request goes: the address to connect to, the URL's authority (`host:port`, the node
/// that answers, as counted in the results) and the path with its query.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub addr: SocketAddr,
    pub authority: String,
    pub path: String,
}

/// `scheme://authority` and the rest (path and query, "/" when empty) of an absolute URL.
fn split(u: &str) -> Option<(&str, &str, String)> {
    let (scheme, rest) = u.split_once("://")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let path = match tail {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    Some((scheme, authority, path))
}

/// The scheme of `r` when it has one (`http:`…), lower-cased.
fn scheme_of(r: &str) -> Option<String> {
    let i = r.find(':')?;
    let s = &r[..i];
    let ok = s.chars().next()?.is_ascii_alphabetic()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then(|| s.to_ascii_lowercase())
}

/// `reference` resolved against the absolute URL `base`: an absolute http(s) URL stays as it
/// is, `//host/p` takes the base's scheme, `/p`, `p` and `?q` the base's authority (and
/// directory). A fragment is dropped; a scheme other than http(s) is refused.
pub fn resolve(base: &str, reference: &str) -> Result<String, String> {
    let r = reference.split('#').next().unwrap_or("").trim();
    let (scheme, authority, path) =
        split(base).ok_or_else(|| format!("{base}: not an absolute URL"))?;
    if let Some(s) = scheme_of(r) {
        return match s.as_str() {
            "http" | "https" if split(r).is_some_and(|(_, a, _)| !a.is_empty()) => Ok(r.into()),
            "http" | "https" => Err(format!("{reference}: no host")),
            _ => Err(format!("{reference}: not an http(s) URL")),
        };
    }
    if let Some(rest) = r.strip_prefix("//") {
        return resolve(base, &format!("{scheme}://{rest}"));
    }
    Ok(format!(
        "{scheme}://{authority}{}",
        testkit::hls::resolve(&path, r)
    ))
}

/// The target of an `http://` URL (the tool speaks plain HTTP only: `https://` is refused).
pub fn target(u: &str) -> Result<Target, String> {
    let Some((scheme, authority, path)) = split(u) else {
        return Err(format!("{u}: not an absolute http:// URL"));
    };
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(format!("{u}: only http:// URLs are supported"));
    }
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{u}: bad host"));
    }
    let hp = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = hp
        .to_socket_addrs()
        .map_err(|e| format!("{u}: {e}"))?
        .next()
        .ok_or_else(|| format!("{u}: no address"))?;
    Ok(Target {
        addr,
        authority: authority.to_string(),
        path,
    })
}

/// http://HOST:PORT[/...] → (socket address, Host header). Only plain HTTP.
pub fn parse_url(u: &str) -> Result<(SocketAddr, String), String> {
    target(u).map(|t| (t.addr, t.authority))
}

/// The path of an http:// URL ("/" when it has none).
pub fn url_path(u: &str) -> String {
    split(u).map_or_else(|| "/".to_string(), |(_, _, p)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_location_resolves_against_the_url_it_came_from() {
        let base = "http://127.0.0.2:8080/whep/demo";
        // The cluster's 307: an absolute URL on another node.
        assert_eq!(
            resolve(base, "http://127.0.0.3:9090/whep/demo?via=a").unwrap(),
            "http://127.0.0.3:9090/whep/demo?via=a"
        );
        // A session Location is relative to the node that answered (the final URL).
        let fin = "http://127.0.0.3:9090/whep/demo?via=a";
        assert_eq!(
            resolve(fin, "/whep/demo/sessions/x1").unwrap(),
            "http://127.0.0.3:9090/whep/demo/sessions/x1"
        );
        assert_eq!(
            resolve(fin, "demo/s/x1").unwrap(),
            "http://127.0.0.3:9090/whep/demo/s/x1"
        );
        assert_eq!(
            resolve(fin, "../other#frag").unwrap(),
            "http://127.0.0.3:9090/other"
        );
        assert_eq!(
            resolve(base, "?via=a").unwrap(),
            "http://127.0.0.2:8080/whep/demo?via=a"
        );
        assert_eq!(
            resolve(base, "//127.0.0.4:1/whep/demo").unwrap(),
            "http://127.0.0.4:1/whep/demo"
        );
        assert_eq!(
            resolve("http://h:1", "x").unwrap(),
            "http://h:1/x",
            "a base without a path"
        );
        // https is a URL (refused later by `target`), other schemes are not followed.
        assert_eq!(
            resolve(base, "HTTPS://n/whep/demo").unwrap(),
            "HTTPS://n/whep/demo"
        );
        assert!(resolve(base, "file:///etc/passwd").is_err());
        assert!(resolve(base, "javascript:alert(1)").is_err());
        assert!(resolve(base, "http://").is_err());
        assert!(resolve("/relative", "x").is_err());
    }

    #[test]
    fn targets_are_plain_http() {
        let t = target("http://127.0.0.3:9090/whep/demo?via=a").unwrap();
        assert_eq!(t.addr, "127.0.0.3:9090".parse().unwrap());
        assert_eq!(t.authority, "127.0.0.3:9090");
        assert_eq!(t.path, "/whep/demo?via=a");
        assert_eq!(target("http://127.0.0.1").unwrap().addr.port(), 80);
        assert_eq!(target("http://127.0.0.1:81?x").unwrap().path, "/?x");
        assert!(target("https://127.0.0.1/whep/demo").is_err());
        assert!(target("ftp://127.0.0.1/").is_err());
        assert!(target("http://u@127.0.0.1/").is_err());
        assert_eq!(url_path("http://h:1/janus"), "/janus");
        assert_eq!(url_path("http://h:1"), "/");
    }
}
