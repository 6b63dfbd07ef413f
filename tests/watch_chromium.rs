//! The watch page in headless Chromium (playwright-core), against the real binary and an ffmpeg
//! publisher: WebRTC first, LL-HLS when WebRTC cannot deliver, recovery after a publisher drop,
//! provider switch to a CDN (the nginx config of docs/CDN.md in front of the origin).
//!
//! Needs: `node`, Debian's `chromium` (or `DELTACAST_CHROMIUM`), `npm ci --prefix web`
//! (playwright-core and hls.js), ffmpeg, nginx for the CDN tests, and root with `ip` (iproute2)
//! and `nft` (nftables) for the first-frame test, which runs Chromium in a network namespace
//! behind a firewall that drops UDP silently. A missing tool fails the test with the command
//! that installs it; nothing is skipped.
//!
//! The browser is driven by `tests/web/driver.mjs` over a JSON-lines pipe; the scenario and every
//! assertion live here. Screenshots go to `test-artifacts/watch/`.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::chromium::{web_dir, Browser};
use testkit::nginx::Nginx;
use testkit::{
    ffprobe_count_frames, free_port, probe_stream, require_tool, Ffmpeg, Playlist, Server,
};

/// Browser tests share two cores with the server and ffmpeg: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ───────────────────────────── server helpers ─────────────────────────────

const ADMIN: &str = "test-admin-token";

fn web_toml() -> String {
    format!("[web]\ndir = {:?}\n", web_dir().display().to_string())
}

/// HLS only: the SFU is off, so the playback document offers no WHEP.
fn hls_only_toml() -> String {
    format!("{}\n[sfu]\nenabled = false\n", web_toml())
}

/// WebRTC on loopback (OS-chosen UDP port).
fn webrtc_toml() -> String {
    format!(
        "{}\n[sfu]\nport_base = 0\nbind_ip = \"127.0.0.1\"\n",
        web_toml()
    )
}

fn start_server(label: &str, rest: &str) -> Server {
    Server::start_with(label, &format!("admin_token = \"{ADMIN}\""), "", rest, &[])
}

/// Publish the standard test program as `key` and wait until HLS has a segment.
fn publish(server: &Server, label: &str, key: &str) -> Ffmpeg {
    require_tool("ffmpeg");
    let ff = Ffmpeg::publish(label, &server.rtmp_url(key));
    server.wait_state(key, "publishing", Duration::from_secs(15));
    server.wait_segments(key, 1, Duration::from_secs(20));
    ff
}

/// An HTTP/1.1 request with a body through the kit's client; returns (status, body).
fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let r = testkit::http_send(addr, method, path, headers, body, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"));
    (r.status, r.text())
}

fn put_provider(server: &Server, stream: &str, body: &Value) -> Value {
    let (status, text) = http_send(
        server.http,
        "PUT",
        &format!("/api/v1/streams/{stream}/provider"),
        &[
            ("Authorization", &format!("Bearer {ADMIN}")),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "PUT provider {body}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("PUT provider answer: {e}: {text}"))
}

/// Fails with a clear message when this build has no working WHEP endpoint.
fn require_whep(server: &Server, stream: &str) {
    let (status, body) = http_send(
        server.http,
        "POST",
        &format!("/whep/{stream}"),
        &[("Content-Type", "application/sdp")],
        b"v=0\r\n",
    );
    assert!(
        !matches!(status, 0 | 404 | 405 | 501),
        "WHEP is not available on this build (POST /whep/{stream} with a malformed offer → \
         {status} {body}); this test checks the watch page's WebRTC path and needs the SFU \
         (src/egress/sfu, src/http/whep.rs) wired into the router"
    );
}

// ───────────────────────────── network namespace and a silent firewall ─────────────────────────────

/// Runs `prog args…` (bounded), panicking with its stderr when it fails.
fn net_cmd(prog: &str, args: &[&str]) -> String {
    let (st, out, err) =
        testkit::run_bounded(Command::new(prog).args(args), Duration::from_secs(20));
    assert!(
        st.success(),
        "`{prog} {}` failed ({st}): {err}",
        args.join(" ")
    );
    out
}

/// The namespace tests need root, `ip` (iproute2) and `nft` (nftables): fail, never skip.
fn require_netns_tools() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the watch-page firewall test creates a network namespace (ip netns, veth, nftables) and \
         must run as root (scripts/test runs it in the test container as root)"
    );
    for (tool, arg, pkg) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let ok = testkit::tool_runs(tool, arg);
        assert!(
            ok,
            "`{tool}` is required by the watch-page firewall test: apt-get install -y {pkg}"
        );
    }
}

/// A network namespace joined to the host by a veth pair on a private /30
/// (10.213.a.b+1 on the host, 10.213.a.b+2 inside). Removed on drop, panicking or not; a
/// namespace left by a killed test run (its pid gone) is removed by the next run.
struct NetNs {
    name: String,
    host_if: String,
    host_ip: Ipv4Addr,
    ns_ip: Ipv4Addr,
}

const NETNS_PREFIX: &str = "dctest-";

