//! nginx running the generic-CDN block of docs/CDN.md (read from the file, so the test and the
//! documentation cannot drift apart) in front of a deltacast origin, on a free loopback port with
//! its own cache directory. Killed on drop; its logs are printed when the test panics.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// nginx running the generic-CDN block of docs/CDN.md in front of an origin.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// The nginx block of docs/CDN.md (the code block after the `nginx-cdn-config` marker).
pub fn cdn_doc_nginx_block() -> String {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/CDN.md"))
        .expect("docs/CDN.md");
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

impl Nginx {
    pub fn start(origin: SocketAddr) -> Nginx {
        let nginx = if Path::new("/usr/sbin/nginx").exists() {
            "/usr/sbin/nginx"
        } else {
            "nginx"
        };
        let ok = Command::new(nginx)
            .arg("-v")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "nginx is required by the CDN tests: apt-get install -y nginx (.ci/run installs it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("nginx-cdn-")
            .tempdir()
            .unwrap();
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
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let conf = format!(
            "daemon off;\nworker_processes 1;\n{user}pid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             log_format cdn '$request_uri $status $upstream_cache_status \"$upstream_addr\"';\n\
             access_log {d}/access.log cdn;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             {block}\n}}\n",
            user = if root { "user root;\n" } else { "" },
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, &conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx");
        let mut n = Nginx { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!(
                    "nginx exited ({st}) with the config of docs/CDN.md:\n{conf}\n{}\n{}",
                    n.file("stderr.log"),
                    n.file("error.log")
                );
            }
            assert!(Instant::now() < deadline, "nginx did not listen on {addr}");
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

    pub fn get(&self, path: &str) -> super::Resp {
        super::http_get(self.addr, path, Duration::from_secs(15))
            .unwrap_or_else(|e| panic!("GET nginx {path}: {e}"))
    }

    /// Access-log lines (`uri status cache-status "upstream"`).
    pub fn log_lines(&self) -> Vec<String> {
        self.file("access.log")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "──── nginx error log ────\n{}\n──── access log ────\n{}",
                self.file("error.log"),
                self.file("access.log")
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
