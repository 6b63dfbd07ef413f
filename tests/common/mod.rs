//! Shared harness for the end-to-end tests with real peers: the `deltacast` binary on free
//! loopback ports, ffmpeg publishers, nginx as a CDN ([`nginx`]), a small HTTP/1.1 client that
//! measures time, and an LL-HLS media playlist parser.
//!
//! Every wait is bounded; every child process is killed when its handle drops; when a test panics,
//! the logs of the server and of the publishers it started are printed.
//!
//! Tests that need ffmpeg or ffprobe fail (never skip) when the tool is missing.

#![allow(dead_code)]

pub mod nginx;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// ───────────────────────────── tools ─────────────────────────────

/// Panics with a clear message when `tool` cannot be run: the end-to-end tests need it.
pub fn require_tool(tool: &str) {
    let ok = Command::new(tool)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let hint = if std::env::var_os("CI").is_some() {
            ".ci/run installs it with apt-get; check that step's output"
        } else {
            "install it (Debian: apt-get install ffmpeg) or run .ci/run"
        };
        panic!("`{tool}` is required by the end-to-end tests but could not be run: {hint}");
    }
}

/// Ask the OS for a free loopback TCP port (bind :0 and release it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

fn tail_of(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

// ───────────────────────────── server ─────────────────────────────

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
        Self::start_inner(label, server_extra, rtmp_extra, rest, args, None)
    }

    /// [`Server::start_with`] with the server's open-files limit (RLIMIT_NOFILE, soft and hard)
    /// set to `nofile`, as an operator's `LimitNOFILE=` would.
    pub fn start_with_nofile(label: &str, server_extra: &str, rest: &str, nofile: u64) -> Server {
        Self::start_inner(label, server_extra, "", rest, &[], Some(nofile))
    }

    fn start_inner(
        label: &str,
        server_extra: &str,
        rtmp_extra: &str,
        rest: &str,
        args: &[&str],
        nofile: Option<u64>,
    ) -> Server {
        let bin = env!("CARGO_BIN_EXE_deltacast");
        let mut last_err = String::new();
        // The free-port trick can race with another test; retry with fresh ports.
        for attempt in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("deltacast-{label}-"))
                .tempdir()
                .expect("tempdir");
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let rtmp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let config = format!(
                "[server]\nhttp_listen = \"{http}\"\n{server_extra}\n\n\
                 [rtmp]\nlisten = \"{rtmp}\"\nhandshake_timeout_ms = 3000\nidle_timeout_ms = 5000\n{rtmp_extra}\n\n\
                 {rest}\n"
            );
            let config_path = dir.path().join("deltacast.toml");
            std::fs::write(&config_path, &config).expect("write config");
            let log = dir.path().join("server.log");
            let log_file = File::create(&log).expect("create log");
            let mut cmd = Command::new(bin);
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
                            return Err(io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
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

// ───────────────────────────── ffmpeg ─────────────────────────────

/// An ffmpeg child process (publisher). Killed on drop; its log is printed if the test panics.
pub struct Ffmpeg {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    label: String,
}

/// Input and encoder arguments of the standard test publisher: 30 fps test pattern with a 1 s
/// GOP (no B-frames) and a 440 Hz AAC tone.
pub fn h264_aac_args() -> Vec<String> {
    [
        "-re",
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

impl Ffmpeg {
    /// Publish the standard H.264 + AAC test program to `url`.
    pub fn publish(label: &str, url: &str) -> Ffmpeg {
        Self::spawn(label, &h264_aac_args(), url)
    }

    /// Run ffmpeg with `args` (inputs and encoders) writing FLV to `url`.
    pub fn spawn(label: &str, args: &[String], url: &str) -> Ffmpeg {
        require_tool("ffmpeg");
        let dir = tempfile::Builder::new()
            .prefix(&format!("ffmpeg-{label}-"))
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("ffmpeg.log");
        let f = File::create(&log).expect("ffmpeg log");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"])
            .args(args)
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ffmpeg: {e}"));
        Ffmpeg {
            child,
            log,
            _dir: dir,
            label: label.to_string(),
        }
    }

    /// Wait up to `timeout` for ffmpeg to exit; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill it abruptly (SIGKILL): the server sees the TCP connection drop.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// The lines of ffmpeg's log that report an error (why it gave up).
    pub fn error_lines(&self) -> String {
        let text = tail_of(&self.log, 400);
        let errs: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("fail") || l.contains("refused")
            })
            .collect();
        errs.join("\n")
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] ffmpeg log, last 30 lines ────\n{}\n────",
                self.label,
                self.log_tail(30)
            );
        }
    }
}