impl NetNs {
    fn create() -> NetNs {
        require_netns_tools();
        Self::reap_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 60;
        let (a, b) = ((pid % 250) as u8, (n * 4) as u8);
        let host_ip = Ipv4Addr::new(10, 213, a, b + 1);
        let ns_ip = Ipv4Addr::new(10, 213, a, b + 2);
        let addrs = net_cmd("ip", &["-o", "-4", "addr", "show"]);
        assert!(
            !addrs.contains(&format!(" {host_ip}/")),
            "{host_ip} is already on an interface here; remove it (ip addr) and rerun"
        );
        let ns = NetNs {
            name: format!("{NETNS_PREFIX}{pid}-{n}"),
            host_if: format!("dc{pid}h{n}"),
            host_ip,
            ns_ip,
        };
        let ns_if = format!("dc{pid}n{n}");
        let (name, host_if) = (ns.name.as_str(), ns.host_if.as_str());
        // `ns` exists from here on: a failing step below still removes what was made.
        net_cmd("ip", &["netns", "add", name]);
        net_cmd(
            "ip",
            &[
                "link", "add", host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        net_cmd("ip", &["link", "set", &ns_if, "netns", name]);
        net_cmd(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", host_if],
        );
        net_cmd("ip", &["link", "set", host_if, "up"]);
        net_cmd(
            "ip",
            &[
                "-n",
                name,
                "addr",
                "add",
                &format!("{ns_ip}/30"),
                "dev",
                &ns_if,
            ],
        );
        net_cmd("ip", &["-n", name, "link", "set", &ns_if, "up"]);
        net_cmd("ip", &["-n", name, "link", "set", "lo", "up"]);
        eprintln!("netns {name}: host {host_ip} ({host_if}) ⇄ {ns_ip} ({ns_if})");
        ns
    }

    /// Namespaces of this test whose process is gone (a run killed before its guard ran).
    fn reap_stale() {
        let list = net_cmd("ip", &["netns", "list"]);
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(pid) = name
                .strip_prefix(NETNS_PREFIX)
                .and_then(|r| r.split('-').next())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                eprintln!("removing stale network namespace {name}");
                let _ = Command::new("ip").args(["netns", "del", name]).status();
            }
        }
    }

