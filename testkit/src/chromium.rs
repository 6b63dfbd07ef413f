//! Headless Chromium as a peer: one browser with a fresh profile, driven by tests/web/driver.mjs
//! (playwright-core) over a JSON-lines pipe ([`Browser`]), closed on drop, its driver log printed
//! when a test panics; and the check that node, Chromium and the web dependencies are there.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::workspace_root;

pub fn web_dir() -> PathBuf {
    workspace_root().join("web")
}

pub fn artifacts() -> PathBuf {
    let d = workspace_root().join("test-artifacts").join("watch");
    std::fs::create_dir_all(&d).expect("create test-artifacts/watch");
    d
}

pub fn chromium_path() -> PathBuf {
    std::env::var_os("DELTACAST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Everything the browser tests need, or a panic that says how to get it.
pub fn require_browser_tools() {
    let node_ok = crate::process::tool_runs("node", "--version");
    assert!(
        node_ok,
        "`node` is required by the watch-page tests but could not be run: \
         install Node.js (Debian: apt-get install nodejs npm)"
    );
    let chromium = chromium_path();
    assert!(
        chromium.exists(),
        "Chromium not found at {} (the watch-page tests drive it headless): \
         apt-get install -y chromium, or set DELTACAST_CHROMIUM",
        chromium.display()
    );
    for (file, what) in [
        ("node_modules/playwright-core/index.mjs", "playwright-core"),
        ("node_modules/hls.js/dist/hls.light.min.js", "hls.js"),
    ] {
        let p = web_dir().join(file);
        assert!(
            p.exists(),
            "{what} is not installed ({} missing): run `npm ci --prefix web` in {}",
            p.display(),
            workspace_root().display()
        );
    }
}

// ───────────────────────────── the browser ─────────────────────────────

/// One headless Chromium with a fresh profile, driven by tests/web/driver.mjs.
pub struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    next_id: u64,
    stderr_log: PathBuf,
    _profile: tempfile::TempDir,
    label: String,
}

impl Browser {
    pub fn launch(label: &str) -> Browser {
        Self::launch_in(label, None)
    }

    /// Chromium (and its driver) inside network namespace `netns` when given (`ip netns exec`), else on the host.
    pub fn launch_in(label: &str, netns: Option<&str>) -> Browser {
        require_browser_tools();
        let profile = tempfile::Builder::new()
            .prefix(&format!("chromium-{label}-"))
            .tempdir()
            .expect("tempdir");
        let user_data = profile.path().join("user-data");
        std::fs::create_dir_all(&user_data).unwrap();
        let stderr_log = profile.path().join("driver.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "node"]);
                c
            }
            None => Command::new("node"),
        };
        let mut child = cmd
            .arg(workspace_root().join("tests/web/driver.mjs"))
            .env("USER_DATA_DIR", &user_data)
            .env("CHROMIUM", chromium_path())
            .env(
                "PLAYWRIGHT_CORE",
                web_dir().join("node_modules/playwright-core/index.mjs"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node tests/web/driver.mjs: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Browser {
            child,
            stdin,
            lines,
            next_id: 1,
            stderr_log,
            _profile: profile,
            label: label.to_string(),
        };
        let ready = b.read_answer(0, Duration::from_secs(30));
        match ready {
            Ok(v) => eprintln!("[{label}] chromium {} ready", v["chromium"]),
            Err(e) => panic!("[{label}] headless Chromium did not start: {e}"),
        }
        b
    }

    pub fn driver_log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    pub fn read_answer(&mut self, id: u64, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).map_err(|_| {
                format!(
                    "no answer from the browser driver within {timeout:?}; driver log:\n{}",
                    self.driver_log()
                )
            })?;
            let v: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => {
                    eprintln!("[{}] driver: {line}", self.label);
                    continue;
                }
            };
            if v["id"] != json!(id) {
                continue;
            }
            return if v["ok"] == json!(true) {
                Ok(v["value"].clone())
            } else {
                Err(v["error"].as_str().unwrap_or("?").to_string())
            };
        }
    }

    pub fn cmd(&mut self, mut cmd: Value, timeout: Duration) -> Result<Value, String> {
        let id = self.next_id;
        self.next_id += 1;
        cmd["id"] = json!(id);
        writeln!(self.stdin, "{cmd}").map_err(|e| format!("driver stdin: {e}"))?;
        self.stdin.flush().ok();
        self.read_answer(id, timeout)
    }

    pub fn open(&mut self, url: &str) {
        let v = self
            .cmd(json!({"cmd": "open", "url": url}), Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("[{}] open {url}: {e}", self.label));
        assert_eq!(v["status"], 200, "[{}] {url}: {v}", self.label);
    }

    /// [`Browser::open`], with every playback document the tab loads saying `webrtc.whep` =
    /// `whep` (a document fetched just before its node filled up), the rest as the server said.
    pub fn open_pinned(&mut self, url: &str, whep: &str) {
        let v = self
            .cmd(
                json!({"cmd": "open", "url": url, "pin_whep": whep}),
                Duration::from_secs(30),
            )
            .unwrap_or_else(|e| panic!("[{}] open {url}: {e}", self.label));
        assert_eq!(v["status"], 200, "[{}] {url}: {v}", self.label);
    }

    pub fn eval(&mut self, expr: &str) -> Value {
        self.cmd(
            json!({"cmd": "eval", "expr": expr}),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| panic!("[{}] eval {expr}: {e}", self.label))
    }

    /// Wait until `expr` is truthy in the page; Err with the page's state when it is not.
    pub fn wait(&mut self, expr: &str, timeout: Duration) -> Result<Value, String> {
        self.cmd(
            json!({"cmd": "wait", "expr": expr, "timeout_ms": timeout.as_millis() as u64}),
            timeout + Duration::from_secs(10),
        )
        .map(|v| v["value"].clone())
    }

    /// Like [`Browser::wait`], panicking with the page's own account of what happened.
    pub fn expect(&mut self, expr: &str, timeout: Duration, what: &str) -> Value {
        match self.wait(expr, timeout) {
            Ok(v) => v,
            Err(e) => {
                let state = self.state();
                let console = self.console();
                panic!(
                    "[{}] {what}: not within {timeout:?} ({e})\npage state: {state:#}\nconsole:\n{}",
                    self.label,
                    console.join("\n")
                );
            }
        }
    }

    pub fn state(&mut self) -> Value {
        self.cmd(
            json!({"cmd": "eval", "expr": "JSON.parse(JSON.stringify(window.__deltacast || null))"}),
            Duration::from_secs(15),
        )
        .unwrap_or_else(|e| json!({ "error": e }))
    }

    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let path = artifacts().join(name);
        self.cmd(
            json!({"cmd": "screenshot", "path": path}),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("[{}] screenshot: {e}", self.label));
        eprintln!("[{}] screenshot {}", self.label, path.display());
        path
    }

    pub fn requests(&mut self, contains: &str) -> Vec<String> {
        let v = self
            .cmd(
                json!({"cmd": "requests", "contains": contains}),
                Duration::from_secs(15),
            )
            .unwrap_or_else(|e| panic!("[{}] requests: {e}", self.label));
        serde_json::from_value(v).unwrap_or_default()
    }

    pub fn console(&mut self) -> Vec<String> {
        self.cmd(json!({"cmd": "console"}), Duration::from_secs(15))
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// `video.currentTime` moves forward by at least `min` seconds over `over`.
    pub fn assert_playing(&mut self, over: Duration, min: f64, context: &str) -> (f64, f64) {
        let t0 = self
            .eval("document.getElementById('video').currentTime")
            .as_f64()
            .unwrap();
        std::thread::sleep(over);
        let t1 = self
            .eval("document.getElementById('video').currentTime")
            .as_f64()
            .unwrap();
        if t1 - t0 < min {
            let state = self.state();
            let console = self.console().join("\n");
            panic!(
                "[{}] {context}: currentTime went {t0:.2} → {t1:.2} in {over:?} (want +{min}s)\npage state: {state:#}\nconsole:\n{console}",
                self.label,
            );
        }
        (t0, t1)
    }

    /// Milliseconds since navigation start at which the page first logged `ev` (with `detail`).
    pub fn event_time(&mut self, ev: &str, detail: &str) -> Option<f64> {
        let expr = format!(
            "(() => {{ const e = window.__deltacast.events.find(e => e.ev === {ev:?} && \
             ({detail:?} === '' || JSON.stringify(e.detail).includes({detail:?}))); \
             return e ? e.t : null; }})()"
        );
        self.eval(&expr).as_f64()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] browser driver log ────\n{}\n────",
                self.label,
                self.driver_log()
            );
        }
        let _ = writeln!(self.stdin, "{}", json!({"id": 999_999, "cmd": "close"}));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
