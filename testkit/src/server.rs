//! The `deltacast` binary under test on free loopback ports ([`Server`]), with its HTTP API,
//! metrics and HLS readiness helpers, and ffprobe on what it serves.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::hls::{resolve, Playlist, Segment};
use crate::http::{http_get, Resp};
use crate::process::{free_port, kill_child, require_tool, run_bounded, tail_of};

const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

/// A running `deltacast serve` on free loopback ports. Killed on drop.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub rtmp: SocketAddr,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub config_path: PathBuf,
    label: String,
}

impl Server {
    /// Start the server with `extra_toml` appended to a config that sets the listen addresses
    /// and short timeouts. `extra_toml` must not repeat `[server]` or `[rtmp]` sections; use
    /// [`Server::start_with`] for that.
    pub fn start(label: &str, extra_toml: &str) -> Server {
        Self::start_with(label, "", "", extra_toml, &[])
    }

    /// `server_extra` / `rtmp_extra` are lines added under `[server]` / `[rtmp]`; `rest` is the
    /// remainder of the file (`[hls]`, `[[streams]]`, ...); `args` are extra CLI flags.
    pub fn start_with(
        label: &str,
        server_extra: &str,
        rtmp_extra: &str,
        rest: &str,
        args: &[&str],
    ) -> Server {
        Self::start_inner(label, server_extra, rtmp_extra, rest, args, None, LOOPBACK)
    }

    /// [`Server::start`] listening on `ip` (any 127.0.0.0/8 address), so that several nodes of a
    /// cluster each have an address of their own.
    pub fn start_on(label: &str, ip: std::net::Ipv4Addr, rest: &str) -> Server {
        Self::start_inner(label, "", "", rest, &[], None, ip)
    }