    /// The corporate firewall: an input chain inside the namespace that drops every packet except
    /// TCP from the relay's HTTP port. Sends still succeed (no ICMP, no reset); STUN answers,
    /// DTLS and media, and ICE-TCP's SYN-ACK never arrive. The final rule counts what it drops.
    fn drop_replies_except_http(&self, http_port: u16) {
        let rules = format!(
            "table inet deltacast_fw {{\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority filter; policy drop;\n\
             \x20   iifname \"lo\" accept\n\
             \x20   ip saddr {host} tcp sport {http_port} accept\n\
             \x20   counter drop\n\
             \x20 }}\n\
             }}\n",
            host = self.host_ip
        );
        let file = std::env::temp_dir().join(format!("{}.nft", self.name));
        std::fs::write(&file, &rules).unwrap();
        net_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "nft",
                "-f",
                &file.display().to_string(),
            ],
        );
        let _ = std::fs::remove_file(&file);
        eprintln!("netns {}: firewall on\n{rules}", self.name);
    }

    /// Packets the firewall's final rule dropped so far.
    fn dropped_packets(&self) -> u64 {
        let out = net_cmd(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "nft",
                "list",
                "chain",
                "inet",
                "deltacast_fw",
                "input",
            ],
        );
        out.split("counter packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes its end of the veth pair, and with it the host end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// The relay's HTTP listener on another address: the test kit starts the relay on loopback, which
/// a namespace cannot reach, so this forwards TCP from `listen_ip` to it (one thread per
/// direction per connection; the browser opens a handful). Stops accepting on drop.
struct TcpForward {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpForward {
    fn start(listen_ip: Ipv4Addr, to: SocketAddr) -> TcpForward {
        let l = TcpListener::bind((listen_ip, 0)).expect("bind the HTTP forwarder");
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(down) = conn else { continue };
                let Ok(up) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else {
                    continue;
                };
                let _ = down.set_nodelay(true);
                let _ = up.set_nodelay(true);
                for (mut from, mut into) in [
                    (down.try_clone().unwrap(), up.try_clone().unwrap()),
                    (up, down),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut into);
                        let _ = into.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        TcpForward {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ───────────────────────────── tests: HTTP surface ─────────────────────────────

#[test]
fn page_assets_and_playback_api() {
    let rest = format!(
        "{}\n[[streams]]\nname = \"hall\"\nkeys = [\"hall-key\"]\n",
        hls_only_toml()
    );
    let s = start_server("assets", &rest);

    let page = s.get("/watch/hall");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    let html = page.text();
    assert!(html.contains("watch.js") && html.contains("id=\"unmute\""));
    assert!(
        !html.contains("hall") && !html.contains("/hls/"),
        "the page names no stream or URL itself"
    );
    // The playback document is preloaded by a header; the markup stays the same for every stream.
    let link = page.header("link").unwrap_or("");
    assert!(
        link.contains("<../api/v1/streams/hall/playback>") && link.contains("rel=preload"),
        "Link: {link}"
    );
    assert_eq!(s.get("/watch/bad..%20name").status, 404);
    let js = s.get("/web/watch.js");
    assert_eq!(js.status, 200);
    assert!(js.header("content-type").unwrap().contains("javascript"));
    assert!(!js.text().contains("cloudfront"), "the page names no CDN");
    assert_eq!(s.get("/web/watch.css").status, 200);
    let hls = s.get("/web/hls.light.min.js");
    assert_eq!(hls.status, 200, "{}", hls.text());
    assert!(hls.body.len() > 100_000, "hls.js from node_modules");
    assert_eq!(s.get("/web/../Cargo.toml").status, 404);
    assert_eq!(s.get("/web/hls.js.map").status, 404);

    // The playback document.
    let r = s.get("/api/v1/streams/hall/playback");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["state"], "offline");
    assert_eq!(v["webrtc"], Value::Null, "SFU disabled: no WHEP offered");
    assert_eq!(
        v["hls"],
        format!("http://{}/hls/hall/index.m3u8", s.http),
        "{v}"
    );
    assert_eq!(v["webrtc_timeout_ms"], 2500);
    assert_eq!(s.get("/api/v1/streams/nope/playback").status, 404);

    // Ingest: admin only, the node's own endpoints whatever the provider.
    let auth = format!("Bearer {ADMIN}");
    let (st, _) = http_send(s.http, "GET", "/api/v1/streams/hall/ingest", &[], b"");
    assert_eq!(st, 401);
    let (st, body) = http_send(
        s.http,
        "GET",
        "/api/v1/streams/hall/ingest",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(st, 200, "{body}");
    let ingest: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ingest["rtmp"]["key"], "hall-key");
    assert_eq!(
        ingest["rtmp"]["url"],
        format!("rtmp://127.0.0.1:{}/live/hall-key", s.rtmp.port())
    );
    assert_eq!(
        ingest["whip"]["url"],
        format!("http://{}/whip/hall", s.http)
    );

    // Provider: PUT needs the token, validates, and changes the playback URLs only.
    let (st, _) = http_send(
        s.http,
        "PUT",
        "/api/v1/streams/hall/provider",
        &[],
        br#""origin""#,
    );
    assert_eq!(st, 401);
    for bad in [
        r#"{"kind":"cdn"}"#,
        r#"{"kind":"cdn","hls_base":"not a url"}"#,
        r#"{"kind":"cdn","hls_base":"https://x","extra":1}"#,
        r#""akamai""#,
        r#"{"kind":"external","ingest_url":"http://x/a/k","playback_url":"https://x/p.m3u8"}"#,
    ] {
        let (st, body) = http_send(
            s.http,
            "PUT",
            "/api/v1/streams/hall/provider",
            &[("Authorization", &auth)],
            bad.as_bytes(),
        );
        assert_eq!(st, 400, "{bad}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    let v = put_provider(
        &s,
        "hall",
        &json!({"kind": "cdn", "hls_base": "https://d111.cloudfront.net/"}),
    );
    assert_eq!(v["provider"]["kind"], "cdn");
    let v: Value = serde_json::from_slice(&s.get("/api/v1/streams/hall/playback").body).unwrap();
    assert_eq!(v["hls"], "https://d111.cloudfront.net/hls/hall/index.m3u8");
    let (_, body) = http_send(
        s.http,
        "GET",
        "/api/v1/streams/hall/ingest",
        &[("Authorization", &auth)],
        b"",
    );
    let ingest2: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ingest, ingest2, "ingest does not depend on the provider");

    // External: the program is pushed through the RTMP push engine; viewers get its URL.
    let v = put_provider(
        &s,
        "hall",
        &json!({"kind": "external", "ingest_url": "rtmp://127.0.0.1:9/app/secret-ivs-key",
                "playback_url": "https://ivs.example/hall.m3u8"}),
    );
    assert!(!v.to_string().contains("secret-ivs-key"), "key masked: {v}");
    let v: Value = serde_json::from_slice(&s.get("/api/v1/streams/hall/playback").body).unwrap();
    assert_eq!(v["hls"], "https://ivs.example/hall.m3u8");
    assert_eq!(v["webrtc"], Value::Null);
    let dests: Value =
        serde_json::from_slice(&s.get("/api/v1/streams/hall/destinations").body).unwrap();
    assert!(
        dests.to_string().contains("external-provider"),
        "push destination created: {dests}"
    );
    put_provider(&s, "hall", &json!("origin"));
    let dests: Value =
        serde_json::from_slice(&s.get("/api/v1/streams/hall/destinations").body).unwrap();
    assert!(
        !dests.to_string().contains("external-provider"),
        "push destination removed: {dests}"
    );
    drop(s);

    // Without `npm ci --prefix web`: a 503 that says what to run.
    let empty = tempfile::tempdir().unwrap();
    let s = start_server(
        "no-npm",
        &format!(
            "[web]\ndir = {:?}\n[sfu]\nenabled = false\n",
            empty.path().display().to_string()
        ),
    );
    let r = s.get("/web/hls.light.min.js");
    assert_eq!(r.status, 503);
    assert!(r.text().contains("npm ci --prefix web"), "{}", r.text());
}

/// Without `npm ci --prefix web`, `/web/hls.light.min.js` is a 503 that says what to do, and shows
/// neither the server's file paths nor its configuration (the log has those).
#[test]
fn missing_hls_js_answer_names_no_server_path() {
    let empty = tempfile::Builder::new()
        .prefix("no-npm-web-dir-")
        .tempdir()
        .unwrap();
    let dir = empty.path().display().to_string();
    let s = start_server(
        "no-npm-path",
        &format!("[web]\ndir = {dir:?}\n[sfu]\nenabled = false\n"),
    );
    let r = s.get("/web/hls.light.min.js");
    let body = r.text();
    eprintln!("503 body: {body}");
    assert_eq!(r.status, 503, "{body}");
    assert!(r.header("retry-after").is_some());
    assert!(
        body.contains("npm ci --prefix web"),
        "says what to do: {body}"
    );
    for leak in [
        dir.as_str(),
        "no-npm-web-dir-",
        "node_modules",
        "web.dir",
        "No such file",
        "os error",
    ] {
        assert!(!body.contains(leak), "the 503 body shows `{leak}`: {body}");
    }
    assert!(
        s.log_text().contains(&dir),
        "the log names the path the operator must fix"
    );
}

// ───────────────────────────── tests: LL-HLS ─────────────────────────────

#[test]
fn plays_over_ll_hls_when_webrtc_is_off() {
    let _g = serial();
    let s = start_server("hls-off", &hls_only_toml());
    let _ff = publish(&s, "hls-off", "show");
    let mut b = Browser::launch("hls-off");
    let t = Instant::now();
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "window.__deltacast && __deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(6),
        "playing over LL-HLS",
    );
    let took = t.elapsed();
    let live_at = b.event_time("state", "live").unwrap_or(f64::NAN);
    eprintln!(
        "LL-HLS playing {took:?} after open (page: {live_at:.0} ms after navigation)\n{}",
        timeline(&mut b)
    );
    assert!(took < Duration::from_secs(6), "{took:?}");
    b.assert_playing(Duration::from_millis(1500), 0.8, "LL-HLS");
    let st = b.state();
    assert_eq!(st["muted"], true, "starts muted: {st}");
    assert_eq!(
        b.eval("!document.getElementById('unmute').hidden"),
        true,
        "unmute control shown"
    );
    assert!(
        b.requests("/whep/").is_empty(),
        "no WHEP offered, none tried"
    );
    assert!(
        !b.requests("/web/hls.light.min.js").is_empty(),
        "hls.js from this server"
    );
    b.wait(
        "document.getElementById('debug').textContent.includes('path      hls')",
        Duration::from_secs(3),
    )
    .expect("debug overlay shows the path");
    let dbg = b.eval("document.getElementById('debug').textContent");
    eprintln!("debug overlay:\n{}", dbg.as_str().unwrap_or(""));
    assert!(dbg.as_str().unwrap().contains("latency"), "{dbg}");
    b.screenshot("hls-webrtc-off.png");
    // The unmute control works.
    b.eval("document.getElementById('unmute').click(), true");
    b.expect(
        "!document.getElementById('video').muted && document.getElementById('unmute').hidden",
        Duration::from_secs(3),
        "unmuted",
    );
}

#[test]
fn publisher_drop_and_return_recovers_by_itself() {
    let _g = serial();
    let s = start_server("drop", &hls_only_toml());
    let mut ff = publish(&s, "drop", "show");
    let mut b = Browser::launch("drop");
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.state === 'live'",
        Duration::from_secs(8),
        "live",
    );
    b.assert_playing(Duration::from_millis(1000), 0.5, "before the drop");

    ff.kill();
    let t = Instant::now();
    b.expect(
        "__deltacast.state === 'offline' && !document.getElementById('notice').hidden",
        Duration::from_secs(6),
        "offline shown after the publisher dropped",
    );
    eprintln!("offline shown {:?} after the drop", t.elapsed());
    b.screenshot("offline.png");
    let text = b.eval("document.getElementById('notice').textContent");
    assert!(text.as_str().unwrap().contains("offline"), "{text}");
    std::thread::sleep(Duration::from_secs(2));

    let _ff2 = Ffmpeg::publish("drop-2", &s.rtmp_url("show"));
    let t = Instant::now();
    b.expect(
        "__deltacast.state === 'live' && document.getElementById('notice').hidden",
        Duration::from_secs(20),
        "playing again after the publisher returned",
    );
    eprintln!(
        "playing again {:?} after the publisher restarted",
        t.elapsed()
    );
    b.assert_playing(Duration::from_millis(1500), 0.8, "after the return");
    b.screenshot("back-after-drop.png");
}

// ───────────────────────────── tests: CDN ─────────────────────────────

#[test]
fn nginx_cdn_config_from_docs_caches_and_collapses() {
    let _g = serial();
    let s = start_server("nginx", &hls_only_toml());
    let _ff = publish(&s, "show", "show");
    let n = Nginx::cdn(s.http);

    let r = n.get("/hls/show/index.m3u8");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("x-cache-status").is_some(), "X-Cache-Status added");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let pl = Playlist::parse(&r.text()).unwrap();
    let part = pl.all_parts().last().expect("a part").uri.clone();
    let part_path = testkit::resolve("/hls/show/index.m3u8", &part);
    let a = n.get(&part_path);
    let b2 = n.get(&part_path);
    let c = n.get(&format!("{part_path}?utm_source=x"));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b2.body);
    assert_eq!(
        b2.header("x-cache-status"),
        Some("HIT"),
        "second GET of a part"
    );
    assert_eq!(
        c.header("x-cache-status"),
        Some("HIT"),
        "other query parameters are not in the key"
    );
    // Errors are not cached.
    assert_eq!(n.get("/hls/nope/index.m3u8").status, 404);
    let e = n.get("/hls/nope/index.m3u8");
    assert_eq!(e.status, 404);
    assert_ne!(e.header("x-cache-status"), Some("HIT"), "404 is no-store");

    // Ten viewers block on the same future part at once: one origin request.
    let (msn, p) = Playlist::parse(&n.get("/hls/show/index.m3u8").text())
        .unwrap()
        .next_part();
    let q = format!("/hls/show/index.m3u8?_HLS_msn={msn}&_HLS_part={p}");
    let addr = n.addr;
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let q = q.clone();
            std::thread::spawn(move || {
                testkit::http_get(addr, &q, Duration::from_secs(20)).expect("blocking GET")
            })
        })
        .collect();
    let answers: Vec<testkit::Resp> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for a in &answers {
        assert_eq!(a.status, 200, "{}", a.text());
        let pl = Playlist::parse(&a.text()).unwrap();
        assert!(pl.has_part(msn, p), "answer holds the part it waited for");
        assert_eq!(
            a.body, answers[0].body,
            "every viewer got the same playlist"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines: Vec<String> = n
        .log_lines()
        .into_iter()
        .filter(|l| l.starts_with(&q))
        .collect();
    let to_origin = lines.iter().filter(|l| !l.ends_with("\"-\"")).count();
    eprintln!(
        "10 concurrent blocking requests → {to_origin} origin request(s):\n{}",
        lines.join("\n")
    );
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert_eq!(
        to_origin, 1,
        "request collapsing (proxy_cache_lock): {lines:?}"
    );
}

#[test]
fn provider_switch_to_cdn_moves_the_page_to_the_cdn() {
    let _g = serial();
    let s = start_server("cdn-switch", &hls_only_toml());
    let _ff = publish(&s, "cdn-switch", "show");
    let n = Nginx::cdn(s.http);
    let mut b = Browser::launch("cdn-switch");
    let origin_hls = format!("http://{}/hls/", s.http);
    let cdn_hls = format!("{}/hls/", n.base());
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(6),
        "playing from the origin",
    );
    assert!(b.requests(&cdn_hls).is_empty());
    assert!(!b.requests(&origin_hls).is_empty());

    put_provider(&s, "show", &json!({"kind": "cdn", "hls_base": n.base()}));
    let t = Instant::now();
    b.expect(
        &format!(
            "__deltacast.hlsUrl.startsWith({:?}) && __deltacast.state === 'live'",
            n.base()
        ),
        Duration::from_secs(8),
        "page moved to the CDN URL",
    );
    eprintln!("page on the CDN {:?} after the PUT", t.elapsed());
    b.assert_playing(Duration::from_millis(2000), 1.0, "through the CDN");
    let via_cdn = b.requests(&cdn_hls);
    assert!(
        via_cdn.iter().any(|u| u.contains("index.m3u8"))
            && via_cdn.iter().any(|u| u.contains(".m4s")),
        "playlist and parts through nginx: {via_cdn:?}"
    );
    let before = b.requests(&origin_hls).len();
    std::thread::sleep(Duration::from_secs(2));
    let after = b.requests(&origin_hls).len();
    assert_eq!(before, after, "no more HLS requests to the origin");
    assert!(
        n.log_lines().iter().any(|l| l.contains(".m4s")),
        "nginx served parts"
    );
    b.screenshot("hls-via-cdn.png");
}

