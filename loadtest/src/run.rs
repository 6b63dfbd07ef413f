//! `run`: start the viewer kinds, print one progress line a second, sample the relay's CPU and
//! RSS, stop at the duration (or a hard cap), then build the results file and the verdict.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::hls;
use crate::live::{Live, Snap};
use crate::procstat;
use crate::report::{self, pct, Criteria, Results, Second, Totals};
use crate::url::{parse_url, url_path};
use crate::webrtc::{self, unix_ns, Mode};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct RunArgs {
    /// Server base URL (WHEP and, unless --hls-url, LL-HLS), e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Base URL for LL-HLS viewers when they go through a CDN/cache (e.g. nginx from docs/CDN.md).
    #[arg(long)]
    pub hls_url: Option<String>,
    /// Stream name: WHEP /whep/STREAM, playlist /hls/STREAM/index.m3u8.
    #[arg(long, default_value = "demo")]
    pub stream: String,
    /// WebRTC (WHEP) viewers.
    #[arg(long, default_value_t = 0)]
    pub webrtc: usize,
    /// LL-HLS viewers.
    #[arg(long, default_value_t = 0)]
    pub hls: usize,
    /// Joins per second, for each kind (both kinds ramp together).
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,
    /// Joins per second for LL-HLS viewers (default: --ramp).
    #[arg(long)]
    pub hls_ramp: Option<f64>,
    /// Seconds to hold every viewer after the last join (the run is ramp + duration).
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Hard cap on viewers of all kinds together.
    #[arg(long, default_value_t = 20_000)]
    pub max_viewers: usize,
    /// Hard cap on the whole run's wall time, ramp included (s).
    #[arg(long, default_value_t = 3_600)]
    pub max_seconds: u64,
    /// fast: count SRTP packets from the cleartext RTP header (no decrypt, no NACK; thousands of
    /// viewers a core); full: decrypt with str0m (RTCP and NACK as a real client).
    #[arg(long, value_enum, default_value = "fast")]
    pub webrtc_mode: Mode,
    /// WebRTC polling threads.
    #[arg(long, default_value_t = 1)]
    pub webrtc_threads: usize,
    /// How long datagrams gather between two reads of the sockets (ms; timestamps are the
    /// kernel's, so this costs no accuracy).
    #[arg(long, default_value_t = 10)]
    pub webrtc_batch_ms: u64,
    /// LL-HLS client threads (tokio workers).
    #[arg(long, default_value_t = 1)]
    pub hls_threads: usize,
    /// Source addresses FIRST-LAST (IPv4) used round-robin by viewers, as the relay bounds
    /// pending handshakes and connections per address. Default for a loopback target:
    /// 127.0.0.2-127.0.0.254; "none": the kernel's choice.
    #[arg(long)]
    pub bind_range: Option<String>,
    /// The relay's PID: sample its process-wide CPU (/proc/PID/stat, all threads) and RSS every
    /// second.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Write the results (config, per-second series, samples, totals, verdict) here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label for this run (kept in the results; merge joins them).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Pass: WebRTC loss (expected − received over the run, %) at most this.
    #[arg(long, default_value_t = 0.5)]
    pub max_loss: f64,
    /// Pass: LL-HLS stalls (the playlist did not advance for more than 3 part targets) at most.
    #[arg(long, default_value_t = 0)]
    pub max_stalls: u64,
    /// Pass: late LL-HLS parts at most this many. A part is late when request → last byte
    /// minus its DURATION exceeds --late-slack.
    #[arg(long, default_value_t = 0)]
    pub max_late: u64,
    /// Lateness allowed before a part counts as late (s; default one PART-TARGET).
    #[arg(long)]
    pub late_slack: Option<f64>,
    /// Retry a WHEP join answered 503 (the relay or every node of a cluster is full) up to N
    /// times, each after the answer's Retry-After (s, at most 30; 1 when absent), within the
    /// run. 0: a 503 fails the join at once.
    #[arg(long, default_value_t = 0)]
    pub retry_refused: u32,
    /// Pass: failed joins (WHEP refused or failed for good, after any --retry-refused; first
    /// playlist failed) at most.
    #[arg(long, default_value_t = 0)]
    pub max_failed_joins: u64,
    /// Pass: LL-HLS errors (non-2xx, transport errors, timeouts) at most.
    #[arg(long, default_value_t = 0)]
    pub max_hls_errors: u64,
    /// Join WebRTC viewers through Janus's streaming plugin (this mountpoint id) instead of
    /// WHEP; --url is then the Janus HTTP API, e.g. http://10.77.0.1:8088/janus.
    #[arg(long)]
    pub janus_mountpoint: Option<u64>,
    /// Allow a target outside 127.0.0.0/8 (load-test only servers you run).
    #[arg(long)]
    pub allow_remote: bool,
    /// No progress lines (the summary is still printed).
    #[arg(long)]
    pub quiet: bool,
}

