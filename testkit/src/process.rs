//! Process plumbing every guard shares: required tools, free loopback ports, bounded runs of a
//! command, waiting for a listener, and the log tail printed when a test fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// True when `tool arg` runs and exits 0 (`arg`: the tool's version flag).
pub fn tool_runs(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Panics with a clear message when `tool` cannot be run: the end-to-end tests need it.
pub fn require_tool(tool: &str) {
    if !tool_runs(tool, "-version") {
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

pub fn tail_of(path: &Path, max_lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

pub fn kill_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
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