// ───────────────────────────── HTTP ─────────────────────────────

/// One HTTP response, with the time from starting to connect to the last body byte.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
    /// When the full response had been read.
    pub done_at: Instant,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A blocking HTTP/1.1 GET on a fresh connection (`Connection: close`), bounded by `timeout`
/// for connect and for each read.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Resp> {
    http_request(addr, "GET", path, timeout)
}

pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> io::Result<Resp> {
    http_request_with(addr, method, path, &[], timeout)
}

/// [`http_request`] with extra request headers (`("Range", "bytes=0-99")`).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<Resp> {
    let start = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_nodelay(true)?;
    exchange(&mut s, method, path, headers, false, start, timeout)
}

/// One request/response on an open connection (HTTP/1.1 keep-alive unless `close`), bounded by
/// `timeout` for each read and in total; `start` is when the answer's `elapsed` counts from.
pub fn exchange(
    s: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    close: bool,
    start: Instant,
    timeout: Duration,
) -> io::Result<Resp> {
    let deadline = start + timeout;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let addr = s.peer_addr()?;
    let conn = if close { "close" } else { "keep-alive" };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: deltacast-e2e\r\nConnection: {conn}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut tmp = [0u8; 16 * 1024];
    // Read the head.
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "response head timed out",
            ));
        }
        let n = s.read(&mut tmp)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before the response head ({} bytes)",
                    buf.len()
                ),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let hget = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut rest = buf[head_end + 4..].to_vec();
    let no_body =
        method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if let Some(len) = hget("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "body timed out"));
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body cut at {} of {len} bytes", rest.len()),
                ));
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        // Chunked or close-delimited: read to EOF, then decode.
        loop {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "body timed out"));
            }
            let n = s.read(&mut tmp)?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&tmp[..n]);
        }
        if hget("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            dechunk(&rest)?
        } else {
            rest
        }
    };
    let done_at = Instant::now();
    Ok(Resp {
        status,
        headers,
        body,
        elapsed: done_at - start,
        done_at,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn dechunk(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let i = find(data, b"\r\n").ok_or_else(|| io::Error::other("bad chunk size line"))?;
        let size_str = String::from_utf8_lossy(&data[..i]);
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_str:?}")))?;
        data = &data[i + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(io::Error::other("chunk cut short"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// Resolve a URI found in the playlist at `base_path` (an absolute path such as
/// `/hls/s/index.m3u8`) the way a player does (RFC 3986 reference resolution, paths only).
pub fn resolve(base_path: &str, uri: &str) -> String {
    if let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    {
        return match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        };
    }
    let (uri_path, query) = match uri.find('?') {
        Some(i) => (&uri[..i], &uri[i..]),
        None => (uri, ""),
    };
    let joined = if uri_path.starts_with('/') {
        uri_path.to_string()
    } else if uri_path.is_empty() {
        base_path.split('?').next().unwrap().to_string()
    } else {
        let base = base_path.split('?').next().unwrap();
        let dir = &base[..=base.rfind('/').unwrap_or(0)];
        format!("{dir}{uri_path}")
    };
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = joined.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == parts.len() - 1 {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == parts.len() - 1 {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut p = out.join("/");
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    p + query
}

// ───────────────────────────── playlist ─────────────────────────────

#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub uri: String,
    pub duration: f64,
    pub independent: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub msn: u64,
    pub uri: String,
    pub duration: f64,
    /// EXT-X-DISCONTINUITY stands before this segment.
    pub discontinuity: bool,
    pub program_date_time: Option<String>,
    /// EXT-X-PART lines listed before this segment's URI.
    pub parts: Vec<Part>,
}

/// A parsed LL-HLS media playlist.
#[derive(Clone, Debug, Default)]
pub struct Playlist {
    pub text: String,
    /// Every `#EXT…` tag line in order: (name, value after the colon).
    pub tags: Vec<(String, String)>,
    pub version: Option<u32>,
    pub target_duration: Option<f64>,
    pub media_sequence: u64,
    pub discontinuity_sequence: Option<u64>,
    pub part_target: Option<f64>,
    pub server_control: HashMap<String, String>,
    pub map_uri: Option<String>,
    /// EXT-X-SKIP:SKIPPED-SEGMENTS
    pub skipped: Option<u64>,
    pub segments: Vec<Segment>,
    /// Parts of the segment still being produced (after the last URI line).
    pub trailing_parts: Vec<Part>,
    pub preload_hint: Option<HashMap<String, String>>,
    pub endlist: bool,
    /// A discontinuity tag among the trailing parts (before the next segment's URI).
    pub trailing_discontinuity: bool,
}

/// Parse an attribute list (`A=B,C="x,y"`) into a map with quotes removed.
pub fn parse_attrs(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let key = s[key_start..i].trim().to_string();
        let mut val = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let vs = i;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
                val = s[vs..i].to_string();
                i += 1; // closing quote
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                val = s[vs..i].trim().to_string();
            }
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
        i += 1; // comma
    }
    out
}

impl Playlist {
    pub fn parse(text: &str) -> Result<Playlist, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("#EXTM3U") {
            return Err("playlist does not start with #EXTM3U".into());
        }
        let mut p = Playlist {
            text: text.to_string(),
            ..Default::default()
        };
        let mut pending_parts: Vec<Part> = Vec::new();
        let mut pending_disc = false;
        let mut pending_pdt: Option<String> = None;
        let mut pending_dur: Option<f64> = None;
        let mut segments: Vec<Segment> = Vec::new();
        for line in lines {
            if let Some(tag) = line.strip_prefix('#') {
                if !tag.starts_with("EXT") {
                    continue; // comment
                }
                let (name, value) = match tag.split_once(':') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => (tag.to_string(), String::new()),
                };
                let num = |v: &str| -> Result<f64, String> {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("#{name}: bad number {v:?}"))
                };
                match name.as_str() {
                    "EXT-X-VERSION" => p.version = Some(num(&value)? as u32),
                    "EXT-X-TARGETDURATION" => p.target_duration = Some(num(&value)?),
                    "EXT-X-MEDIA-SEQUENCE" => p.media_sequence = num(&value)? as u64,
                    "EXT-X-DISCONTINUITY-SEQUENCE" => {
                        p.discontinuity_sequence = Some(num(&value)? as u64)
                    }
                    "EXT-X-PART-INF" => {
                        let a = parse_attrs(&value);
                        p.part_target = Some(num(a
                            .get("PART-TARGET")
                            .ok_or("PART-INF without PART-TARGET")?)?);
                    }
                    "EXT-X-SERVER-CONTROL" => p.server_control = parse_attrs(&value),
                    "EXT-X-MAP" => {
                        p.map_uri = Some(
                            parse_attrs(&value)
                                .remove("URI")
                                .ok_or("EXT-X-MAP without URI")?,
                        )
                    }
                    "EXT-X-SKIP" => {
                        let a = parse_attrs(&value);
                        p.skipped = Some(num(a
                            .get("SKIPPED-SEGMENTS")
                            .ok_or("EXT-X-SKIP without SKIPPED-SEGMENTS")?)?
                            as u64);
                    }
                    "EXT-X-PROGRAM-DATE-TIME" => pending_pdt = Some(value.clone()),
                    "EXT-X-DISCONTINUITY" => pending_disc = true,
                    "EXTINF" => pending_dur = Some(num(value.split(',').next().unwrap_or(""))?),
                    "EXT-X-PART" => {
                        let a = parse_attrs(&value);
                        pending_parts.push(Part {
                            uri: a.get("URI").ok_or("EXT-X-PART without URI")?.clone(),
                            duration: num(a
                                .get("DURATION")
                                .ok_or("EXT-X-PART without DURATION")?)?,
                            independent: a.get("INDEPENDENT").map(String::as_str) == Some("YES"),
                        });
                    }
                    "EXT-X-PRELOAD-HINT" => p.preload_hint = Some(parse_attrs(&value)),
                    "EXT-X-ENDLIST" => p.endlist = true,
                    _ => {}
                }
                p.tags.push((name, value));
            } else {
                let dur = pending_dur
                    .take()
                    .ok_or_else(|| format!("URI line {line:?} without EXTINF"))?;
                segments.push(Segment {
                    msn: 0, // numbered below, once MEDIA-SEQUENCE and SKIP are known
                    uri: line.to_string(),
                    duration: dur,
                    discontinuity: std::mem::take(&mut pending_disc),
                    program_date_time: pending_pdt.take(),
                    parts: std::mem::take(&mut pending_parts),
                });
            }
        }
        let first = p.media_sequence + p.skipped.unwrap_or(0);
        for (i, seg) in segments.iter_mut().enumerate() {
            seg.msn = first + i as u64;
        }
        p.segments = segments;
        p.trailing_parts = pending_parts;
        p.trailing_discontinuity = pending_disc;
        Ok(p)
    }

    /// MSN of the segment being produced (the one after the last complete segment).
    pub fn next_msn(&self) -> u64 {
        self.media_sequence + self.skipped.unwrap_or(0) + self.segments.len() as u64
    }

    /// Last complete segment's MSN, if any.
    pub fn last_msn(&self) -> Option<u64> {
        self.segments.last().map(|s| s.msn)
    }

    /// (msn, part index) of the next part to be produced: the one the preload hint names.
    pub fn next_part(&self) -> (u64, u64) {
        (self.next_msn(), self.trailing_parts.len() as u64)
    }

    /// The playlist lists part `part` of segment `msn` (or that segment complete).
    pub fn has_part(&self, msn: u64, part: u64) -> bool {
        if msn < self.next_msn() {
            return true;
        }
        msn == self.next_msn() && (self.trailing_parts.len() as u64) > part
    }

    pub fn has_tag(&self, name: &str) -> bool {
        self.tags.iter().any(|(n, _)| n == name)
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all_parts(&self) -> impl Iterator<Item = &Part> {
        self.segments
            .iter()
            .flat_map(|s| s.parts.iter())
            .chain(self.trailing_parts.iter())
    }

    /// Every media URI a player may download from this playlist (map, segments, parts), not
    /// the preload hint.
    pub fn media_uris(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map_uri.iter().cloned().collect();
        for s in &self.segments {
            v.extend(s.parts.iter().map(|p| p.uri.clone()));
            v.push(s.uri.clone());
        }
        v.extend(self.trailing_parts.iter().map(|p| p.uri.clone()));
        v
    }

    pub fn has_discontinuity(&self) -> bool {
        self.has_tag("EXT-X-DISCONTINUITY")
    }
}

// ───────────────────────────── ffprobe ─────────────────────────────

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

/// Run a command to completion within `timeout` (killed after it); (status, stdout, stderr).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> (ExitStatus, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t2 = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, t1.join().unwrap(), t2.join().unwrap())
}

