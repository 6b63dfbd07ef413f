//! `deltacast-load run` joining WebRTC viewers the way the watch page does when the relay is
//! full: against a real two-node cluster (real `redis-server`, two `deltacast` processes, the
//! demo program published on node A whose cluster capacity is 1), the WHEP POSTs to A that A is
//! too full for follow its 307 to B, and the results count them per node; against a full single
//! node, `--retry-refused` retries the 503s after their Retry-After, a retry joins once a viewer
//! has left, and only the join that failed for good counts against `--max-failed-joins`.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::redis::Redis;
use testkit::webrtc::WhepClient;
use testkit::Server;

const A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 12);
const B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 13);

fn tool() -> Command {
    // This package's tests do not build the relay: build it (once) where Server looks for it.
    testkit::workspace_bin(".", "deltacast", "deltacast");
    Command::new(env!("CARGO_BIN_EXE_deltacast-load"))
}

fn results(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_cluster_entry_node_that_is_full_redirects_viewers_to_the_other_node_and_they_play() {
    let redis = Redis::start("load-redirect");
    let a_toml =
        redis.node_toml("a", A, "", "ttl_ms = 1500\ncapacity = 1\n") + "\n[demo]\nenabled = true\n";
    tool(); // build the relay before starting it
    let a = Server::start_on("load-redir-a", A, &a_toml);
    let b = Server::start_on(
        "load-redir-b",
        B,
        &redis.node_toml("b", B, "", "ttl_ms = 1500\n"),
    );
    a.wait_segments("demo", 1, Duration::from_secs(20));
    a.wait_cluster(
        "demo's origin A, B with room",
        Duration::from_secs(15),
        |v| {
            let origin = v["streams"].as_array().and_then(|s| {
                s.iter()
                    .find(|s| s["name"] == "demo")
                    .map(|s| s["origin"] == "a")
            });
            let b_room = v["nodes"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n["id"] == "b" && n["room"] == true));
            origin == Some(true) && b_room
        },
    );
    let out = a.dir.path().join("r.json");
    // 2 joins a second: the first viewer is on A (its one slot) before the next POST arrives.
    let (status, stdout, stderr) = testkit::run_bounded(
        tool()
            .args(["run", "--url", &format!("http://{}", a.http)])
            .args(["--stream", "demo", "--webrtc", "3", "--ramp", "2"])
            .args(["--duration", "6", "--label", "redirect", "--json"])
            .arg(&out),
        Duration::from_secs(60),
    );
    println!("{stdout}\n{stderr}");
    assert!(status.success(), "run failed: {status}");
    let r = results(&out);
    let w = &r["totals"]["webrtc"];
    let (an, bn) = (a.http.to_string(), b.http.to_string());
    assert_eq!(w["joined"], 3, "{w}");
    assert_eq!(w["failed"], 0, "{w}");
    assert_eq!(w["dropped"], 0, "{w}");
    assert_eq!(w["lost"], 0, "{w}");
    assert!(w["packets"].as_u64().unwrap() > 200, "{w}");
    assert!(w["redirected"].as_u64().unwrap() >= 2, "{w}");
    assert_eq!(w["nodes"][&bn], 2, "two viewers on B: {w}");
    assert_eq!(w["nodes"][&an], 1, "one viewer on A: {w}");
    // Each viewer's session URL is on the node that answered (the final URL), not the entry.
    for v in r["webrtc"]["viewers"].as_array().unwrap() {
        let node = v["node"].as_str().unwrap();
        let session = v["session"].as_str().unwrap();
        assert!(
            session.starts_with(&format!("http://{node}/")),
            "session {session} on {node}: {v}"
        );
        assert_eq!(
            v["redirects"].as_u64().unwrap() > 0,
            node == bn,
            "a viewer on B was redirected, one on A not: {v}"
        );
        assert!(v["kept_media"] == true, "{v}");
    }
    assert!(
        stdout.contains(&format!("webrtc nodes: {an} 1, {bn} 2; 2 joins redirected")),
        "summary: {stdout}"
    );
    assert!(a.metric("deltacast_cluster_redirects_total") >= 2.0);
}

#[test]
fn refused_joins_are_retried_after_retry_after_and_only_those_that_fail_for_good_count() {
    tool();
    let server = Server::start_with(
        "load-retry",
        "",
        "",
        "[sfu]\nmax_viewers = 1\n",
        &["--demo"],
    );
    server.wait_segments("demo", 1, Duration::from_secs(20));
    // The one slot is taken: every join of the run is refused (503 + Retry-After) at first.
    let mut occupant = WhepClient::connect(server.http, "demo")
        .unwrap_or_else(|r| panic!("occupant: {} {}", r.status, r.text()));
    assert!(occupant.run(Duration::from_secs(15), |s| s.frames.len() >= 5));
    let out = server.dir.path().join("r.json");
    let mut cmd = tool();
    cmd.args(["run", "--url", &format!("http://{}", server.http)])
        .args(["--stream", "demo", "--webrtc", "2", "--ramp", "10"])
        .args(["--duration", "16", "--retry-refused", "1"])
        .args(["--max-failed-joins", "1", "--label", "retry", "--json"])
        .arg(&out);
    const REFUSED: &str = "deltacast_sfu_joins_refused_total";
    let refused0 = server.metric(REFUSED);
    let run = std::thread::spawn(move || testkit::run_bounded(&mut cmd, Duration::from_secs(60)));
    // The occupant leaves once both joins were refused and wait for their retry (Retry-After
    // 10 s): one retry takes its slot.
    let t = std::time::Instant::now();
    while server.metric(REFUSED) < refused0 + 2.0 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the joins were not refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let path = testkit::hls::resolve("/", &occupant.location);
    let r = testkit::request(server.http, "DELETE", &path, &[], b"");
    assert!(r.status == 200 || r.status == 204, "DELETE: {}", r.status);
    let (status, stdout, stderr) = run.join().unwrap();
    println!("{stdout}\n{stderr}");
    // Three 503s over the run, one join failed for good: within --max-failed-joins 1.
    assert!(status.success(), "run failed: {status}");
    let r = results(&out);
    let w = &r["totals"]["webrtc"];
    assert_eq!(w["joined"], 1, "{w}");
    assert_eq!(w["failed"], 1, "{w}");
    assert_eq!(w["retried"], 2, "{w}");
    assert_eq!(w["lost"], 0, "{w}");
    assert!(w["packets"].as_u64().unwrap() > 50, "{w}");
    let d = &r["webrtc"];
    assert_eq!(d["joined_after_retry"], 1, "{d}");
    assert_eq!(d["viewers"][0]["retries"], 1, "{d}");
    let refused = d["refused"].as_array().unwrap();
    assert_eq!(refused.len(), 1, "{d}");
    assert_eq!(refused[0]["status"], 503, "{d}");
    assert_eq!(
        refused[0]["retries"], 1,
        "refused again after its one retry: {d}"
    );
    assert!(refused[0]["retry_after"].is_string(), "{d}");
    assert!(stdout.contains("2 retried after 503"), "summary: {stdout}");
}
