//! Peers for the RTMP push end-to-end tests: nginx with the RTMP module, `ffmpeg -listen`
//! receivers, misbehaving TCP peers (a proxy that stalls or resets mid-stream, a server that stalls
//! in the handshake), a rustls TLS terminator, and a small HTTP client with bodies for the API.
//!
//! Every child process is killed on drop; every wait is bounded; a test that panics prints the
//! logs of the peers it started.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{free_port, require_tool, run_bounded};

const NGX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

fn tail(path: &Path, n: usize) -> String {
    let t = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn kill(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// True when something listens on 127.0.0.1:`port` (read from /proc/net/tcp, without connecting:
/// `ffmpeg -listen 1` accepts exactly one connection, a probe would eat it).
pub fn is_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
            })
    })
}

pub fn wait_listening(port: u16, timeout: Duration, what: &str) {
    let t0 = Instant::now();
    while !is_listening(port) {
        assert!(
            t0.elapsed() < timeout,
            "{what} did not listen on port {port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ───────────────────────────── nginx-rtmp ─────────────────────────────

/// nginx with the RTMP module: application `app`, `live on`, every publish recorded to
/// `<dir>/rec/<key>.flv`.
pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
    log: PathBuf,
    label: String,
}

pub fn require_nginx() {
    let ok = Command::new("nginx")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok || !Path::new(NGX_RTMP_MODULE).exists() {
        panic!(
            "nginx with the RTMP module is required by the push end-to-end tests \
             (Debian: apt-get install nginx libnginx-mod-rtmp; .ci/run installs them); \
             missing: {}",
            if ok { NGX_RTMP_MODULE } else { "nginx" }
        );
    }
}

impl Nginx {
    pub fn start(label: &str) -> Nginx {
        require_nginx();
        let dir = tempfile::Builder::new()
            .prefix(&format!("nginx-{label}-"))
            .tempdir()
            .unwrap();
        // nginx workers run unprivileged: they must reach and write the record directory.
        let rec = dir.path().join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o777));
        let port = free_port();
        let conf = format!(
            "load_module {NGX_RTMP_MODULE};\n\
             worker_processes 1;\n\
             events {{ worker_connections 256; }}\n\
             rtmp {{\n  server {{\n    listen 127.0.0.1:{port};\n    chunk_size 4096;\n\
             \x20   application app {{\n      live on;\n      record all;\n      record_path {};\n\
             \x20     record_unique off;\n    }}\n  }}\n}}\n",
            rec.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("nginx.stderr");
        let child = Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg(format!(
                "daemon off; pid {}; error_log stderr info;",
                dir.path().join("nginx.pid").display()
            ))
            .stdin(Stdio::null())
            .stdout(File::create(&log).unwrap())
            .stderr(File::create(dir.path().join("nginx.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        let n = Nginx {
            child,
            port,
            dir,
            log,
            label: label.into(),
        };
        wait_listening(port, Duration::from_secs(10), "nginx");
        n
    }

    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/app/{key}", self.port)
    }

    pub fn record(&self, key: &str) -> PathBuf {
        self.dir.path().join("rec").join(format!("{key}.flv"))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.dir.path().join("nginx.err"), n)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: nginx stops at once; the master takes its workers down.
        unsafe_terminate(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] nginx log, last 40 lines ────\n{}\n────",
                self.label,
                self.log_tail(40)
            );
        }
    }
}

fn unsafe_terminate(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    kill(child);
}

// ───────────────────────────── ffmpeg -listen ─────────────────────────────

/// `ffmpeg -listen 1 -i rtmp://127.0.0.1:PORT/app/key -c copy -f flv OUT`: one RTMP publish in,
/// written to a file.
pub struct FfmpegListen {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
    log: PathBuf,
    label: String,
}

impl FfmpegListen {
    pub fn start(label: &str, port: u16, out: &Path) -> FfmpegListen {
        require_tool("ffmpeg");
        let log = out.with_extension("log");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"])
            .args(["-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/app/key"))
            .args(["-c", "copy", "-f", "flv", "-y"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ffmpeg: {e}"));
        let f = FfmpegListen {
            child,
            port,
            out: out.to_path_buf(),
            log,
            label: label.into(),
        };
        wait_listening(port, Duration::from_secs(10), "ffmpeg -listen");
        f
    }

    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/app/key", self.port)
    }

    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Wait for ffmpeg to finish (it does when the publish ends); false on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }
}

impl Drop for FfmpegListen {
    fn drop(&mut self) {
        kill(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] ffmpeg -listen log, last 20 lines ────\n{}\n────",
                self.label,
                self.log_tail(20)
            );
        }
    }
}

