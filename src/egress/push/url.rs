//! Push destination URLs: `rtmp[s]://host[:port]/app[/more/app/path]/key`.
//!
//! The stream key is the last path segment (query string included, since some platforms put
//! tokens there); the application is everything between the authority and that segment. Keys are
//! secrets: [`PushUrl::masked`] is the only form that goes into the API and the log.

use std::fmt;

/// Longest URL accepted (API and config).
pub const MAX_URL_LEN: usize = 2048;

/// A parsed destination URL.
#[derive(Clone, PartialEq, Eq)]
pub struct PushUrl {
    /// `rtmps://` (TLS) rather than `rtmp://`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Whether the URL named the port (kept in the tcUrl as written).
    explicit_port: bool,
    /// RTMP application (may contain `/`).
    pub app: String,
    /// Stream key: a secret.
    pub key: String,
}

impl fmt::Debug for PushUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl PushUrl {
    pub fn parse(url: &str) -> Result<PushUrl, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!("URL longer than {MAX_URL_LEN} bytes"));
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("URL contains whitespace or control characters".into());
        }
        let (tls, rest) = if let Some(r) = strip_prefix_ci(url, "rtmps://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "rtmp://") {
            (false, r)
        } else {
            return Err("URL must start with rtmp:// or rtmps://".into());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => return Err("URL has no application and stream key path".into()),
        };
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (host, port) = split_host_port(authority)?;
        let default_port = if tls { 443 } else { 1935 };
        let (port, explicit_port) = match port {
            Some(p) => (p, true),
            None => (default_port, false),
        };
        let path = path.trim_end_matches('/');
        let Some(cut) = path.rfind('/') else {
            return Err("URL path must be /app/stream-key".into());
        };
        let app = &path[..cut];
        let key = &path[cut + 1..];
        if app.is_empty() || app.split('/').any(str::is_empty) {
            return Err("URL has an empty application name".into());
        }
        if key.is_empty() {
            return Err("URL has an empty stream key".into());
        }
        Ok(PushUrl {
            tls,
            host: host.to_string(),
            port,
            explicit_port,
            app: app.to_string(),
            key: key.to_string(),
        })
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "rtmps"
        } else {
            "rtmp"
        }
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.explicit_port {
            format!("{host}:{}", self.port)
        } else {
            host
        }
    }

    /// The `tcUrl` sent in `connect`: the URL without the stream key.
    pub fn tc_url(&self) -> String {
        format!("{}://{}/{}", self.scheme(), self.authority(), self.app)
    }

    /// The URL with the stream key masked: what the API and the log show.
    pub fn masked(&self) -> String {
        format!("{}/{}", self.tc_url(), mask_key(&self.key))
    }

    /// `host:port` to connect to.
    pub fn connect_addr(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }
}

/// Show at most the first and last two characters of a long secret (16 characters or more),
/// `****` for a shorter one.
pub fn mask_key(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 16 {
        return "****".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}…{tail}")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return Err("URL has an unterminated IPv6 address".into());
        };
        let host = &rest[..end];
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err("URL has garbage after the IPv6 address".into()),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("URL has no host".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
    {
        return Err("URL host has characters a host name cannot have".into());
    }
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("URL port '{p}' is not a valid port")),
            Ok(n) => Some(n),
        },
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_app_key_port_and_scheme() {
        let u = PushUrl::parse("rtmp://a.rtmp.youtube.com/live2/abcd-efgh-ijkl-mnop").unwrap();
        assert!(!u.tls);
        assert_eq!((u.host.as_str(), u.port), ("a.rtmp.youtube.com", 1935));
        assert_eq!(u.app, "live2");
        assert_eq!(u.key, "abcd-efgh-ijkl-mnop");
        assert_eq!(u.tc_url(), "rtmp://a.rtmp.youtube.com/live2");
        assert_eq!(u.masked(), "rtmp://a.rtmp.youtube.com/live2/ab…op");

        let u = PushUrl::parse("RTMPS://live-api-s.facebook.com:443/rtmp/FB-123?s_bl=1").unwrap();
        assert!(u.tls);
        assert_eq!(u.port, 443);
        assert_eq!(u.app, "rtmp");
        assert_eq!(u.key, "FB-123?s_bl=1");
        assert_eq!(u.tc_url(), "rtmps://live-api-s.facebook.com:443/rtmp");
        assert_eq!(u.masked(), "rtmps://live-api-s.facebook.com:443/rtmp/****");

        let u = PushUrl::parse("rtmps://127.0.0.1/a/b/c/key").unwrap();
        assert_eq!(
            (u.port, u.app.as_str(), u.key.as_str()),
            (443, "a/b/c", "key")
        );

        let u = PushUrl::parse("rtmp://[::1]:1936/app/k/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.key.as_str()),
            ("::1", 1936, "k")
        );
        assert_eq!(u.tc_url(), "rtmp://[::1]:1936/app");
    }

    #[test]
    fn rejects_what_cannot_be_pushed_to() {
        for bad in [
            "http://host/app/key",
            "rtmp://host/key",
            "rtmp://host",
            "rtmp://host//key",
            "rtmp:///app/key",
            "rtmp://host:0/app/key",
            "rtmp://host:99999/app/key",
            "rtmp://user:pw@host/app/key",
            "rtmp://ho st/app/key",
            "rtmp://host/app/",
            "rtmp://[::1/app/key",
        ] {
            assert!(PushUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(PushUrl::parse(&format!("rtmp://h/a/{}", "k".repeat(3000))).is_err());
    }

    #[test]
    fn debug_and_mask_never_show_the_key() {
        let u = PushUrl::parse("rtmp://h/app/supersecretkey123").unwrap();
        let d = format!("{u:?}");
        assert!(!d.contains("supersecretkey123"), "{d}");
        assert_eq!(mask_key("short"), "****");
        assert_eq!(mask_key("ünïcödé-kéy-long"), "ün…ng");
    }
}
