//! StreamingProvider: where a viewer gets a stream is a separate question from where a publisher
//! sends it.
//!
//! - The **ingest** side (RTMP URL + key, WHIP URL) is always this node: publishers never learn
//!   which provider carries the program.
//! - The **playback** side is the provider's: `origin` hands out this node's WHEP and HLS URLs,
//!   `cdn` hands out HLS URLs on a CDN domain whose origin is this node (WHEP stays direct),
//!   `external` pushes the program over RTMP to an external ingest (Amazon IVS, …) through the RTMP
//!   push engine and hands out that service's playback URL.
//!
//! The watch page reads `GET /api/v1/streams/{stream}/playback` and never names a provider; the
//! director reads `GET /api/v1/streams/{stream}/ingest`. A stream's provider comes from its
//! `[[streams]] provider = …` (default `[web] default_provider`, itself `"origin"`) and can be
//! changed at run time with `PUT /api/v1/streams/{stream}/provider` (not written back to the
//! config file).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::config::Config;
pub use crate::config::ProviderConfig;
use crate::egress::push::{NewDestination, PushEngine, PushError, Source};

/// The push destination id the `external` provider uses on its stream.
pub const EXTERNAL_DESTINATION_ID: &str = "external-provider";

// ───────────────────────────── description (config / API) ─────────────────────────────

/// Check the provider parts of a config without acting on them: `web.public_url`,
/// `web.default_provider` and each `[[streams]] provider`. Errors name the key.
pub fn check_config(cfg: &Config) -> Result<(), String> {
    if !cfg.web.public_url.is_empty() {
        check_http_base(&cfg.web.public_url, "value")
            .map_err(|e| format!("config: web.public_url: {e}"))?;
    }
    if matches!(cfg.web.default_provider, ProviderConfig::External { .. }) {
        return Err(
            "config: web.default_provider cannot be external (one external ingest per stream): \
             set provider on the [[streams]] entry"
                .into(),
        );
    }
    cfg.web
        .default_provider
        .validate()
        .map_err(|e| format!("config: web.default_provider: {e}"))?;
    for s in &cfg.streams {
        if let Some(p) = &s.provider {
            p.validate()
                .map_err(|e| format!("config: streams.{}: provider: {e}", s.name))?;
        }
    }
    Ok(())
}

// The description is plain data in `crate::config`; its checks live here, with the providers.
impl ProviderConfig {
    /// Check the settings (URLs) without acting on them.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ProviderConfig::Origin => Ok(()),
            ProviderConfig::Cdn { hls_base } => check_http_base(hls_base, "hls_base"),
            ProviderConfig::External {
                ingest_url,
                playback_url,
                tls_verify,
            } => {
                let probe = NewDestination {
                    id: Some(EXTERNAL_DESTINATION_ID.into()),
                    url: ingest_url.clone(),
                    tls_verify: *tls_verify,
                    max_retries: None,
                };
                crate::egress::push::validate("probe", &probe)
                    .map_err(|e| format!("ingest_url: {e}"))?;
                check_http_url(playback_url, "playback_url")
            }
        }
    }

    /// The description with secrets masked (for GET and logs).
    pub fn public_view(&self) -> serde_json::Value {
        match self {
            ProviderConfig::External {
                ingest_url,
                playback_url,
                tls_verify,
            } => {
                let masked = crate::egress::push::url::PushUrl::parse(ingest_url)
                    .map(|u| u.masked())
                    .unwrap_or_else(|_| "<invalid>".into());
                serde_json::json!({
                    "kind": "external",
                    "ingest_url": masked,
                    "playback_url": playback_url,
                    "tls_verify": tls_verify,
                })
            }
            other => serde_json::to_value(other).unwrap_or_default(),
        }
    }
}