fn parse_bind(spec: Option<&str>, target: IpAddr) -> Result<Vec<IpAddr>, String> {
    let spec = match spec {
        Some("none") => return Ok(Vec::new()),
        Some(s) => s.to_string(),
        None if target.is_loopback() && target.is_ipv4() => "127.0.0.2-127.0.0.254".into(),
        None => return Ok(Vec::new()),
    };
    let (a, b) = spec.split_once('-').unwrap_or((&spec, &spec));
    let a: Ipv4Addr = a
        .trim()
        .parse()
        .map_err(|_| format!("--bind-range {spec}: bad address"))?;
    let b: Ipv4Addr = b
        .trim()
        .parse()
        .map_err(|_| format!("--bind-range {spec}: bad address"))?;
    let (a, b) = (u32::from(a), u32::from(b));
    if b < a || b - a > 65_535 {
        return Err(format!(
            "--bind-range {spec}: FIRST-LAST, at most 65,536 addresses"
        ));
    }
    Ok((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))).collect())
}

fn fmt_kib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

pub fn run(a: RunArgs) -> ExitCode {
    match run_inner(a) {
        Ok(r) => {
            if r.verdict.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("deltacast-load run: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(a: RunArgs) -> Result<Results, String> {
    if a.webrtc + a.hls == 0 {
        return Err("nothing to run: give --webrtc N and/or --hls N".into());
    }
    if a.webrtc + a.hls > a.max_viewers {
        return Err(format!(
            "{} viewers asked for, --max-viewers is {}",
            a.webrtc + a.hls,
            a.max_viewers
        ));
    }
    if a.webrtc > webrtc::MAX_VIEWERS || a.hls > hls::MAX_VIEWERS {
        return Err(format!(
            "at most {} WebRTC and {} LL-HLS viewers per machine (merge several)",
            webrtc::MAX_VIEWERS,
            hls::MAX_VIEWERS
        ));
    }
    if !(a.ramp > 0.0 && a.ramp <= 10_000.0) {
        return Err("--ramp must be within (0, 10000]".into());
    }
    let (http, authority) = parse_url(&a.url)?;
    let (hls_addr, hls_host) = parse_url(a.hls_url.as_deref().unwrap_or(&a.url))?;
    for t in [http.ip(), hls_addr.ip()] {
        if !t.is_loopback() && !a.allow_remote {
            return Err(format!(
                "{t} is not a loopback address: pass --allow-remote to load a server elsewhere"
            ));
        }
    }
    let bind = parse_bind(a.bind_range.as_deref(), http.ip())?;
    let hls_bind = parse_bind(a.bind_range.as_deref(), hls_addr.ip())?;
    let criteria = Criteria {
        max_loss_pct: a.max_loss,
        max_stalls: a.max_stalls,
        max_late_parts: a.max_late,
        max_failed_joins: a.max_failed_joins,
        max_dropped: 0,
        max_hls_errors: a.max_hls_errors,
    };
    // Two TCP connections per LL-HLS viewer, a UDP socket per WebRTC viewer, and spare.
    let nofile = procstat::raise_nofile();
    let need = (a.hls * 2 + a.webrtc + 256) as u64;
    if nofile < need {
        return Err(format!(
            "{} viewers need about {need} open files; the limit is {nofile} (ulimit -n)",
            a.webrtc + a.hls
        ));
    }
    let live = Arc::new(Live::default());
    let stop_joins = Arc::new(AtomicBool::new(false));
    let started_unix_ms = unix_ns() / 1_000_000;
    let t0 = Instant::now();
    let udp0 = procstat::udp_buf_errors();
    let me0 = procstat::self_cpu_ns();
    let srv0 = a.server_pid.and_then(procstat::process_cpu_ns);
    let hls_ramp = a.hls_ramp.unwrap_or(a.ramp).clamp(0.1, 10_000.0);
    let ramp_s = (a.webrtc as f64 / a.ramp).max(a.hls as f64 / hls_ramp);
    let end = t0 + Duration::from_secs_f64(ramp_s + a.duration as f64);
    let cap = t0 + Duration::from_secs(a.max_seconds);
    let end = end.min(cap);
    let w = (a.webrtc > 0).then(|| {
        webrtc::start(
            webrtc::Opts {
                http,
                whep_url: format!("http://{authority}/whep/{}", a.stream),
                allow_remote: a.allow_remote,
                retry_refused: a.retry_refused,
                deadline: end,
                viewers: a.webrtc,
                ramp: a.ramp,
                mode: a.webrtc_mode,
                threads: a.webrtc_threads.clamp(1, 64),
                batch: Duration::from_millis(a.webrtc_batch_ms.min(100)),
                bind,
                janus: a.janus_mountpoint.map(|mountpoint| crate::janus::Target {
                    path: url_path(&a.url),
                    mountpoint,
                }),
            },
            t0,
            live.clone(),
            stop_joins.clone(),
        )
    });
    let h = (a.hls > 0).then(|| {
        hls::start(
            hls::Opts {
                addr: hls_addr,
                host: hls_host,
                playlist_path: format!("/hls/{}/index.m3u8", a.stream),
                viewers: a.hls,
                ramp: hls_ramp,
                threads: a.hls_threads.clamp(1, 64),
                bind: hls_bind,
                late_slack: a.late_slack,
            },
            t0,
            live.clone(),
            stop_joins.clone(),
        )
    });
    let mut series: Vec<Second> = Vec::new();
    let mut prev = Snap::default();
    let (mut prev_me, mut prev_srv) = (me0, srv0);
    let mut tick = t0;
    let mut tick_at = t0;
    if !a.quiet {
        println!(
            "deltacast-load: {} WebRTC ({:?}) + {} LL-HLS viewers, ramp {}/s, hold {} s (cap {} s){}",
            a.webrtc, a.webrtc_mode, a.hls, a.ramp, a.duration, a.max_seconds,
            a.server_pid.map(|p| format!(", relay pid {p}")).unwrap_or_default()
        );
    }
    while tick < end {
        tick = (tick + Duration::from_secs(1)).min(end);
        std::thread::sleep(tick.saturating_duration_since(Instant::now()));
        let now = Instant::now();
        let dt = now.duration_since(tick_at).as_secs_f64().max(1e-3);
        tick_at = now;
        let s = live.snap();
        let me = procstat::self_cpu_ns();
        let srv = a.server_pid.and_then(procstat::process_cpu_ns);
        let rss = a.server_pid.and_then(procstat::rss_kib);
        let elapsed = now.duration_since(t0).as_secs_f64();
        let mut sec = Second {
            t: unix_ns() / 1_000_000_000,
            elapsed_s: (elapsed * 10.0).round() / 10.0,
            webrtc_target: (a.webrtc as f64).min(elapsed * a.ramp).ceil() as u64,
            webrtc_joined: s.w_joined,
            webrtc_failed: s.w_failed,
            hls_target: (a.hls as f64).min(elapsed * hls_ramp).ceil() as u64,
            hls_joined: s.h_joined,
            hls_failed: s.h_failed,
            pkts: s.w_pkts - prev.w_pkts,
            bytes: s.w_bytes - prev.w_bytes,
            expected: s.w_expected - prev.w_expected,
            unique: s.w_unique - prev.w_unique,
            loss_pct: 0.0,
            hls_parts: s.h_parts - prev.h_parts,
            hls_bytes: s.h_bytes - prev.h_bytes,
            late_parts: s.h_late - prev.h_late,
            stalls: s.h_stalls - prev.h_stalls,
            hls_errors: s.h_errors - prev.h_errors,
            server_cpu_pct: match (prev_srv, srv) {
                (Some(p), Some(c)) => Some((c - p) as f64 / 1e7 / dt),
                _ => None,
            },
            server_rss_kib: rss,
            load_cpu_pct: (me - prev_me) as f64 / 1e7 / dt,
            load_rss_kib: procstat::rss_kib(std::process::id()),
        };
        sec.compute_loss();
        if !a.quiet {
            let mut line = format!("{:>6.1}s", elapsed);
            if a.webrtc > 0 {
                line += &format!(
                    " | webrtc {}/{} failed {} {:.0} pkt/s loss {:.2}%",
                    sec.webrtc_joined,
                    a.webrtc,
                    sec.webrtc_failed,
                    sec.pkts as f64 / dt,
                    sec.loss_pct
                );
                if a.retry_refused > 0 {
                    line += &format!(
                        " retrying {}",
                        live.w_retrying.load(std::sync::atomic::Ordering::Relaxed)
                    );
                }
            }
            if a.hls > 0 {
                line += &format!(
                    " | hls {}/{} failed {} {:.0} parts/s late {} stalls {} err {}",
                    sec.hls_joined,
                    a.hls,
                    sec.hls_failed,
                    sec.hls_parts as f64 / dt,
                    s.h_late,
                    s.h_stalls,
                    s.h_errors
                );
            }
            if a.server_pid.is_some() {
                line += &format!(
                    " | server cpu {} rss {}",
                    sec.server_cpu_pct
                        .map_or("-".into(), |c| format!("{c:.0}%")),
                    fmt_kib(rss)
                );
            }
            line += &format!(" | self {:.0}%", sec.load_cpu_pct);
            println!("{line}");
        }
        series.push(sec);
        prev = s;
        prev_me = me;
        prev_srv = srv;
        if let (Some(pid), None) = (a.server_pid, srv) {
            eprintln!("deltacast-load: the relay (pid {}) is gone; stopping", pid);
            break;
        }
    }
    let end_ns = unix_ns();
    let duration_s = t0.elapsed().as_secs_f64();
    let me1 = procstat::self_cpu_ns();
    let (ends, refused) = w.map(|w| w.finish()).unwrap_or_default();
    let samples = h.map(|h| h.finish(&stop_joins)).unwrap_or_default();
    let udp1 = procstat::udp_buf_errors();
    let s = live.snap();

    // ── WebRTC per viewer ──
    const KEPT_MAX_LOSS_PCT: f64 = 1.0;
    const KEPT_MAX_SILENCE_NS: u64 = 1_000_000_000;
    const DROPPED_SILENCE_NS: u64 = 2_000_000_000;
    let mut first_frame_ms = Vec::new();
    let (mut dropped, mut kept) = (0u64, 0u64);
    let mut wt = report::WebrtcTotals {
        target: a.webrtc as u64,
        joined: s.w_joined,
        failed: s.w_failed,
        ..Default::default()
    };
    let mut per_viewer = Vec::new();
    for v in &ends {
        let silence = v.last_packet_ns.map(|t| end_ns.saturating_sub(t));
        let is_dropped = v.ice_disconnected || silence.is_none_or(|s| s > DROPPED_SILENCE_NS);
        dropped += is_dropped as u64;
        let loss = report::loss_pct(v.expected, v.expected - v.lost);
        let ok = !v.ice_disconnected
            && silence.is_some_and(|s| s <= KEPT_MAX_SILENCE_NS)
            && v.expected > 0
            && loss < KEPT_MAX_LOSS_PCT;
        kept += ok as u64;
        wt.packets += v.packets;
        wt.bytes += v.bytes;
        wt.expected += v.expected;
        wt.lost += v.lost;
        wt.reordered += v.reordered;
        wt.duplicates += v.duplicates;
        wt.redirected += (v.join.redirects > 0) as u64;
        wt.retried += (v.join.retries > 0) as u64;
        *wt.nodes.entry(v.join.node.clone()).or_default() += 1;
        if let Some(f) = v.first_frame_ns {
            first_frame_ms.push(f.saturating_sub(v.started_ns) as f64 / 1e6);
        }
        if per_viewer.len() < 5_000 {
            per_viewer.push(serde_json::json!({
                "index": v.index,
                "node": v.join.node,
                "session": v.join.session,
                "redirects": v.join.redirects,
                "retries": v.join.retries,
                "connected": v.connected,
                "ice_disconnected": v.ice_disconnected,
                "packets": v.packets,
                "expected": v.expected,
                "lost": v.lost,
                "loss_pct": if v.expected > 0 { loss } else { 100.0 },
                "first_packet_ms": v.first_packet_ns.map(|t| t.saturating_sub(v.started_ns) as f64 / 1e6),
                "first_frame_ms": v.first_frame_ns.map(|t| t.saturating_sub(v.started_ns) as f64 / 1e6),
                "played_s": v.first_packet_ns.map(|t| end_ns.saturating_sub(t) as f64 / 1e9),
                "last_packet_before_end_ms": silence.map(|s| s as f64 / 1e6),
                "kept_media": ok,
            }));
        }
    }
    wt.dropped = dropped;
    wt.redirected += refused.iter().filter(|r| r.redirects > 0).count() as u64;
    wt.retried += refused.iter().filter(|r| r.retries > 0).count() as u64;
    wt.loss_pct = report::loss_pct(wt.expected, wt.expected - wt.lost);
    first_frame_ms.sort_by(f64::total_cmp);
    let n503 = refused.iter().filter(|r| r.status == 503).count();
    let webrtc_details = serde_json::json!({
        "joined": ends.len(),
        "refused_503": n503,
        "refused_503_with_retry_after": refused.iter().filter(|r| r.status == 503 && r.retry_after.is_some()).count(),
        "failed_other": refused.len() - n503,
        "joined_after_retry": ends.iter().filter(|v| v.join.retries > 0).count(),
        "kept_media": kept,
        "viewers": per_viewer,
        "refused": refused,
    });

    // ── LL-HLS ──
    let mut lat = samples.lateness_ms;
    lat.sort_by(f64::total_cmp);
    let mut first_part_ms = samples.first_part_ms;
    first_part_ms.sort_by(f64::total_cmp);
    let ht = report::HlsTotals {
        target: a.hls as u64,
        joined: s.h_joined,
        failed: s.h_failed,
        playlists: live.h_playlists.load(std::sync::atomic::Ordering::Relaxed),
        parts: s.h_parts,
        hinted_parts: live.h_hinted.load(std::sync::atomic::Ordering::Relaxed),
        bytes: s.h_bytes,
        late_parts: s.h_late,
        stalls: s.h_stalls,
        errors: s.h_errors,
        lateness_p50_ms: nan0(pct(&lat, 0.5)),
        lateness_p99_ms: nan0(pct(&lat, 0.99)),
        lateness_max_ms: lat.last().copied().unwrap_or(0.0),
    };
    let load_cpu_s = (me1 - me0) as f64 / 1e9;
    let rss: Vec<u64> = series.iter().filter_map(|s| s.server_rss_kib).collect();
    let cpu: Vec<f64> = series.iter().filter_map(|s| s.server_cpu_pct).collect();
    let totals = Totals {
        duration_s,
        load_cpu_us_per_packet: (a.hls == 0 && wt.packets > 0)
            .then(|| load_cpu_s * 1e6 / wt.packets as f64),
        load_cpu_us_per_part: (a.webrtc == 0 && ht.parts > 0)
            .then(|| load_cpu_s * 1e6 / (ht.parts + ht.playlists) as f64),
        webrtc: wt,
        hls: ht,
        load_cpu_s,
        server_cpu_avg_pct: (!cpu.is_empty()).then(|| cpu.iter().sum::<f64>() / cpu.len() as f64),
        server_rss_first_kib: rss.first().copied(),
        server_rss_max_kib: rss.iter().max().copied(),
        server_rss_last_kib: rss.last().copied(),
        udp_rcvbuf_errors: udp1.0 - udp0.0,
        udp_sndbuf_errors: udp1.1 - udp0.1,
    };
    let verdict = report::judge(&totals, &criteria);
    let r = Results {
        tool: format!("deltacast-load {}", env!("CARGO_PKG_VERSION")),
        label: a.label.clone(),
        config: serde_json::to_value(&a).unwrap_or_default(),
        criteria,
        started_unix_ms,
        series,
        first_frame_ms,
        first_part_ms,
        totals,
        verdict,
        webrtc: webrtc_details,
        merged_from: Vec::new(),
    };
    print_summary(&r);
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r).unwrap())
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(r)
}

fn nan0(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x
    }
}