// ───────────────────────────── ffprobe ─────────────────────────────

/// (pts seconds, keyframe) of every packet of one stream type (`v` or `a`) of a media file.
pub fn packets(file: &Path, stream: &str) -> Vec<(f64, bool)> {
    require_tool("ffprobe");
    let (st, out, err) = run_bounded(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", stream])
            .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"])
            .arg(file),
        Duration::from_secs(60),
    );
    assert!(st.success(), "ffprobe {}: {err}", file.display());
    out.lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let pts = it.next()?.trim().parse::<f64>().ok()?;
            let flags = it.next().unwrap_or("");
            Some((pts, flags.starts_with('K')))
        })
        .collect()
}

/// Decode a file completely; returns ffmpeg's error output (empty when it decoded cleanly).
pub fn decode_errors(file: &Path) -> String {
    let (_, _, err) = run_bounded(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(file)
            .args(["-f", "null", "-"]),
        Duration::from_secs(60),
    );
    err
}

/// Largest gap between consecutive packet times.
pub fn max_gap(p: &[(f64, bool)]) -> f64 {
    p.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max)
}

// ───────────────────────────── misbehaving peers ─────────────────────────────

/// What a [`Proxy`] does to each connection after forwarding for a while.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Stop reading from the client (and forwarding), keep the socket open.
    StallAfter(Duration),
    /// Reset the client connection (RST) and close the upstream one.
    ResetAfter(Duration),
}

/// Loopback TCP peers run on a small tokio runtime of their own.
pub struct Peers {
    rt: tokio::runtime::Runtime,
    held: Arc<Mutex<Vec<tokio::net::TcpStream>>>,
    pub accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}

impl Peers {
    pub fn new() -> Peers {
        Peers {
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
            held: Arc::new(Mutex::new(Vec::new())),
            accepted: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn listener(&self, recv_buf: Option<u32>) -> (tokio::net::TcpListener, u16) {
        let _g = self.rt.enter();
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(b) = recv_buf {
            s.set_recv_buffer_size(b).unwrap();
        }
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = s.local_addr().unwrap().port();
        (s.listen(64).unwrap(), port)
    }

    /// A proxy to `upstream` that injects `fault` into every connection. Returns its port.
    pub fn proxy(&self, upstream: SocketAddr, fault: Fault) -> u16 {
        // A small receive buffer so that a stall reaches the sender quickly.
        let (l, port) = self.listener(Some(64 * 1024));
        let (held, accepted) = (self.held.clone(), self.accepted.clone());
        self.rt.spawn(async move {
            while let Ok((client, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let held = held.clone();
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let after = match fault {
                        Fault::StallAfter(d) | Fault::ResetAfter(d) => d,
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let c2u = async { tokio::io::copy(&mut cr, &mut uw).await };
                    let u2c = async { tokio::io::copy(&mut ur, &mut cw).await };
                    let _ = tokio::time::timeout(after, async { tokio::join!(c2u, u2c) }).await;
                    let client = cr.reunite(cw).unwrap();
                    drop(ur.reunite(uw));
                    match fault {
                        Fault::StallAfter(_) => held.lock().unwrap().push(client),
                        Fault::ResetAfter(_) => {
                            let _ = client.set_zero_linger();
                            drop(client);
                        }
                    }
                });
            }
        });
        port
    }

    /// A server that accepts, reads the RTMP C0+C1 handshake (1537 bytes), then never reads or
    /// writes again (the socket stays open). Returns its port.
    pub fn stall_in_handshake(&self) -> u16 {
        let (l, port) = self.listener(Some(64 * 1024));
        let (held, accepted) = (self.held.clone(), self.accepted.clone());
        self.rt.spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let held = held.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncReadExt;
                    let mut b = vec![0u8; 1537];
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b)).await;
                    held.lock().unwrap().push(s);
                });
            }
        });
        port
    }

    /// A TLS terminator (self-signed certificate for 127.0.0.1 from rcgen) forwarding the
    /// plaintext to `upstream`. Returns its port.
    pub fn tls_terminator(&self, upstream: SocketAddr) -> u16 {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (l, port) = self.listener(None);
        let accepted = self.accepted.clone();
        self.rt.spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                accepted.fetch_add(1, Ordering::Relaxed);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        port
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.held.lock().unwrap().clear();
    }
}

// ───────────────────────────── HTTP with bodies ─────────────────────────────

pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection, bounded by `timeout`.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> io::Result<Reply> {
    let timeout = Duration::from_secs(10);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    req.push_str("\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no HTTP head in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line in {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}