fn check_http_url(u: &str, what: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{what} must start with http:// or https://, not '{u}'"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err(format!("{what}: '{u}' has no usable host"));
    }
    if u.len() > 2048
        || u.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"')
    {
        return Err(format!(
            "{what}: '{u}' is too long or contains whitespace/quotes"
        ));
    }
    Ok(())
}

fn check_http_base(u: &str, what: &str) -> Result<(), String> {
    check_http_url(u, what)?;
    if u.contains(['?', '#']) {
        return Err(format!(
            "{what}: '{u}' must be scheme://host[:port][/prefix], without query or fragment"
        ));
    }
    Ok(())
}

// ───────────────────────────── what the endpoints return ─────────────────────────────

/// Where this node is reachable, as seen by the client asking (or as configured).
#[derive(Clone, Debug)]
pub struct NodeUrls {
    /// `http[s]://host[:port]` of the HTTP listener, no trailing slash.
    pub http_base: String,
    /// Host name (or IP, IPv6 in brackets) for the RTMP URL.
    pub host: String,
    pub rtmp_port: u16,
    pub rtmp_app: String,
    /// This node serves WebRTC (WHEP).
    pub webrtc: bool,
}

impl NodeUrls {
    pub fn whep(&self, stream: &str) -> String {
        format!("{}/whep/{stream}", self.http_base)
    }

    pub fn hls(&self, stream: &str) -> String {
        format!("{}/hls/{stream}/index.m3u8", self.http_base)
    }
}

/// What the watch page needs (the `playback` document minus the live state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Playback {
    /// WHEP endpoint, or null when WebRTC is not offered for this stream.
    pub webrtc: Option<WebRtcPlayback>,
    /// LL-HLS playlist URL.
    pub hls: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WebRtcPlayback {
    pub whep: String,
}

/// What a director needs to publish (behind the admin token: it carries the keys).
#[derive(Clone, Debug, Serialize)]
pub struct Ingest {
    pub rtmp: RtmpIngest,
    pub whip: WhipIngest,
}

