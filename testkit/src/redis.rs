//! A real `redis-server` (the cluster registry) on a free loopback port, without persistence
//! (`--save '' --appendonly no`): started, killed and restarted on the same port by the cluster
//! tests. One guard; killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::process::{free_port, kill_child, tail_of, tool_runs, wait_listening};

/// Panics with how to install it when `redis-server` cannot be run.
pub fn require_redis() {
    if !tool_runs("redis-server", "--version") {
        panic!(
            "redis-server is required by the cluster tests (Debian: apt-get install redis-server; \
             scripts/test installs it)"
        );
    }
}

/// A running `redis-server`.
pub struct Redis {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl Redis {
    pub fn start(label: &str) -> Redis {
        require_redis();
        let dir = tempfile::Builder::new()
            .prefix(&format!("redis-{label}-"))
            .tempdir()
            .expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = dir.path().join("redis.log");
        let mut r = Redis {
            child: None,
            addr,
            dir,
            log,
        };
        r.spawn();
        r
    }

    /// `redis://127.0.0.1:PORT` for `[cluster] redis`.
    /// The `[sfu]` and `[cluster]` config of a node `id` on `ip` in this Redis's cluster: one
    /// SFU worker on that address (ephemeral ports), fast heartbeats so that tests run quickly;
    /// `sfu_extra` / `cluster_extra` are more lines under each table.
    pub fn node_toml(
        &self,
        id: &str,
        ip: std::net::Ipv4Addr,
        sfu_extra: &str,
        cluster_extra: &str,
    ) -> String {
        format!(
            "[sfu]\nworkers = 1\nbind_ip = \"{ip}\"\nport_base = 0\nice_tcp_port_base = 0\n{sfu_extra}\n\n\
             [cluster]\nredis = \"{}\"\nnode_id = \"{id}\"\nheartbeat_ms = 200\n{cluster_extra}\n",
            self.url()
        )
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.addr.port().to_string()])
            .args(["--bind", &self.addr.ip().to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting redis-server");
        self.child = Some(child);
        wait_listening(self.addr.port(), Duration::from_secs(10), "redis-server");
    }

    /// Kill the server (SIGKILL): every key is lost, as in a crash without persistence.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_child(&mut c);
        }
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.log, n)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