// ───────────────────────────── tests: WebRTC ─────────────────────────────

#[test]
fn plays_over_webrtc_first_frame_within_1s() {
    let _g = serial();
    let s = start_server("webrtc", &webrtc_toml());
    let _ff = publish(&s, "webrtc", "show");
    require_whep(&s, "show");
    let mut b = Browser::launch("webrtc");
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.path === 'webrtc' && __deltacast.framesDecoded > 30",
        Duration::from_secs(8),
        "frames decoded over WebRTC",
    );
    let st = b.state();
    let first = st["webrtcFirstFrameMs"].as_f64().unwrap();
    let since_nav = st["firstFrameMs"].as_f64().unwrap_or(f64::NAN);
    eprintln!(
        "WebRTC first frame {first} ms after the WHEP attempt started (first frame of any path \
         {since_nav:.0} ms after navigation)"
    );
    assert!(first <= 1000.0, "first frame after {first} ms: {st:#}");
    let f0 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let f1 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
    assert!(f1 - f0 >= 15.0, "framesDecoded rising: {f0} → {f1}");
    // The RTMP program's AAC reaches the browser as Opus (bridged once per stream).
    let audio = b
        .eval("__deltacast.audioPacketsReceived")
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("WebRTC audio packets received: {audio}");
    assert!(audio >= 25.0, "audio packets received over WebRTC: {audio}");
    assert_eq!(b.eval("__deltacast.path"), "webrtc");
    // LL-HLS was prepared in parallel and stopped at the first WebRTC frame.
    let hls = b.requests("/hls/");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        hls,
        b.requests("/hls/"),
        "no HLS request while WebRTC plays"
    );
    b.screenshot("webrtc.png");
    // A single node names no other node to fail over to.
    let pb = s.get("/api/v1/streams/show/playback").json();
    assert_eq!(pb["webrtc"]["alternates"], json!([]), "{pb}");
}

