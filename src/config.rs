//! Configuration: one TOML file, every key defaulted, unknown keys rejected by name; CLI flags
//! override file values (see `main.rs`).

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub rtmp: RtmpConfig,
    pub hls: HlsConfig,
    pub demo: DemoConfig,
    /// Stream name ↔ publish keys. Empty: the server runs open (key = name).
    pub streams: Vec<StreamConfig>,
    /// RTMP/RTMPS push destinations (`[[destinations]]`), each naming the stream it carries.
    /// More can be added at run time through the API.
    pub destinations: Vec<DestinationConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The one HTTP listener: HLS, API, metrics, health.
    pub http_listen: SocketAddr,
    /// Bearer token for mutating API calls. Empty: mutating calls only from loopback.
    pub admin_token: String,
    /// Worker threads of the HTTP control-plane runtime.
    pub http_threads: usize,
    /// Largest HTTP request head/body accepted, in bytes.
    pub max_request_bytes: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RtmpConfig {
    pub listen: SocketAddr,
    /// The RTMP application name publishers use: rtmp://HOST/{app}/{key}.
    pub app: String,
    /// A peer that has not finished the handshake and connect/publish in this time is dropped.
    pub handshake_timeout_ms: u64,
    /// A publisher that sends no media for this long is dropped.
    pub idle_timeout_ms: u64,
    pub max_connections: usize,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HlsConfig {
    /// LL-HLS part target duration.
    pub part_target_ms: u64,
    /// Segments are cut on the first keyframe at or after this duration.
    pub segment_target_ms: u64,
    /// Segments listed in the media playlist.
    pub window_segments: usize,
    /// Segments kept downloadable after they leave the playlist (CDN and slow players).
    pub retain_segments: usize,
    /// Cache-Control max-age for playlists (non-blocking requests).
    pub playlist_max_age_s: u64,
    /// Access-Control-Allow-Origin for HLS responses.
    pub cors_origin: String,
    /// Core to pin the packager thread to; -1 leaves it to the scheduler.
    pub packager_core: i64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Publish the built-in looping program.
    pub enabled: bool,
    pub name: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Public name (appears in playback URLs).
    pub name: String,
    /// Secret publish keys (rtmp://HOST/live/KEY, WHIP Bearer).
    #[serde(default)]
    pub keys: Vec<String>,
}

/// One RTMP push destination of a stream.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// The stream (public name) to push. It need not be live yet.
    pub stream: String,
    /// Unique within the stream (API paths use it); derived from the URL's host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `rtmp://host[:port]/app/key` or `rtmps://…` (the key is a secret: never shown in full).
    pub url: String,
    /// Verify the RTMPS server's certificate (turn off only for self-signed test peers).
    #[serde(default = "default_true")]
    pub tls_verify: bool,
    /// Give up after this many consecutive failures (state `failed`); absent: retry forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

fn default_true() -> bool {
    true
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http_listen: "0.0.0.0:8080".parse().unwrap(),
            admin_token: String::new(),
            http_threads: 2,
            max_request_bytes: 64 * 1024,
        }
    }
}

impl Default for RtmpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:1935".parse().unwrap(),
            app: "live".into(),
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 10_000,
            max_connections: 1_000,
        }
    }
}

impl Default for HlsConfig {
    fn default() -> Self {
        Self {
            part_target_ms: 200,
            segment_target_ms: 2_000,
            window_segments: 6,
            retain_segments: 4,
            playlist_max_age_s: 1,
            cors_origin: "*".into(),
            packager_core: -1,
        }
    }
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            name: "demo".into(),
        }
    }
}

