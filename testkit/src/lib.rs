//! deltacast's shared test kit, used by tests/, benches/ and loadtest/: the `deltacast` binary on
//! free loopback ports ([`server`]), one str0m test peer ([`peer`]) and its WebRTC roles
//! ([`webrtc`]), one HTTP/1.1 client ([`http`]), process guards for ffmpeg ([`ffmpeg`]), nginx
//! ([`nginx`]) and headless Chromium ([`chromium`]), misbehaving TCP
//! peers ([`faults`]), an LL-HLS playlist parser ([`hls`]) and fixtures.
//!
//! Every wait is bounded; every child process is killed when its guard drops; when a test
//! panics, the logs of the processes it started are printed. Tests that need a tool fail (never
//! skip) when it is missing.

pub mod chromium;
pub mod faults;
pub mod ffmpeg;
pub mod hls;
pub mod http;
pub mod nginx;
pub mod peer;
pub mod process;
pub mod redis;
pub mod server;
pub mod webrtc;

pub use ffmpeg::*;
pub use hls::*;
pub use http::*;
pub use process::*;
pub use server::*;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Runs `$body(io)` as one test per SFU UDP driver: `$name::epoll` and `$name::io_uring` (the
/// body gets "epoll" or "uring", the config value of `[sfu] io`).
#[macro_export]
macro_rules! on_both_drivers {
    ($name:ident, $body:ident) => {
        mod $name {
            #[test]
            fn epoll() {
                super::$body("epoll");
            }
            #[test]
            fn io_uring() {
                super::$body("uring");
            }
        }
    };
}

/// The workspace's root directory (docs/, web/, assets/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the workspace")
        .to_path_buf()
}

/// The target profile directory this test or bench runs from (`target/debug`, ...): cargo puts
/// test executables in its `deps/`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The `deltacast` binary under test (`DELTACAST_BIN` overrides): cargo builds it next to the
/// integration tests of its package.
pub fn deltacast_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DELTACAST_BIN") {
        return p.into();
    }
    let bin = profile_dir().join("deltacast");
    assert!(
        bin.exists(),
        "{} is missing: run the tests through cargo (`cargo test`), which builds it",
        bin.display()
    );
    bin
}

/// The binary `bin` of the workspace member `package` in directory `member` (e.g. "loadtest"),
/// so a test of one package can drive another's tool (tests/whep_admission.rs runs the WHEP load
/// generator). A `cargo test --workspace` has just built it; it is used as it is when it is newer
/// than its sources (the member's `src/` and `Cargo.toml`, testkit's `src/`, `Cargo.lock`).
/// Otherwise (`cargo test --test NAME` builds only its own package) it is built first, once per
/// process, in the profile this test runs in.
pub fn workspace_bin(member: &str, package: &str, bin: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let dir = profile_dir();
    let path = dir.join(bin);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let root = workspace_root();
    let sources = [
        root.join(member).join("src"),
        root.join(member).join("Cargo.toml"),
        root.join("testkit/src"),
        root.join("Cargo.lock"),
    ];
    let fresh = modified(&path).is_some_and(|b| sources.iter().all(|s| newest(s) <= Some(b)));
    if !fresh && !built.iter().any(|b| b == bin) {
        let profile = match dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_string(),
            Some(p) => p.to_string(),
        };
        let target_dir = dir.parent().expect("target dir");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let (status, _out, err) = run_bounded(
            Command::new(cargo)
                .current_dir(&root)
                .args(["build", "--quiet", "-p", package, "--bin", bin, "--profile"])
                .arg(&profile)
                .arg("--target-dir")
                .arg(target_dir),
            std::time::Duration::from_secs(900),
        );
        assert!(
            status.success(),
            "cargo build -p {package} --bin {bin}: {err}"
        );
        built.push(bin.to_string());
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn modified(p: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time of a file, or of any file below a directory (bounded depth).
fn newest(p: &Path) -> Option<std::time::SystemTime> {
    fn walk(p: &Path, depth: u32, best: &mut Option<std::time::SystemTime>) {
        let t = modified(p);
        if t > *best {
            *best = t;
        }
        if depth == 0 {
            return;
        }
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                walk(&e.path(), depth - 1, best);
            }
        }
    }
    let mut best = None;
    walk(p, 8, &mut best);
    best
}

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