#[test]
fn webrtc_session_deleted_mid_stream_switches_to_hls() {
    let _g = serial();
    let s = start_server("webrtc-kill", &webrtc_toml());
    let _ff = publish(&s, "webrtc-kill", "show");
    require_whep(&s, "show");
    let mut b = Browser::launch("webrtc-kill");
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.path === 'webrtc' && __deltacast.framesDecoded > 15",
        Duration::from_secs(8),
        "playing over WebRTC",
    );
    b.eval("window.__sameDocument = 42");
    let loc = b.eval("__deltacast.whepLocation");
    let loc = loc
        .as_str()
        .expect("the WHEP answer had a Location")
        .to_string();
    let path = loc
        .strip_prefix(&format!("http://{}", s.http))
        .unwrap_or_else(|| panic!("Location {loc} on this server"));
    let (st, body) = http_send(s.http, "DELETE", path, &[], b"");
    assert!(st == 200 || st == 204, "DELETE {path}: {st} {body}");
    let t = Instant::now();
    b.expect(
        "__deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(8),
        "switched to LL-HLS after the WebRTC session was deleted",
    );
    eprintln!(
        "on HLS {:?} after the session was deleted (reason: {})",
        t.elapsed(),
        b.eval("__deltacast.fallbackReason")
    );
    b.assert_playing(Duration::from_millis(1500), 0.8, "HLS after WebRTC died");
    assert_eq!(b.eval("window.__sameDocument"), 42, "no reload");
    assert!(
        b.eval("sessionStorage.getItem('deltacast.webrtc-failed')")
            .is_string(),
        "remembered for the session"
    );
    b.screenshot("webrtc-killed-now-hls.png");
}

/// A relay with no WebRTC slot left answers the page's WHEP POST 503: the page plays LL-HLS, and
/// does not remember WebRTC as broken (a full server says nothing about the viewer's network), so
/// once a slot is free the next load of the page plays over WebRTC again.
#[test]
fn a_full_relay_sends_the_page_to_ll_hls_without_remembering_it() {
    let _g = serial();
    let s = start_server("full", &format!("{}max_viewers = 1\n", webrtc_toml()));
    let _ff = publish(&s, "full", "show");
    require_whep(&s, "show");
    let mut holder = testkit::webrtc::WhepClient::connect(s.http, "show")
        .unwrap_or_else(|r| panic!("the first viewer: {} {}", r.status, r.text()));
    assert!(
        holder.run(Duration::from_secs(20), |x| x.frames.len() >= 5),
        "the slot holder plays"
    );
    let mut b = Browser::launch("full");
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(8),
        "LL-HLS while the relay is full",
    );
    let reason = b.eval("__deltacast.fallbackReason");
    assert!(
        reason.as_str().is_some_and(|r| r.contains("503")),
        "refused with 503: {reason}"
    );
    assert!(
        b.eval("sessionStorage.getItem('deltacast.webrtc-failed')")
            .is_null(),
        "a 503 is not remembered as a WebRTC failure"
    );
    b.assert_playing(Duration::from_millis(1500), 0.8, "LL-HLS while full");

    // The slot frees; the same tab's next load tries WebRTC and gets it.
    let (st, body) = http_send(s.http, "DELETE", &holder.peer.location, &[], b"");
    assert!(st == 200 || st == 204, "DELETE the holder: {st} {body}");
    drop(holder);
    b.eval("location.reload(), true");
    std::thread::sleep(Duration::from_millis(300));
    b.expect(
        "window.__deltacast && __deltacast.path === 'webrtc' && __deltacast.state === 'live'",
        Duration::from_secs(10),
        "WebRTC on the next load once a slot is free",
    );
    let f0 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let f1 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
    assert!(
        f1 - f0 >= 15.0,
        "WebRTC frames rising after the reload: {f0} → {f1}"
    );
}