/// What a publish key resolves to.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyLookup<'a> {
    /// A configured key: publish under this public name.
    Stream(&'a str),
    /// Open mode (no streams configured): the key is the name.
    Open,
    Unknown,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| format!("config: {e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("config: cannot read {}: {e}", path.display()))?;
        Self::from_toml(&text)
    }

    pub fn validate(&self) -> Result<(), String> {
        let h = &self.hls;
        if !(50..=5_000).contains(&h.part_target_ms) {
            return Err("config: hls.part_target_ms must be within 50..=5000".into());
        }
        if h.segment_target_ms < h.part_target_ms * 2 || h.segment_target_ms > 60_000 {
            return Err(
                "config: hls.segment_target_ms must be at least twice part_target_ms and at most 60000"
                    .into(),
            );
        }
        if h.window_segments < 3 {
            return Err("config: hls.window_segments must be at least 3".into());
        }
        let mut names = std::collections::HashSet::new();
        let mut keys = std::collections::HashSet::new();
        for s in &self.streams {
            if !crate::media::stream::valid_stream_name(&s.name) {
                return Err(format!("config: streams: invalid name '{}'", s.name));
            }
            if !names.insert(&s.name) {
                return Err(format!("config: streams: duplicate name '{}'", s.name));
            }
            for k in &s.keys {
                if k.is_empty() || k.len() > 256 || k.contains('\0') {
                    return Err(format!(
                        "config: streams.{}: keys must be 1..=256 bytes without NUL",
                        s.name
                    ));
                }
                if !keys.insert(k) {
                    return Err(format!("config: streams.{}: key used twice", s.name));
                }
            }
        }
        let mut dest_ids = std::collections::HashSet::new();
        for d in &self.destinations {
            crate::egress::push::validate(&d.stream, &d.into())
                .map_err(|e| format!("config: destinations (stream '{}'): {e}", d.stream))?;
            if let Some(id) = &d.id {
                if !dest_ids.insert((d.stream.as_str(), id.as_str())) {
                    return Err(format!(
                        "config: destinations: stream '{}' has two destinations with id '{id}'",
                        d.stream
                    ));
                }
            }
        }
        Ok(())
    }

    /// True when no stream is configured, so anyone may publish any name.
    pub fn open_mode(&self) -> bool {
        self.streams.is_empty()
    }

    /// Resolve a publish key to a stream name.
    pub fn lookup_key(&self, key: &str) -> KeyLookup<'_> {
        if key.is_empty() || key.len() > 256 || key.contains('\0') {
            return KeyLookup::Unknown;
        }
        if self.open_mode() {
            return KeyLookup::Open;
        }
        for s in &self.streams {
            if s.keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes()))
            {
                return KeyLookup::Stream(&s.name);
            }
        }
        KeyLookup::Unknown
    }
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c = Config::from_toml("").unwrap();
        assert_eq!(c.server.http_listen.port(), 8080);
        assert_eq!(c.rtmp.listen.port(), 1935);
        assert_eq!(c.hls.part_target_ms, 200);
        let e = Config::from_toml("[hls]\npart_target = 3\n").unwrap_err();
        assert!(e.contains("part_target"), "{e}");
        let e = Config::from_toml("bogus = 1\n").unwrap_err();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn keys_map_to_names() {
        let c =
            Config::from_toml("[[streams]]\nname = \"town-hall\"\nkeys = [\"s3cret\"]\n").unwrap();
        assert_eq!(c.lookup_key("s3cret"), KeyLookup::Stream("town-hall"));
        assert_eq!(c.lookup_key("town-hall"), KeyLookup::Unknown);
        assert_eq!(c.lookup_key(&"k".repeat(300)), KeyLookup::Unknown);
        let open = Config::default();
        assert_eq!(open.lookup_key("anything"), KeyLookup::Open);
    }

    #[test]
    fn destinations_parse_and_are_checked() {
        let c = Config::from_toml(
            "[[destinations]]\nstream = \"show\"\nid = \"yt\"\nurl = \"rtmp://h/live2/k\"\n\n\
             [[destinations]]\nstream = \"show\"\nurl = \"rtmps://h/app/k\"\ntls_verify = false\nmax_retries = 3\n",
        )
        .unwrap();
        assert!(c.open_mode(), "destinations do not configure streams");
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.destinations[0].id.as_deref(), Some("yt"));
        assert!(c.destinations[0].tls_verify);
        assert!(!c.destinations[1].tls_verify);
        assert_eq!(c.destinations[1].max_retries, Some(3));
        for bad in [
            "[[destinations]]\nstream = \"show\"\nurl = \"http://h/a/k\"\n",
            "[[destinations]]\nstream = \"a b\"\nurl = \"rtmp://h/a/k\"\n",
            "[[destinations]]\nstream = \"s\"\nurl = \"rtmp://h/a/k\"\nbogus = 1\n",
            "[[destinations]]\nstream = \"s\"\nid = \"x\"\nurl = \"rtmp://h/a/k\"\n\
             [[destinations]]\nstream = \"s\"\nid = \"x\"\nurl = \"rtmp://h/a/k2\"\n",
        ] {
            assert!(Config::from_toml(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_bad_values() {
        assert!(Config::from_toml("[hls]\npart_target_ms = 10\n").is_err());
        assert!(Config::from_toml("[[streams]]\nname = \"a b\"\n").is_err());
    }
}