    /// [`Server::start`] on a chosen HTTP address (from [`free_port`]), for nodes whose
    /// configs must name each other before they start.
    pub fn start_at(label: &str, http: SocketAddr, extra_toml: &str) -> Server {
        let ip = match http.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => LOOPBACK,
        };
        Self::start_inner_at(label, "", "", extra_toml, &[], None, Some(http), ip)
    }

    /// [`Server::start_with`] with the server's open-files limit (RLIMIT_NOFILE, soft and hard)
    /// set to `nofile`, as an operator's `LimitNOFILE=` would.
    pub fn start_with_nofile(label: &str, server_extra: &str, rest: &str, nofile: u64) -> Server {
        Self::start_inner(label, server_extra, "", rest, &[], Some(nofile), LOOPBACK)
    }

    fn start_inner(
        label: &str,
        server_extra: &str,
        rtmp_extra: &str,
        rest: &str,
        args: &[&str],
        nofile: Option<u64>,
        ip: std::net::Ipv4Addr,
    ) -> Server {
        Self::start_inner_at(
            label,
            server_extra,
            rtmp_extra,
            rest,
            args,
            nofile,
            None,
            ip,
        )
    }

    #[allow(clippy::too_many_arguments)] // one private constructor behind the public start_* helpers
    fn start_inner_at(
        label: &str,
        server_extra: &str,
        rtmp_extra: &str,
        rest: &str,
        args: &[&str],
        nofile: Option<u64>,
        fixed_http: Option<SocketAddr>,
        ip: std::net::Ipv4Addr,
    ) -> Server {
        let bin = crate::deltacast_bin();
        let mut last_err = String::new();
        // The free-port trick can race with another test; retry with fresh ports.
        for attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("deltacast-{label}-"))
                .tempdir()
                .expect("tempdir");
            let http: SocketAddr =
                fixed_http.unwrap_or_else(|| format!("{ip}:{}", free_port()).parse().unwrap());
            let rtmp: SocketAddr = format!("{ip}:{}", free_port()).parse().unwrap();
            let config = format!(
                "[server]\nhttp_listen = \"{http}\"\n{server_extra}\n\n\
                 [rtmp]\nlisten = \"{rtmp}\"\nhandshake_timeout_ms = 3000\nidle_timeout_ms = 5000\n{rtmp_extra}\n\n\
                 {rest}\n"
            );
            let config_path = dir.path().join("deltacast.toml");
            std::fs::write(&config_path, &config).expect("write config");
            let log = dir.path().join("server.log");
            let log_file = File::create(&log).expect("create log");
            let mut cmd = Command::new(&bin);
            cmd.arg("serve")
                .arg("--config")
                .arg(&config_path)
                .args(args)
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file);
            if let Some(n) = nofile {
                use std::os::unix::process::CommandExt;
                // SAFETY: setrlimit is async-signal-safe and touches only the child's limits.
                unsafe {
                    cmd.pre_exec(move || {
                        let r = libc::rlimit {
                            rlim_cur: n as libc::rlim_t,
                            rlim_max: n as libc::rlim_t,
                        };
                        if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut server = Server {
                child,
                http,
                rtmp,
                dir,
                log,
                config_path,
                label: label.to_string(),
            };
            match server.wait_healthy(Duration::from_secs(20)) {
                Ok(()) => return server,
                Err(e) => {
                    let log = server.log_tail(80);
                    last_err =
                        format!("attempt {attempt}: {e}\nconfig:\n{config}\nserver log:\n{log}");
                    let in_use = log.contains("in use") || log.contains("AddrInUse");
                    server.silent_kill();
                    if !in_use {
                        break;
                    }
                }
            }
        }
        panic!("[{label}] deltacast did not become healthy: {last_err}");
    }

    /// Kill the process with SIGKILL (no shutdown of any kind), then start it again on the same
    /// config file, so on the same HTTP and RTMP addresses (CLI flags are not repeated); its log
    /// continues in the same file.
    pub fn kill9_and_restart(&mut self) {
        kill_child(&mut self.child);
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("open the log");
        self.child = Command::new(crate::deltacast_bin())
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("restart deltacast");
        if let Err(e) = self.wait_healthy(Duration::from_secs(20)) {
            panic!(
                "[{}] restart: {e}
{}",
                self.label,
                self.log_tail(60)
            );
        }
    }

    fn silent_kill(&mut self) {
        kill_child(&mut self.child);
        self.label.clear();
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("deltacast exited early with {status}"));
            }
            if let Ok(r) = http_get(self.http, "/healthz", Duration::from_secs(2)) {
                if r.status == 200 {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("/healthz not 200 within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process is still running and /healthz answers 200.
    pub fn assert_alive(&mut self, context: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("[{}] deltacast died ({status}) {context}", self.label);
        }
        let r = http_get(self.http, "/healthz", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("[{}] /healthz failed {context}: {e}", self.label));
        assert_eq!(r.status, 200, "[{}] /healthz {context}", self.label);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process in KiB (Linux /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// Threads of the server process (Linux /proc).
    pub fn threads(&self) -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        s.lines()
            .find(|l| l.starts_with("Threads:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// The sum of a Prometheus metric's samples in /metrics (all label sets); `name` is the
    /// full sample name, e.g. `deltacast_sfu_sessions_pending`.
    pub fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .text()
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    pub fn rtmp_url(&self, key: &str) -> String {
        format!("rtmp://{}/live/{}", self.rtmp, key)
    }

    pub fn get(&self, path: &str) -> Resp {
        self.get_timeout(path, Duration::from_secs(10))
    }

    pub fn get_timeout(&self, path: &str, timeout: Duration) -> Resp {
        http_get(self.http, path, timeout)
            .unwrap_or_else(|e| panic!("[{}] GET {path}: {e}", self.label))
    }

    pub fn playlist_path(stream: &str) -> String {
        format!("/hls/{stream}/index.m3u8")
    }

    /// GET the media playlist; panics on a non-200 answer.
    pub fn playlist(&self, stream: &str) -> Playlist {
        self.playlist_query(stream, "")
    }

    /// GET the media playlist with a query string (`_HLS_msn=..&_HLS_part=..`, `_HLS_skip=YES`).
    pub fn playlist_query(&self, stream: &str, query: &str) -> Playlist {
        let mut path = Self::playlist_path(stream);
        if !query.is_empty() {
            path.push('?');
            path.push_str(query);
        }
        let r = self.get(&path);
        assert_eq!(
            r.status,
            200,
            "[{}] GET {path}: {}",
            self.label,
            String::from_utf8_lossy(&r.body)
        );
        Playlist::parse(&r.text()).unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", r.text()))
    }

    /// Wait until the stream's playlist has at least `segments` complete segments (and, when
    /// `min_parts` > 0, that many parts listed). Returns the playlist.
    pub fn wait_segments(&self, stream: &str, segments: usize, timeout: Duration) -> Playlist {
        let deadline = Instant::now() + timeout;
        let path = Self::playlist_path(stream);
        let mut last = String::new();
        loop {
            if let Ok(r) = http_get(self.http, &path, Duration::from_secs(5)) {
                if r.status == 200 {
                    if let Ok(p) = Playlist::parse(&r.text()) {
                        if p.segments.len() >= segments {
                            return p;
                        }
                    }
                }
                last = format!("{} {}", r.status, r.text());
            }
            if Instant::now() > deadline {
                panic!(
                    "[{}] {path}: fewer than {segments} segments after {timeout:?}; last answer:\n{last}\nserver log:\n{}",
                    self.label,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The stream's playlist keeps advancing: its next part position moves forward within
    /// `within` (the publisher of that stream is still being served).
    pub fn assert_advancing(&self, stream: &str, within: Duration, context: &str) {
        let first = self.playlist(stream).next_part();
        let deadline = Instant::now() + within;
        loop {
            std::thread::sleep(Duration::from_millis(100));
            let now = self.playlist(stream).next_part();
            if now > first {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "[{}] stream '{stream}' stopped advancing {context}: next part {first:?} -> {now:?} in {within:?}\nserver log:\n{}",
                    self.label,
                    self.log_tail(60)
                );
            }
        }
    }

    /// GET /api/v1/cluster as JSON (200, never cached).
    pub fn cluster(&self) -> serde_json::Value {
        let r = self.get("/api/v1/cluster");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        r.json()
    }

    /// Poll /api/v1/cluster until `ok` holds; panics with the last answer after `timeout`.
    pub fn wait_cluster(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.cluster();
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?}; last /api/v1/cluster: {v:#}\nlog:\n{}",
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// GET /api/v1/streams as JSON.
    pub fn api_streams(&self) -> serde_json::Value {
        let r = self.get("/api/v1/streams");
        assert_eq!(r.status, 200, "GET /api/v1/streams: {}", r.text());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/api/v1/streams is not JSON: {e}: {}", r.text()))
    }

    /// GET /api/v1/streams/{name}: Some(JSON) on 200, None on 404, panics otherwise.
    pub fn api_stream(&self, name: &str) -> Option<serde_json::Value> {
        let r = self.get(&format!("/api/v1/streams/{name}"));
        match r.status {
            200 => Some(
                serde_json::from_slice(&r.body)
                    .unwrap_or_else(|e| panic!("stream JSON: {e}: {}", r.text())),
            ),
            404 => None,
            s => panic!("GET /api/v1/streams/{name}: unexpected {s}: {}", r.text()),
        }
    }

    /// Wait until the API reports `name` in `state`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            let v = self.api_stream(name);
            if let Some(v) = &v {
                if v["state"] == state {
                    return v.clone();
                }
            }
            last = v.or(last);
            if Instant::now() > deadline {
                panic!(
                    "[{}] stream '{name}' not '{state}' within {timeout:?}; last API answer: {last:?}\nserver log:\n{}",
                    self.label,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Download `uri` (as listed in `stream`'s playlist, resolved like a player would).
    pub fn get_media(&self, stream: &str, uri: &str) -> Resp {
        let path = resolve(&Self::playlist_path(stream), uri);
        self.get(&path)
    }

    /// Download EXT-X-MAP + one segment of `stream`, concatenate them and run ffprobe on the
    /// file.
    pub fn probe_segment(&self, stream: &str, pl: &Playlist, seg: &Segment) -> serde_json::Value {
        let map = pl.map_uri.as_ref().expect("EXT-X-MAP");
        let init = self.get_media(stream, map);
        assert_eq!(init.status, 200, "EXT-X-MAP {map}");
        let media = self.get_media(stream, &seg.uri);
        assert_eq!(media.status, 200, "segment {}", seg.uri);
        let file = self
            .dir
            .path()
            .join(format!("probe-{stream}-{}.mp4", seg.msn));
        let mut bytes = init.body;
        bytes.extend_from_slice(&media.body);
        std::fs::write(&file, &bytes).unwrap();
        ffprobe_count_frames(&file)
    }
}

/// The first stream of `codec_type` ("video", "audio") in an ffprobe answer.
pub fn probe_stream<'a>(
    probe: &'a serde_json::Value,
    codec_type: &str,
) -> Option<&'a serde_json::Value> {
    probe["streams"]
        .as_array()?
        .iter()
        .find(|s| s["codec_type"] == codec_type)
}

impl Drop for Server {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() && !self.label.is_empty() {
            eprintln!(
                "──── [{}] deltacast log ({}), last 150 lines ────\n{}\n────",
                self.label,
                self.log.display(),
                self.log_tail(150)
            );
        }
    }
}

/// Run ffprobe on `file`, counting decoded frames; returns its JSON (`streams`).
pub fn ffprobe_count_frames(file: &Path) -> serde_json::Value {
    require_tool("ffprobe");
    let out = run_bounded(
        Command::new("ffprobe").args([
            "-v",
            "error",
            "-count_frames",
            "-show_entries",
            "stream=index,codec_type,codec_name,nb_read_frames,width,height,sample_rate,channels,r_frame_rate",
            "-of",
            "json",
        ]).arg(file),
        Duration::from_secs(60),
    );
    assert!(
        out.0.success(),
        "ffprobe failed on {}: {}",
        file.display(),
        out.2
    );
    serde_json::from_str(&out.1).unwrap_or_else(|e| panic!("ffprobe JSON: {e}: {}", out.1))
}