#[test]
fn falls_back_to_hls_when_webrtc_media_cannot_flow() {
    let _g = serial();
    // The SFU answers WHEP but advertises 127.0.0.2, where nothing listens: ICE can never
    // succeed, as when UDP is dropped between viewer and server.
    let rest = format!(
        "{}\n[sfu]\nport_base = 0\nbind_ip = \"127.0.0.1\"\nadvertise = [\"127.0.0.2\"]\n",
        web_toml()
    );
    let s = start_server("udp-dead", &rest);
    let _ff = publish(&s, "udp-dead", "show");
    require_whep(&s, "show");
    let mut b = Browser::launch("udp-dead");
    let t = Instant::now();
    b.open(&format!("http://{}/watch/show?debug=1", s.http));
    b.expect(
        "__deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(6),
        "playing over LL-HLS within 6 s although WebRTC cannot connect",
    );
    eprintln!(
        "LL-HLS playing {:?} after open; fallback reason: {}",
        t.elapsed(),
        b.eval("__deltacast.fallbackReason")
    );
    assert!(
        b.requests("/whep/").iter().any(|r| r.starts_with("POST")),
        "WHEP was tried first"
    );
    b.assert_playing(Duration::from_millis(1500), 0.8, "HLS after the fallback");
    b.screenshot("hls-after-webrtc-fallback.png");
    // The same tab remembers: after a reload it goes to HLS at once.
    b.eval("location.reload(), true");
    std::thread::sleep(Duration::from_millis(300));
    b.expect(
        "window.__deltacast && __deltacast.path === 'hls' && __deltacast.state === 'live'",
        Duration::from_secs(6),
        "HLS after reload",
    );
    let tried = b.eval("__deltacast.events.filter(e => e.ev === 'webrtc-start').length");
    assert_eq!(tried, 0, "WebRTC not tried again in this session");
}

/// Chromium publishes over WHIP with three simulcast encodings (H.264, fake camera 960x540 →
/// 960x540 / 480x270 / 240x135): the relay ranks the rids, LL-HLS decodes at the top layer's size,
/// and a second Chromium plays the program on the watch page over WebRTC.
#[test]
fn chromium_publishes_simulcast_over_whip() {
    let _g = serial();
    let rest = format!(
        "{}\n[[streams]]\nname = \"live\"\nkeys = [\"livekey\"]\n",
        webrtc_toml()
    );
    let s = start_server("whip-chromium", &rest);
    let mut publisher = Browser::launch("whip-publisher");
    // Any page of the relay's origin: a secure context (loopback) for getUserMedia and fetch.
    publisher.open(&format!("http://{}/healthz", s.http));
    let started = publisher.eval(WHIP_PUBLISH_JS);
    assert_eq!(
        started,
        "ok",
        "WHIP publish from Chromium: {started}\n{}",
        s.log_tail(30)
    );
    publisher.expect(
        "window.__pc && window.__pc.connectionState === 'connected'",
        Duration::from_secs(10),
        "Chromium's WHIP PeerConnection connected",
    );
    // Chromium's own bandwidth estimate enables the encodings one by one as our TWCC feedback
    // arrives (and libwebrtc drops layers its resolution table does not allow): every encoding
    // Chromium is producing must reach the relay as a layer, and there must be at least two.
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = s.api_stream("live").expect("stream in API");
        let encoding = publisher
            .eval(WHIP_STATS_JS)
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["frames"].as_u64().unwrap_or(0) > 0)
            .count() as u64;
        if encoding >= 2 && st["video_layers"].as_u64() == Some(encoding) {
            break st;
        }
        if Instant::now() > deadline {
            let enc = publisher.eval(WHIP_STATS_JS);
            panic!(
                "the relay did not see Chromium's layers: {st}\nencodings: {enc}\n{}",
                s.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let enc = publisher.eval(WHIP_STATS_JS);
    eprintln!(
        "Chromium's simulcast encodings: {enc}\nAPI: {}",
        st["tracks"]
    );
    let top = enc
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["w"].as_u64())
        .max()
        .unwrap_or(0);
    assert!(top >= 320, "top encoding width {top}: {enc}");

    // LL-HLS carries the best layer.
    let pl = s.wait_segments("live", 2, Duration::from_secs(30));
    let seg = pl.segments.last().unwrap().clone();
    let probe = s.probe_segment("live", &pl, &seg);
    eprintln!("LL-HLS of the Chromium program: {probe}");
    let v = probe_stream(&probe, "video").expect("video in the HLS segment");
    assert_eq!(
        v["width"].as_u64(),
        Some(top),
        "HLS is the widest layer: {probe}"
    );
    assert!(
        probe_stream(&probe, "audio").is_some(),
        "Chromium's Opus reaches LL-HLS: {probe}"
    );

    // An RTMP destination gets the best layer with a keyframe at least every ~2 s (Chromium
    // sends keyframes only when asked; the relay asks on `whip_keyframe_interval_ms`).
    let rport = free_port();
    let flv = s.dir.path().join("chromium-to-rtmp.flv");
    let mut rx = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-listen", "1", "-i"])
        .arg(format!("rtmp://127.0.0.1:{rport}/app/key"))
        .args(["-t", "7", "-c", "copy", "-y"])
        .arg(&flv)
        .stdin(Stdio::null())
        .spawn()
        .expect("ffmpeg -listen");
    std::thread::sleep(Duration::from_millis(500));
    let dest = format!(r#"{{"id":"rec","url":"rtmp://127.0.0.1:{rport}/app/key"}}"#);
    let (status, text) = http_send(
        s.http,
        "POST",
        "/api/v1/streams/live/destinations",
        &[
            ("Authorization", &format!("Bearer {ADMIN}")),
            ("Content-Type", "application/json"),
        ],
        dest.as_bytes(),
    );
    assert_eq!(status, 201, "add destination: {text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while rx.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = rx.kill();
            panic!("the RTMP destination did not get 7 s\n{}", s.log_tail(30));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let probe = ffprobe_count_frames(&flv);
    let w = probe_stream(&probe, "video").and_then(|x| x["width"].as_u64());
    assert_eq!(w, Some(top), "RTMP carries the widest layer: {probe}");
    let keys = testkit::run_bounded(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v", "-show_entries"])
            .args(["packet=pts_time,flags", "-of", "csv=p=0"])
            .arg(&flv),
        Duration::from_secs(30),
    )
    .1;
    let key_times: Vec<f64> = keys
        .lines()
        .filter(|l| l.contains('K'))
        .filter_map(|l| l.split(',').next()?.parse().ok())
        .collect();
    let max_gap = key_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0f64, f64::max);
    eprintln!(
        "RTMP destination: {} keyframes at {key_times:?}, max gap {max_gap:.2} s",
        key_times.len()
    );
    assert!(key_times.len() >= 3, "keyframes in 7 s: {key_times:?}");
    assert!(
        max_gap <= 3.0,
        "keyframe gap {max_gap:.2} s (want ~2 s): {key_times:?}"
    );

    // Another Chromium watches over WebRTC.
    let mut viewer = Browser::launch("whip-viewer");
    viewer.open(&format!("http://{}/watch/live?debug=1", s.http));
    viewer.expect(
        "__deltacast.path === 'webrtc' && __deltacast.framesDecoded > 30",
        Duration::from_secs(15),
        "the WHIP program decoded over WebRTC",
    );
    let st = s.api_stream("live").unwrap();
    eprintln!(
        "viewer state: {:#}; API viewers {}",
        viewer.state(),
        st["viewers"]
    );
    viewer.screenshot("whip-simulcast-viewer.png");
}

/// Publish the fake camera and microphone to /whip/live with three H.264 simulcast encodings.
const WHIP_PUBLISH_JS: &str = r#"(async () => {
  const media = await navigator.mediaDevices.getUserMedia({
    video: { width: 960, height: 540, frameRate: 30 }, audio: true });
  const pc = new RTCPeerConnection();
  const video = pc.addTransceiver(media.getVideoTracks()[0], {
    direction: 'sendonly',
    sendEncodings: [
      { rid: 'h', maxBitrate: 1200000 },
      { rid: 'm', scaleResolutionDownBy: 2, maxBitrate: 400000 },
      { rid: 'l', scaleResolutionDownBy: 4, maxBitrate: 120000 },
    ],
  });
  const h264 = RTCRtpSender.getCapabilities('video').codecs.filter((c) =>
    c.mimeType === 'video/H264' && (c.sdpFmtpLine || '').includes('packetization-mode=1'));
  if (!h264.length) return 'no H.264 encoder in this Chromium';
  video.setCodecPreferences(h264);
  pc.addTransceiver(media.getAudioTracks()[0], { direction: 'sendonly' });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === 'complete') return done();
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') done();
    });
    setTimeout(done, 2000);
  });
  const r = await fetch('/whip/live', {
    method: 'POST',
    headers: { 'Content-Type': 'application/sdp', Authorization: 'Bearer livekey' },
    body: pc.localDescription.sdp,
  });
  const body = await r.text();
  if (r.status !== 201) return `WHIP ${r.status}: ${body}`;
  await pc.setRemoteDescription({ type: 'answer', sdp: body });
  window.__pc = pc;
  return 'ok';
})()"#;

