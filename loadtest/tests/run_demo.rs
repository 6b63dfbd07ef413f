//! `deltacast-load run` end to end: a small mixed load (5 WebRTC fast-path viewers + 20 LL-HLS
//! viewers, about 8 s) against the real `deltacast serve --demo`, then `plot` of its results.

use std::process::Command;
use std::time::Duration;

use testkit::Server;

#[test]
fn mixed_load_against_the_demo_joins_plays_without_loss_and_plots() {
    // This package's tests do not build the relay: build it (once) where Server looks for it.
    testkit::workspace_bin(".", "deltacast", "deltacast");
    // 500 ms parts: the tool's plumbing is under test here, on a debug relay on a shared machine,
    // and a part target this long keeps its late/stall criteria (one and three part targets)
    // about the tool rather than the machine's load. The criteria themselves have unit tests.
    let server = Server::start_with(
        "load-demo",
        "",
        "",
        "[hls]\npart_target_ms = 500\n",
        &["--demo"],
    );
    server.wait_segments("demo", 1, Duration::from_secs(20));
    let out = server.dir.path().join("r.json");
    let tool = env!("CARGO_BIN_EXE_deltacast-load");
    let (status, stdout, stderr) = testkit::run_bounded(
        Command::new(tool)
            .args([
                "run",
                "--url",
                &format!("http://{}", server.http),
                "--stream",
                "demo",
            ])
            .args([
                "--webrtc",
                "5",
                "--hls",
                "20",
                "--ramp",
                "20",
                "--duration",
                "7",
            ])
            .args([
                "--server-pid",
                &server.pid().to_string(),
                "--label",
                "e2e",
                "--json",
            ])
            .arg(&out),
        Duration::from_secs(60),
    );
    println!("{stdout}\n{stderr}");
    assert!(status.success(), "run failed its pass criteria: {status}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let t = &r["totals"];
    assert_eq!(t["webrtc"]["joined"], 5, "{t}");
    assert_eq!(t["webrtc"]["dropped"], 0, "{t}");
    assert!(t["webrtc"]["packets"].as_u64().unwrap() > 500, "{t}");
    assert_eq!(t["webrtc"]["lost"], 0, "{t}");
    assert_eq!(t["hls"]["joined"], 20, "{t}");
    // 500 ms parts for ~7 s: ~14 a viewer; at least about half of that each.
    assert!(t["hls"]["parts"].as_u64().unwrap() > 20 * 6, "{t}");
    assert!(t["hls"]["hinted_parts"].as_u64().unwrap() > 20 * 4, "{t}");
    assert_eq!(t["hls"]["stalls"], 0, "{t}");
    assert_eq!(t["hls"]["errors"], 0, "{t}");
    assert_eq!(r["verdict"]["passed"], true);
    assert_eq!(r["first_frame_ms"].as_array().unwrap().len(), 5);
    assert_eq!(r["first_part_ms"].as_array().unwrap().len(), 20);
    let series = r["series"].as_array().unwrap();
    assert!(series.len() >= 7, "{}", series.len());
    let last = series.last().unwrap();
    assert_eq!(last["webrtc_joined"], 5);
    assert!(last["server_cpu_pct"].as_f64().unwrap() > 0.0);
    assert!(last["server_rss_kib"].as_u64().unwrap() > 1000);

    let dir = server.dir.path().join("plots");
    let (status, stdout, stderr) = testkit::run_bounded(
        Command::new(tool)
            .arg("plot")
            .arg(&out)
            .arg("--out")
            .arg(&dir),
        Duration::from_secs(30),
    );
    assert!(status.success(), "plot: {stdout}\n{stderr}");
    for f in ["joined", "loss", "late", "cpu", "rss", "first_frame_cdf"] {
        let p = dir.join(format!("{f}.svg"));
        let svg = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "{f}.svg has no line"
        );
    }

    // Two machines' files merge into one with the counts summed.
    let merged = server.dir.path().join("m.json");
    let (status, _, stderr) = testkit::run_bounded(
        Command::new(tool)
            .arg("merge")
            .arg(&out)
            .arg(&out)
            .arg("-o")
            .arg(&merged),
        Duration::from_secs(30),
    );
    assert!(status.success(), "merge: {stderr}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&merged).unwrap()).unwrap();
    assert_eq!(m["totals"]["hls"]["joined"], 40);
}
