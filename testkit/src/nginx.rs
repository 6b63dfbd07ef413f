//! nginx as a peer, in its two roles: the generic-CDN block of docs/CDN.md in front of a
//! deltacast origin ([`Nginx::cdn`]; read from the file, so the test and the documentation cannot
//! drift apart), and an RTMP receiver with the RTMP module that records every publish
//! ([`Nginx::rtmp`]). One guard: its own directory and free loopback port, bounded start-up,
//! stopped on drop, its logs printed when the test panics.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{http_get, Resp};
use crate::process::{free_port, is_listening, kill_child, tail_of, tool_runs};
use crate::workspace_root;

const NGX_RTMP_MODULE: &str = "/usr/lib/nginx/modules/ngx_rtmp_module.so";

/// A running nginx. Stopped (SIGTERM, then SIGKILL) on drop.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    pub port: u16,
    pub dir: tempfile::TempDir,
    label: String,
}

/// The nginx block of docs/CDN.md (the code block after the `nginx-cdn-config` marker).
pub fn cdn_doc_nginx_block() -> String {
    let doc = std::fs::read_to_string(workspace_root().join("docs/CDN.md")).expect("docs/CDN.md");
    let after = doc
        .split_once("<!-- nginx-cdn-config")
        .expect("docs/CDN.md has the <!-- nginx-cdn-config --> marker")
        .1;
    let block = after
        .split_once("```nginx\n")
        .expect("an ```nginx block after the marker")
        .1;
    block
        .split_once("```")
        .expect("end of the nginx block")
        .0
        .to_string()
}

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// Panics with how to install it when nginx (and, for `rtmp`, its RTMP module) is missing.
pub fn require_nginx(rtmp: bool) {
    let ok = tool_runs(nginx_bin(), "-v");
    if !ok || (rtmp && !Path::new(NGX_RTMP_MODULE).exists()) {
        panic!(
            "nginx{} is required by this test (Debian: apt-get install nginx libnginx-mod-rtmp; \
             .ci/run installs them); missing: {}",
            if rtmp { " with the RTMP module" } else { "" },
            if ok { NGX_RTMP_MODULE } else { "nginx" }
        );
    }
}

impl Nginx {
    /// nginx running the generic-CDN block of docs/CDN.md in front of `origin`.
    pub fn cdn(origin: SocketAddr) -> Nginx {
        require_nginx(false);
        let dir = tempdir("cdn");
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut block = cdn_doc_nginx_block();
        for (from, to) in [
            ("server 127.0.0.1:8080;", format!("server {origin};")),
            ("listen 80;", format!("listen {addr};")),
            (
                "/var/cache/nginx/deltacast",
                dir.path().join("cache").display().to_string(),
            ),
        ] {
            assert!(
                block.contains(from),
                "docs/CDN.md's nginx block no longer contains `{from}`; update this test"
            );
            block = block.replace(from, &to);
        }
        let d = dir.path().display();
        let conf = format!(
            "http {{\n\
             log_format cdn '$request_uri $status $upstream_cache_status \"$upstream_addr\"';\n\
             access_log {d}/access.log cdn;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             {block}\n}}\n"
        );
        Self::spawn("cdn", dir, port, "", &conf)
    }

    /// nginx with the RTMP module: application `app`, `live on`, every publish recorded to
    /// [`Nginx::record`].
    pub fn rtmp(label: &str) -> Nginx {
        require_nginx(true);
        let dir = tempdir(label);
        // nginx workers run unprivileged: they must reach and write the record directory.
        let rec = dir.path().join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
        let _ = std::fs::set_permissions(&rec, std::fs::Permissions::from_mode(0o777));
        let port = free_port();
        let conf = format!(
            "rtmp {{\n  server {{\n    listen 127.0.0.1:{port};\n    chunk_size 4096;\n\
             \x20   application app {{\n      live on;\n      record all;\n      record_path {};\n\
             \x20     record_unique off;\n    }}\n  }}\n}}\n",
            rec.display()
        );
        Self::spawn(
            label,
            dir,
            port,
            &format!("load_module {NGX_RTMP_MODULE};\n"),
            &conf,
        )
    }

    /// Write `nginx.conf` (`head`, the common main context, then `body`), start nginx in the
    /// foreground and wait, bounded, until it listens on `port`.
    fn spawn(label: &str, dir: tempfile::TempDir, port: u16, head: &str, body: &str) -> Nginx {
        let d = dir.path().display();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let conf = format!(
            "{head}daemon off;\nworker_processes 1;\n{user}pid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 1024; }}\n{body}",
            user = if root { "user root;\n" } else { "" },
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).unwrap();
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nginx: {e}"));
        let mut n = Nginx {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            port,
            dir,
            label: label.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_listening(port) {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!(
                    "nginx exited ({st}) with this config:\n{conf}\n{}\n{}",
                    n.file("stderr.log"),
                    n.file("error.log")
                );
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    pub fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn get(&self, path: &str) -> Resp {
        http_get(self.addr, path, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("GET nginx {path}: {e}"))
    }

    /// Access-log lines of the CDN role (`uri status cache-status "upstream"`).
    pub fn log_lines(&self) -> Vec<String> {
        self.file("access.log")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// RTMP role: the publish URL of `key`.
    pub fn url(&self, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/app/{key}", self.port)
    }

    /// RTMP role: where the publish of `key` is recorded.
    pub fn record(&self, key: &str) -> PathBuf {
        self.dir.path().join("rec").join(format!("{key}.flv"))
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.dir.path().join("error.log"), n)
    }
}

fn tempdir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("nginx-{label}-"))
        .tempdir()
        .unwrap()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] nginx error log, last 40 lines ────\n{}\n──── access log ────\n{}",
                self.label,
                self.log_tail(40),
                self.file("access.log")
            );
        }
        // SIGTERM: nginx stops at once and the master takes its workers down.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid; it has not been reaped (try_wait said so).
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_child(&mut self.child);
    }
}