// ───────────────────────────── misc ─────────────────────────────

/// A small deterministic PRNG (xorshift64*), enough for garbage bytes.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_like_a_player() {
        let b = "/hls/s/index.m3u8";
        assert_eq!(resolve(b, "init.mp4"), "/hls/s/init.mp4");
        assert_eq!(resolve(b, "g1/p/3.4.m4s?x=1"), "/hls/s/g1/p/3.4.m4s?x=1");
        assert_eq!(resolve(b, "../t/a.mp4"), "/hls/t/a.mp4");
        assert_eq!(resolve(b, "/abs/x"), "/abs/x");
        assert_eq!(resolve(b, "http://h:1/hls/s/x"), "/hls/s/x");
        assert_eq!(resolve(b, "./a/./b"), "/hls/s/a/b");
    }

    #[test]
    fn parse_ll_hls_playlist() {
        let text = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-PART-INF:PART-TARGET=0.2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6,CAN-SKIP-UNTIL=12.0\n\
#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-MAP:URI=\"g/init.mp4\"\n\
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.1.m4s\"\n#EXTINF:0.4,\ng/10.m4s\n\
#EXT-X-DISCONTINUITY\n#EXTINF:0.4,\ng/11.m4s\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/12.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"g/12.1.m4s\"\n";
        let p = Playlist::parse(text).unwrap();
        assert_eq!(p.target_duration, Some(2.0));
        assert_eq!(p.part_target, Some(0.2));
        assert_eq!(p.server_control["PART-HOLD-BACK"], "0.6");
        assert_eq!(p.map_uri.as_deref(), Some("g/init.mp4"));
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].msn, 10);
        assert_eq!(p.segments[0].parts.len(), 2);
        assert!(p.segments[0].parts[0].independent);
        assert!(!p.segments[0].parts[1].independent);
        assert!(p.segments[1].discontinuity && !p.segments[0].discontinuity);
        assert_eq!(p.next_part(), (12, 1));
        assert!(p.has_part(12, 0) && !p.has_part(12, 1) && p.has_part(11, 5));
        assert_eq!(p.preload_hint.as_ref().unwrap()["URI"], "g/12.1.m4s");
        assert_eq!(p.media_uris().len(), 6);
        let d = Playlist::parse(
            "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n#EXTINF:1,\na\n",
        )
        .unwrap();
        assert_eq!(d.skipped, Some(4));
        assert_eq!(d.segments[0].msn, 7);
    }
}