#[derive(Clone, Debug, Serialize)]
pub struct RtmpIngest {
    /// Server URL as OBS wants it: `rtmp://host:port/app`.
    pub server: String,
    /// The stream key (the first configured key; the stream name in open mode).
    pub key: String,
    /// `server/key` in one URL, for ffmpeg.
    pub url: String,
    /// Every key that may publish this stream.
    pub keys: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WhipIngest {
    pub url: String,
    /// Bearer token for the WHIP POST (the stream key).
    pub token: String,
}

/// Side effects a provider may need (the external one pushes the program).
pub trait ProgramPush: Send + Sync {
    fn add(&self, stream: &str, dest: NewDestination) -> Result<(), String>;
    fn remove(&self, stream: &str, id: &str);
}

impl ProgramPush for PushEngine {
    fn add(&self, stream: &str, dest: NewDestination) -> Result<(), String> {
        PushEngine::add(self, stream, dest, Source::Config)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn remove(&self, stream: &str, id: &str) {
        match PushEngine::remove(self, stream, id) {
            Ok(_) | Err(PushError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(stream, id, error = %e, "provider: removing push failed"),
        }
    }
}

// ───────────────────────────── the trait and its three kinds ─────────────────────────────

/// Separates where a stream is published (ingest) from where it is watched (playback).
pub trait StreamingProvider: Send + Sync + fmt::Debug {
    /// The description this provider was built from.
    fn config(&self) -> &ProviderConfig;

    /// Playback URLs for `stream` (what the watch page gets).
    fn playback(&self, node: &NodeUrls, stream: &str) -> Playback;

    /// Where a publisher sends `stream`. Every provider takes the program in on this node, so
    /// publishers keep the same URL when the provider changes.
    fn ingest(&self, node: &NodeUrls, stream: &str, keys: &[String]) -> Ingest {
        let server = format!("rtmp://{}:{}/{}", node.host, node.rtmp_port, node.rtmp_app);
        let key = keys.first().cloned().unwrap_or_else(|| stream.to_string());
        Ingest {
            rtmp: RtmpIngest {
                url: format!("{server}/{key}"),
                server,
                key: key.clone(),
                keys: if keys.is_empty() {
                    vec![key.clone()]
                } else {
                    keys.to_vec()
                },
            },
            whip: WhipIngest {
                url: format!("{}/whip/{stream}", node.http_base),
                token: key,
            },
        }
    }

    /// Called when the provider takes over `stream` (start pushing, …).
    fn attach(&self, _stream: &str, _push: Option<&dyn ProgramPush>) -> Result<(), String> {
        Ok(())
    }

    /// Called when another provider takes over `stream`.
    fn detach(&self, _stream: &str, _push: Option<&dyn ProgramPush>) {}
}

#[derive(Debug)]
pub struct Origin {
    cfg: ProviderConfig,
}

impl StreamingProvider for Origin {
    fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    fn playback(&self, node: &NodeUrls, stream: &str) -> Playback {
        Playback {
            webrtc: node.webrtc.then(|| WebRtcPlayback {
                whep: node.whep(stream),
            }),
            hls: Some(node.hls(stream)),
        }
    }
}

#[derive(Debug)]
pub struct Cdn {
    cfg: ProviderConfig,
    hls_base: String,
}

impl StreamingProvider for Cdn {
    fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    fn playback(&self, node: &NodeUrls, stream: &str) -> Playback {
        Playback {
            webrtc: node.webrtc.then(|| WebRtcPlayback {
                whep: node.whep(stream),
            }),
            hls: Some(format!("{}/hls/{stream}/index.m3u8", self.hls_base)),
        }
    }
}

#[derive(Debug)]
pub struct External {
    cfg: ProviderConfig,
}

impl StreamingProvider for External {
    fn config(&self) -> &ProviderConfig {
        &self.cfg
    }

    fn playback(&self, _node: &NodeUrls, _stream: &str) -> Playback {
        let ProviderConfig::External { playback_url, .. } = &self.cfg else {
            unreachable!("External is built from ProviderConfig::External")
        };
        Playback {
            webrtc: None,
            hls: Some(playback_url.clone()),
        }
    }

    fn attach(&self, stream: &str, push: Option<&dyn ProgramPush>) -> Result<(), String> {
        let ProviderConfig::External {
            ingest_url,
            tls_verify,
            ..
        } = &self.cfg
        else {
            unreachable!("External is built from ProviderConfig::External")
        };
        let push = push.ok_or("the RTMP push engine is not running")?;
        push.add(
            stream,
            NewDestination {
                id: Some(EXTERNAL_DESTINATION_ID.into()),
                url: ingest_url.clone(),
                tls_verify: *tls_verify,
                max_retries: None,
            },
        )
    }

    fn detach(&self, stream: &str, push: Option<&dyn ProgramPush>) {
        if let Some(p) = push {
            p.remove(stream, EXTERNAL_DESTINATION_ID);
        }
    }
}

/// Build the provider a description names (validated first).
pub fn build(cfg: &ProviderConfig) -> Result<Arc<dyn StreamingProvider>, String> {
    cfg.validate()?;
    Ok(match cfg {
        ProviderConfig::Origin => Arc::new(Origin { cfg: cfg.clone() }),
        ProviderConfig::Cdn { hls_base } => Arc::new(Cdn {
            cfg: cfg.clone(),
            hls_base: hls_base.trim_end_matches('/').to_string(),
        }),
        ProviderConfig::External { .. } => Arc::new(External { cfg: cfg.clone() }),
    })
}

// ───────────────────────────── per-stream choice ─────────────────────────────

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error("no such stream")]
    UnknownStream,
    #[error("{0}")]
    Invalid(String),
    #[error("the provider could not start: {0}")]
    Attach(String),
}

/// Which provider each stream uses right now.
pub struct ProviderRegistry {
    default: Arc<dyn StreamingProvider>,
    /// Configured streams (name → keys); empty in open mode.
    keys: HashMap<String, Vec<String>>,
    open: bool,
    current: RwLock<HashMap<String, Arc<dyn StreamingProvider>>>,
    push: Option<Arc<dyn ProgramPush>>,
}

impl fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("ProviderRegistry")
            .field("default", &self.default.config().kind())
            .field("streams", &self.current.read().len())
            .finish()
    }
}