/// The end-of-run report (also after `merge`).
pub fn print_summary(r: &Results) {
    let t = &r.totals;
    let (w, h) = (&t.webrtc, &t.hls);
    println!("── deltacast-load {} ({:.0} s) ──", r.label, t.duration_s);
    if w.target > 0 {
        println!(
            "webrtc: joined {}/{} failed {} dropped {}; {} packets {:.1} MB; loss {:.3} % ({} of {}), reordered {}, duplicates {}; first frame p50 {:.0} ms p99 {:.0} ms",
            w.joined, w.target, w.failed, w.dropped, w.packets, w.bytes as f64 / 1e6, w.loss_pct, w.lost, w.expected,
            w.reordered, w.duplicates, pct(&r.first_frame_ms, 0.5), pct(&r.first_frame_ms, 0.99)
        );
    }
    if w.target > 0 && (w.redirected > 0 || w.retried > 0 || w.nodes.len() > 1) {
        let nodes: Vec<String> = w.nodes.iter().map(|(n, c)| format!("{n} {c}")).collect();
        println!(
            "webrtc nodes: {}; {} joins redirected, {} retried after 503",
            nodes.join(", "),
            w.redirected,
            w.retried
        );
    }
    if h.target > 0 {
        println!(
            "hls: joined {}/{} failed {}; {} playlists, {} parts ({} via preload hint) {:.1} MB; late {} stalls {} errors {}; lateness p50 {:.0} ms p99 {:.0} ms max {:.0} ms; first part p50 {:.0} ms p99 {:.0} ms",
            h.joined, h.target, h.failed, h.playlists, h.parts, h.hinted_parts, h.bytes as f64 / 1e6, h.late_parts, h.stalls,
            h.errors, h.lateness_p50_ms, h.lateness_p99_ms, h.lateness_max_ms, pct(&r.first_part_ms, 0.5), pct(&r.first_part_ms, 0.99)
        );
    }
    if let Some(c) = t.server_cpu_avg_pct {
        println!(
            "server: cpu avg {c:.0} % of a core; rss first {} max {} last {}",
            fmt_kib(t.server_rss_first_kib),
            fmt_kib(t.server_rss_max_kib),
            fmt_kib(t.server_rss_last_kib)
        );
    }
    let mut own = format!(
        "load tool: {:.1} s CPU ({:.0} % of a core)",
        t.load_cpu_s,
        t.load_cpu_s * 100.0 / t.duration_s.max(1e-3)
    );
    if let Some(k) = r.series.iter().filter_map(|s| s.load_rss_kib).max() {
        own += &format!(", RSS max {}", fmt_kib(Some(k)));
    }
    if let Some(u) = t.load_cpu_us_per_packet {
        own += &format!(", {u:.2} µs per RTP packet");
    }
    if let Some(u) = t.load_cpu_us_per_part {
        own += &format!(", {u:.1} µs per HLS request");
    }
    own += &format!(
        "; host UDP drops: {} receive-buffer, {} send-buffer",
        t.udp_rcvbuf_errors, t.udp_sndbuf_errors
    );
    println!("{own}");
    if r.verdict.passed {
        println!("PASS");
    } else {
        println!("FAIL: {}", r.verdict.failures.join("; "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_bind_ranges() {
        let (a, h) = parse_url("http://127.0.0.1:8080/x").unwrap();
        assert_eq!((a.port(), h.as_str()), (8080, "127.0.0.1:8080"));
        assert!(parse_url("https://127.0.0.1").is_err());
        let b = parse_bind(None, "127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(b.len(), 253);
        assert_eq!(b[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert!(parse_bind(None, "10.0.0.1".parse().unwrap())
            .unwrap()
            .is_empty());
        assert!(parse_bind(Some("none"), "127.0.0.1".parse().unwrap())
            .unwrap()
            .is_empty());
        assert_eq!(
            parse_bind(Some("127.0.0.9"), "127.0.0.1".parse().unwrap())
                .unwrap()
                .len(),
            1
        );
        assert!(parse_bind(Some("127.0.0.9-127.0.0.1"), "127.0.0.1".parse().unwrap()).is_err());
    }
}