/// Chromium's outbound video encodings: rid, size, frames encoded.
const WHIP_STATS_JS: &str = r#"(async () => {
  const out = [];
  (await window.__pc.getStats()).forEach((r) => {
    if (r.type === 'outbound-rtp' && r.kind === 'video') {
      out.push({ rid: r.rid, w: r.frameWidth, h: r.frameHeight, frames: r.framesEncoded,
        limit: r.qualityLimitationReason, active: r.active });
    }
  });
  return out;
})()"#;

// ───────────────────────────── tests: first frame by path ─────────────────────────────

/// One page load, timed by the page's own clock (ms since navigation start).
#[derive(Debug)]
struct StartFigures {
    first_ms: f64,
    first_path: String,
    first_via: String,
    decided_ms: f64,
    reason: String,
}

/// Opens `url` and waits until the page has shown a frame and decided its path (`want`).
fn open_and_time(b: &mut Browser, url: &str, want: &str) -> StartFigures {
    b.open(url);
    b.expect(
        &format!(
            "__deltacast.firstFrame && __deltacast.decision && __deltacast.path === {want:?} \
             && __deltacast.decision.path === {want:?}"
        ),
        Duration::from_secs(10),
        &format!("a first frame, and the path decided for {want}"),
    );
    let st = b.state();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    StartFigures {
        first_ms: st["firstFrame"]["ms"].as_f64().unwrap(),
        first_path: s(&st["firstFrame"]["path"]),
        first_via: s(&st["firstFrame"]["via"]),
        decided_ms: st["decision"]["ms"].as_f64().unwrap(),
        reason: s(&st["decision"]["reason"]),
    }
}

/// The page's event log, one `t ev detail` line each (t: ms since navigation).
fn timeline(b: &mut Browser) -> String {
    b.eval(
        "__deltacast.events.map(e => `${String(e.t).padStart(6)} ${e.ev} ${e.detail === undefined ? '' : JSON.stringify(e.detail)}`).join('\\n')",
    )
    .as_str()
    .unwrap_or("")
    .to_string()
}