impl ProviderRegistry {
    /// Providers of the configured streams; `external` ones start pushing now (the destination
    /// waits for the publisher).
    pub fn new(cfg: &Config, push: Option<Arc<dyn ProgramPush>>) -> Result<Self, String> {
        check_config(cfg)?;
        let default = build(&cfg.web.default_provider)
            .map_err(|e| format!("config: web.default_provider: {e}"))?;
        let mut current = HashMap::new();
        let mut keys = HashMap::new();
        for s in &cfg.streams {
            keys.insert(s.name.clone(), s.keys.clone());
            if let Some(p) = &s.provider {
                let p =
                    build(p).map_err(|e| format!("config: streams.{}: provider: {e}", s.name))?;
                p.attach(&s.name, push.as_deref())
                    .map_err(|e| format!("config: streams.{}: provider: {e}", s.name))?;
                current.insert(s.name.clone(), p);
            }
        }
        Ok(Self {
            default,
            keys,
            open: cfg.open_mode(),
            current: RwLock::new(current),
            push,
        })
    }

    /// A stream viewers and publishers may address: configured, or any valid name in open mode.
    pub fn known(&self, stream: &str) -> bool {
        if !crate::media::stream::valid_stream_name(stream) {
            return false;
        }
        self.open || self.keys.contains_key(stream)
    }

    /// The stream's provider; `None` for a stream that is not known.
    pub fn get(&self, stream: &str) -> Option<Arc<dyn StreamingProvider>> {
        if !self.known(stream) {
            return None;
        }
        Some(
            self.current
                .read()
                .get(stream)
                .cloned()
                .unwrap_or_else(|| self.default.clone()),
        )
    }