/// A single page load may be slowed by a busy machine (Chromium alone has taken 1.3 s from
/// navigation to running the page's script on this 2-core box under load); the median is held to
/// the 1.0 s target, a single run only to a bound that still catches a hang.
const SINGLE_RUN_MAX_MS: f64 = 5000.0;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The issue-13 scenario: Chromium in a network namespace, the relay on the host end of a veth
/// pair, advertising that address in its ICE candidates. First with an open network (WebRTC must
/// be the path that stays, and LL-HLS traffic must stop), then behind a firewall that silently
/// drops every reply except TCP from the relay's HTTP port (LL-HLS, decided by the early ICE cut).
/// Both must show a first frame within 1.0 s of navigation, with no user action, on the default
/// LL-HLS part target (200 ms). Each case runs `DELTACAST_WATCH_RUNS` times (default 5), each with
/// a fresh browser: the median must be ≤ 1.0 s and every run ≤ 5 s (this machine is shared;
/// the page before issue 13 needed 3.1 s behind the firewall). The medians are printed
/// (docs/BENCHMARKS.md).
#[test]
fn first_frame_within_1s_on_every_path() {
    let _g = serial();
    let ns = NetNs::create();
    let rest = format!(
        "{}\n[sfu]\nport_base = 0\nbind_ip = \"{ip}\"\nadvertise = [\"{ip}\"]\n",
        web_toml(),
        ip = ns.host_ip
    );
    let s = start_server("netns", &rest);
    let _ff = publish(&s, "netns", "show");
    require_whep(&s, "show");
    let fwd = TcpForward::start(ns.host_ip, s.http);
    let url = format!("http://{}/watch/show?debug=1", fwd.addr);
    let runs: usize = std::env::var("DELTACAST_WATCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .clamp(1, 21);
    eprintln!("page {url} from {} (Chromium in {})", ns.ns_ip, ns.name);

    // Open network: whichever path shows first, WebRTC stays and LL-HLS stops.
    let mut open = Vec::new();
    for run in 0..runs {
        let mut b = Browser::launch_in(&format!("open-{run}"), Some(&ns.name));
        let f = open_and_time(&mut b, &url, "webrtc");
        eprintln!("open network, run {run}: {f:?}\n{}", timeline(&mut b));
        let hls_then = b.requests("/hls/");
        let hls_bytes = b.eval("__deltacast.hlsBytes");
        assert!(
            f.first_ms <= SINGLE_RUN_MAX_MS,
            "open network: first frame {} ms after navigation: {f:?}\n{:#}",
            f.first_ms,
            b.state()
        );
        let f0 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let f1 = b.eval("__deltacast.framesDecoded").as_f64().unwrap();
        assert!(f1 - f0 >= 30.0, "WebRTC frames rising: {f0} → {f1}");
        assert_eq!(b.eval("__deltacast.path"), "webrtc", "still on WebRTC");
        let hls_now = b.requests("/hls/");
        eprintln!(
            "  LL-HLS before WebRTC won: {} requests, {hls_bytes} bytes (hls.js stats); \
             2 s after: {} requests",
            hls_then.len(),
            hls_now.len()
        );
        assert_eq!(
            hls_then, hls_now,
            "no HLS request once WebRTC plays (before: {hls_then:#?})"
        );
        if run == 0 {
            // One audible element: the sound follows the picture to #rtc; LL-HLS is detached.
            b.eval("document.getElementById('unmute').click(), true");
            b.expect(
                "!__deltacast.muted",
                Duration::from_secs(3),
                "unmuted by the button",
            );
            std::thread::sleep(Duration::from_millis(300));
            let audible = b.eval(
                "[...document.querySelectorAll('video')].filter(v => !v.muted && !v.paused).map(v => v.id)",
            );
            assert_eq!(audible, json!(["rtc"]), "exactly one audible player");
            assert_eq!(
                b.eval("document.getElementById('video').networkState"),
                0,
                "LL-HLS player detached (NETWORK_EMPTY)"
            );
            b.screenshot("netns-open-webrtc.png");
        }
        open.push(f);
    }

    // The corporate firewall: UDP (and ICE-TCP) answers are dropped without a trace.
    ns.drop_replies_except_http(fwd.addr.port());
    let mut walled = Vec::new();
    for run in 0..runs {
        let mut b = Browser::launch_in(&format!("firewall-{run}"), Some(&ns.name));
        let f = open_and_time(&mut b, &url, "hls");
        eprintln!("firewall, run {run}: {f:?}\n{}", timeline(&mut b));
        assert!(
            f.first_ms <= SINGLE_RUN_MAX_MS && f.first_path == "hls",
            "firewall: first frame {} ms after navigation over {}: {f:?}\n{:#}",
            f.first_ms,
            f.first_path,
            b.state()
        );
        assert!(
            b.requests("/whep/").iter().any(|r| r.starts_with("POST")),
            "WebRTC was tried"
        );
        assert!(
            f.reason.starts_with("no ICE candidate pair answered"),
            "decided by the early ICE cut, not a timeout: {f:?}"
        );
        b.assert_playing(
            Duration::from_millis(1500),
            0.8,
            "LL-HLS behind the firewall",
        );
        if run == 0 {
            let dbg = b.eval("document.getElementById('debug').textContent");
            eprintln!("debug overlay:\n{}", dbg.as_str().unwrap_or(""));
            let dbg = dbg.as_str().unwrap_or("");
            assert!(
                dbg.contains("first     ") && dbg.contains("decided   hls at"),
                "overlay shows both timings: {dbg}"
            );
            b.screenshot("netns-firewall-hls.png");
        }
        walled.push(f);
    }
    let dropped = ns.dropped_packets();
    assert!(
        dropped > 0,
        "the firewall dropped nothing: the test proved nothing"
    );

    let med = |v: &[StartFigures], f: fn(&StartFigures) -> f64| median(v.iter().map(f).collect());
    let (open_first, walled_first) = (med(&open, |f| f.first_ms), med(&walled, |f| f.first_ms));
    eprintln!(
        "first frame by path, {runs} run(s), median ms since navigation:\n\
         \x20 open network: first frame {:.0} ({} first), WebRTC decided {:.0}\n\
         \x20 UDP silently dropped: first frame {:.0} (hls), LL-HLS decided {:.0} ({})\n\
         \x20 firewall dropped {dropped} packets",
        open_first,
        open.iter()
            .map(|f| format!("{}/{}", f.first_path, f.first_via))
            .collect::<Vec<_>>()
            .join(" "),
        med(&open, |f| f.decided_ms),
        walled_first,
        med(&walled, |f| f.decided_ms),
        walled[0].reason,
    );
    assert!(
        open_first <= 1000.0,
        "open network: median first frame {open_first} ms after navigation (want ≤ 1000)"
    );
    assert!(
        walled_first <= 1000.0,
        "UDP silently dropped: median first frame {walled_first} ms after navigation (want ≤ 1000)"
    );
}