    /// Publish keys of a stream (empty in open mode: the key is the name).
    pub fn keys(&self, stream: &str) -> &[String] {
        self.keys.get(stream).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Switch a stream to another provider. The new one is attached before the old one is
    /// detached, except when both push (one external ingest per stream).
    pub fn set(
        &self,
        stream: &str,
        cfg: ProviderConfig,
    ) -> Result<Arc<dyn StreamingProvider>, ProviderError> {
        if !self.known(stream) {
            return Err(ProviderError::UnknownStream);
        }
        let new = build(&cfg).map_err(ProviderError::Invalid)?;
        let mut cur = self.current.write();
        let old = cur
            .get(stream)
            .cloned()
            .unwrap_or_else(|| self.default.clone());
        if old.config() == &cfg {
            return Ok(old);
        }
        let push = self.push.as_deref();
        // The external provider's destination has a fixed id: free it before re-adding.
        old.detach(stream, push);
        if let Err(e) = new.attach(stream, push) {
            // Put the old one back as it was.
            let _ = old.attach(stream, push);
            return Err(ProviderError::Attach(e));
        }
        tracing::info!(
            stream,
            from = old.config().kind(),
            to = cfg.kind(),
            "provider changed"
        );
        cur.insert(stream.to_string(), new.clone());
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn node(webrtc: bool) -> NodeUrls {
        NodeUrls {
            http_base: "http://live.example.com:8080".into(),
            host: "live.example.com".into(),
            rtmp_port: 1935,
            rtmp_app: "live".into(),
            webrtc,
        }
    }

    #[derive(Default)]
    struct FakePush(Mutex<Vec<String>>);
    impl ProgramPush for FakePush {
        fn add(&self, stream: &str, dest: NewDestination) -> Result<(), String> {
            if dest.url.contains("refuse") {
                return Err("refused".into());
            }
            self.0.lock().push(format!("add {stream} {}", dest.url));
            Ok(())
        }
        fn remove(&self, stream: &str, id: &str) {
            self.0.lock().push(format!("remove {stream} {id}"));
        }
    }

    #[test]
    fn validates_urls() {
        let cdn = |b: &str| ProviderConfig::Cdn { hls_base: b.into() }.validate();
        assert!(cdn("https://d1.cloudfront.net").is_ok());
        assert!(cdn("http://127.0.0.1:8081/prefix/").is_ok());
        assert!(cdn("ftp://x").is_err());
        assert!(cdn("https://").is_err());
        assert!(cdn("https://x/?a=1").is_err());
        assert!(cdn("https://u@x").is_err());
        let ext = |i: &str, p: &str| {
            ProviderConfig::External {
                ingest_url: i.into(),
                playback_url: p.into(),
                tls_verify: true,
            }
            .validate()
        };
        assert!(ext("rtmps://x:443/app/key", "https://y/a.m3u8").is_ok());
        assert!(ext("http://x/app/key", "https://y/a.m3u8").is_err());
        assert!(ext("rtmp://x/app/key", "y/a.m3u8").is_err());
    }

    /// The provider parts of a config, as `check-config` sees them: errors name the key.
    #[test]
    fn check_config_rejects_bad_provider_settings_by_key() {
        let ok = Config::from_toml(
            "[web]\npublic_url = \"https://live.example.com\"\n\
             default_provider = { kind = \"cdn\", hls_base = \"https://d1.cloudfront.net\" }\n\
             [[streams]]\nname = \"b\"\nprovider = { kind = \"external\", \
             ingest_url = \"rtmps://x.example:443/app/sk\", playback_url = \"https://x.example/b.m3u8\" }\n",
        )
        .unwrap();
        check_config(&ok).unwrap();
        for (bad, word) in [
            ("[web]\npublic_url = \"live.example.com\"\n", "web.public_url"),
            (
                "[[streams]]\nname = \"a\"\nprovider = { kind = \"cdn\", hls_base = \"x\" }\n",
                "streams.a: provider: hls_base",
            ),
            (
                "[[streams]]\nname = \"a\"\nprovider = { kind = \"external\", \
                 ingest_url = \"http://x/a/k\", playback_url = \"https://x/p\" }\n",
                "streams.a: provider: ingest_url",
            ),
            (
                "[web]\ndefault_provider = { kind = \"external\", ingest_url = \"rtmp://x/a/k\", playback_url = \"https://x/p\" }\n",
                "web.default_provider cannot be external",
            ),
            (
                "[web]\ndefault_provider = { kind = \"cdn\", hls_base = \"https://x/?q\" }\n",
                "web.default_provider: hls_base",
            ),
        ] {
            let cfg = Config::from_toml(bad).unwrap();
            let e = check_config(&cfg).unwrap_err();
            assert!(e.contains(word), "{bad}: {e}");
            let e = ProviderRegistry::new(&cfg, None).unwrap_err();
            assert!(e.contains(word), "registry: {bad}: {e}");
        }
    }

    #[test]
    fn playback_per_kind_and_same_ingest() {
        let o = build(&ProviderConfig::Origin).unwrap();
        let c = build(&ProviderConfig::Cdn {
            hls_base: "https://d1.cloudfront.net/".into(),
        })
        .unwrap();
        let e = build(&ProviderConfig::External {
            ingest_url: "rtmps://ivs.example:443/app/sk_secret".into(),
            playback_url: "https://ivs.example/play.m3u8".into(),
            tls_verify: true,
        })
        .unwrap();
        let n = node(true);
        let po = o.playback(&n, "show");
        assert_eq!(
            po.webrtc.unwrap().whep,
            "http://live.example.com:8080/whep/show"
        );
        assert_eq!(
            po.hls.unwrap(),
            "http://live.example.com:8080/hls/show/index.m3u8"
        );
        let pc = c.playback(&n, "show");
        assert_eq!(
            pc.webrtc.unwrap().whep,
            "http://live.example.com:8080/whep/show",
            "WHEP stays direct"
        );
        assert_eq!(
            pc.hls.unwrap(),
            "https://d1.cloudfront.net/hls/show/index.m3u8"
        );
        let pe = e.playback(&n, "show");
        assert!(pe.webrtc.is_none());
        assert_eq!(pe.hls.unwrap(), "https://ivs.example/play.m3u8");
        assert!(o.playback(&node(false), "show").webrtc.is_none());
        // Ingest does not depend on the provider.
        let keys = vec!["k1".to_string()];
        for p in [&o, &c, &e] {
            let i = p.ingest(&n, "show", &keys);
            assert_eq!(i.rtmp.url, "rtmp://live.example.com:1935/live/k1");
            assert_eq!(i.rtmp.server, "rtmp://live.example.com:1935/live");
            assert_eq!(i.whip.url, "http://live.example.com:8080/whip/show");
            assert_eq!(i.whip.token, "k1");
        }
        assert_eq!(o.ingest(&n, "show", &[]).rtmp.key, "show", "open mode");
        // Secrets masked in the public view.
        let v = e.config().public_view().to_string();
        assert!(!v.contains("sk_secret"), "{v}");
    }

    #[test]
    fn registry_switches_and_pushes() {
        let cfg = Config::from_toml(
            "[[streams]]\nname = \"a\"\nkeys = [\"ka\"]\n\
             [[streams]]\nname = \"b\"\nkeys = [\"kb\"]\n\
             provider = { kind = \"external\", ingest_url = \"rtmp://ivs.example/app/sk\", playback_url = \"https://ivs.example/b.m3u8\" }\n",
        )
        .unwrap();
        let push = Arc::new(FakePush::default());
        let reg = ProviderRegistry::new(&cfg, Some(push.clone())).unwrap();
        assert_eq!(
            push.0.lock().as_slice(),
            ["add b rtmp://ivs.example/app/sk"]
        );
        assert_eq!(reg.get("a").unwrap().config().kind(), "origin");
        assert_eq!(reg.get("b").unwrap().config().kind(), "external");
        assert!(reg.get("c").is_none(), "not configured");
        assert_eq!(reg.keys("a"), ["ka".to_string()]);
        assert_eq!(
            reg.set("c", ProviderConfig::Origin).unwrap_err(),
            ProviderError::UnknownStream
        );
        let cdn = ProviderConfig::Cdn {
            hls_base: "https://cdn.example".into(),
        };
        reg.set("b", cdn.clone()).unwrap();
        assert_eq!(
            push.0.lock().last().unwrap(),
            &format!("remove b {EXTERNAL_DESTINATION_ID}")
        );
        assert_eq!(reg.get("b").unwrap().config(), &cdn);
        // A refused attach leaves the old provider in place.
        let bad = ProviderConfig::External {
            ingest_url: "rtmp://refuse.example/app/k".into(),
            playback_url: "https://x/p.m3u8".into(),
            tls_verify: true,
        };
        assert!(matches!(reg.set("a", bad), Err(ProviderError::Attach(_))));
        assert_eq!(reg.get("a").unwrap().config().kind(), "origin");
        assert!(matches!(
            reg.set(
                "a",
                ProviderConfig::Cdn {
                    hls_base: "nope".into()
                }
            ),
            Err(ProviderError::Invalid(_))
        ));
        // Open mode: any valid name.
        let open = ProviderRegistry::new(&Config::default(), None).unwrap();
        assert!(open.get("anything").is_some());
        assert!(open.get("../x").is_none());
    }
}
