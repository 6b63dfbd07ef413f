//! The results file: the run's configuration, a per-second time series, latency samples,
//! totals and the pass/fail verdict; `merge` of several machines' files; percentiles.
//!
//! One schema for a single run and a merged one, so `plot` and the verdict read either.

use serde::{Deserialize, Serialize};

/// One wall-clock second of a run (counts are for that second, gauges at its end).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Second {
    /// Unix time (s) at the end of this second: the key `merge` aligns machines on.
    pub t: u64,
    pub elapsed_s: f64,
    pub webrtc_target: u64,
    pub webrtc_joined: u64,
    pub webrtc_failed: u64,
    pub hls_target: u64,
    pub hls_joined: u64,
    pub hls_failed: u64,
    /// RTP packets and bytes received by WebRTC viewers in this second.
    pub pkts: u64,
    pub bytes: u64,
    /// Growth of the expected sequence span and unique packets this second (loss = 1 − u/e).
    pub expected: u64,
    pub unique: u64,
    pub loss_pct: f64,
    pub hls_parts: u64,
    pub hls_bytes: u64,
    pub late_parts: u64,
    pub stalls: u64,
    pub hls_errors: u64,
    /// The relay's whole-process CPU (% of one core) and RSS, when `--server-pid` was given.
    pub server_cpu_pct: Option<f64>,
    pub server_rss_kib: Option<u64>,
    /// This load tool's own CPU (% of one core; summed over machines after `merge`).
    pub load_cpu_pct: f64,
    /// This load tool's own RSS (summed over machines after `merge`).
    #[serde(default)]
    pub load_rss_kib: Option<u64>,
}

impl Second {
    pub fn compute_loss(&mut self) {
        self.loss_pct = loss_pct(self.expected, self.unique);
    }
}

pub fn loss_pct(expected: u64, unique: u64) -> f64 {
    if expected == 0 {
        0.0
    } else {
        expected.saturating_sub(unique) as f64 * 100.0 / expected as f64
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct WebrtcTotals {
    pub target: u64,
    pub joined: u64,
    pub failed: u64,
    /// Joined viewers that lost their session (ICE disconnected) or their media (no packet in
    /// the last 2 s of the run).
    pub dropped: u64,
    pub packets: u64,
    pub bytes: u64,
    pub expected: u64,
    pub lost: u64,
    pub loss_pct: f64,
    pub reordered: u64,
    pub duplicates: u64,
    /// WHEP joins that followed a redirect (307/308, a full node of a cluster), joined or not.
    #[serde(default)]
    pub redirected: u64,
    /// WHEP joins retried after a 503 (`--retry-refused`), joined or failed for good.
    #[serde(default)]
    pub retried: u64,
    /// Joined viewers per node that answered their POST (the final URL's host:port).
    #[serde(default)]
    pub nodes: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HlsTotals {
    pub target: u64,
    pub joined: u64,
    pub failed: u64,
    pub playlists: u64,
    pub parts: u64,
    /// Parts fetched through their preload hint (requested before they were complete).
    pub hinted_parts: u64,
    pub bytes: u64,
    pub late_parts: u64,
    pub stalls: u64,
    pub errors: u64,
    /// Lateness (request → last byte, minus the part's duration) of every part, ms.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    pub lateness_max_ms: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Totals {
    pub duration_s: f64,
    pub webrtc: WebrtcTotals,
    pub hls: HlsTotals,
    /// This tool's CPU over the run (getrusage, all threads), s.
    pub load_cpu_s: f64,
    /// ... per WebRTC packet and per HLS part request, when only one kind ran (µs).
    pub load_cpu_us_per_packet: Option<f64>,
    pub load_cpu_us_per_part: Option<f64>,
    pub server_cpu_avg_pct: Option<f64>,
    pub server_rss_first_kib: Option<u64>,
    pub server_rss_max_kib: Option<u64>,
    pub server_rss_last_kib: Option<u64>,
    /// Host UDP receive/send buffer drops over the run (/proc/net/snmp).
    pub udp_rcvbuf_errors: u64,
    pub udp_sndbuf_errors: u64,
}

/// Pass criteria (the flags), kept in the file so `merge` can judge the sum alike.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Criteria {
    pub max_loss_pct: f64,
    pub max_stalls: u64,
    pub max_late_parts: u64,
    pub max_failed_joins: u64,
    pub max_dropped: u64,
    pub max_hls_errors: u64,
}

impl Default for Criteria {
    fn default() -> Self {
        Criteria {
            max_loss_pct: 0.5,
            max_stalls: 0,
            max_late_parts: 0,
            max_failed_joins: 0,
            max_dropped: 0,
            max_hls_errors: 0,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub failures: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Results {
    pub tool: String,
    pub label: String,
    /// Every option of the run, as given.
    pub config: serde_json::Value,
    pub criteria: Criteria,
    pub started_unix_ms: u64,
    pub series: Vec<Second>,
    /// WebRTC: WHEP POST → first complete video frame (marker bit), ms, one per viewer.
    pub first_frame_ms: Vec<f64>,
    /// LL-HLS: viewer start → last byte of its first part, ms, one per viewer.
    pub first_part_ms: Vec<f64>,
    pub totals: Totals,
    pub verdict: Verdict,
    /// WebRTC details: every refused join and every joined viewer's life (capped).
    #[serde(default)]
    pub webrtc: serde_json::Value,
    /// The files a merged result came from.
    #[serde(default)]
    pub merged_from: Vec<String>,
}

/// Judge totals against criteria.
pub fn judge(t: &Totals, c: &Criteria) -> Verdict {
    let mut f = Vec::new();
    let w = &t.webrtc;
    let h = &t.hls;
    if w.target > 0 {
        if w.loss_pct > c.max_loss_pct {
            f.push(format!(
                "WebRTC loss {:.3} % > {} %",
                w.loss_pct, c.max_loss_pct
            ));
        }
        if w.dropped > c.max_dropped {
            f.push(format!(
                "{} joined WebRTC viewers dropped (> {})",
                w.dropped, c.max_dropped
            ));
        }
        if w.joined > 0 && w.packets == 0 {
            f.push("WebRTC viewers joined but received no RTP".into());
        }
    }
    if w.failed + h.failed > c.max_failed_joins {
        f.push(format!(
            "failed joins: {} WebRTC + {} LL-HLS (> {})",
            w.failed, h.failed, c.max_failed_joins
        ));
    }
    if h.target > 0 {
        if h.stalls > c.max_stalls {
            f.push(format!("{} LL-HLS stalls (> {})", h.stalls, c.max_stalls));
        }
        if h.late_parts > c.max_late_parts {
            f.push(format!(
                "{} late LL-HLS parts (> {})",
                h.late_parts, c.max_late_parts
            ));
        }
        if h.errors > c.max_hls_errors {
            f.push(format!(
                "{} LL-HLS errors (> {})",
                h.errors, c.max_hls_errors
            ));
        }
        if h.joined > 0 && h.parts == 0 {
            f.push("LL-HLS viewers joined but fetched no part".into());
        }
    }
    Verdict {
        passed: f.is_empty(),
        failures: f,
    }
}

/// Nearest-rank percentile of sorted samples (NaN when empty).
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Combine results of several load machines driving one run: counts summed per wall-clock
/// second (`t`), latency samples united, totals summed. The relay's CPU and RSS are one
/// process's, whichever machine sampled it: the largest sample of a second is kept.
pub fn merge(inputs: &[(String, Results)]) -> Result<Results, String> {
    let Some((_, first)) = inputs.first() else {
        return Err("merge: no input files".into());
    };
    let mut by_t: std::collections::BTreeMap<u64, Second> = Default::default();
    let mut out = Results {
        tool: first.tool.clone(),
        label: inputs
            .iter()
            .map(|(_, r)| r.label.as_str())
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("+"),
        config: serde_json::json!({
            "merged": inputs.iter().map(|(_, r)| r.config.clone()).collect::<Vec<_>>()
        }),
        criteria: first.criteria.clone(),
        started_unix_ms: inputs
            .iter()
            .map(|(_, r)| r.started_unix_ms)
            .min()
            .unwrap_or(0),
        merged_from: inputs.iter().map(|(n, _)| n.clone()).collect(),
        ..Default::default()
    };
    let mut details = Vec::new();
    for (_, r) in inputs {
        for s in &r.series {
            let m = by_t.entry(s.t).or_insert_with(|| Second {
                t: s.t,
                ..Default::default()
            });
            m.webrtc_target += s.webrtc_target;
            m.webrtc_joined += s.webrtc_joined;
            m.webrtc_failed += s.webrtc_failed;
            m.hls_target += s.hls_target;
            m.hls_joined += s.hls_joined;
            m.hls_failed += s.hls_failed;
            m.pkts += s.pkts;
            m.bytes += s.bytes;
            m.expected += s.expected;
            m.unique += s.unique;
            m.hls_parts += s.hls_parts;
            m.hls_bytes += s.hls_bytes;
            m.late_parts += s.late_parts;
            m.stalls += s.stalls;
            m.hls_errors += s.hls_errors;
            m.server_cpu_pct = match (m.server_cpu_pct, s.server_cpu_pct) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            m.server_rss_kib = m.server_rss_kib.max(s.server_rss_kib);
            m.load_cpu_pct += s.load_cpu_pct;
            m.load_rss_kib = match (m.load_rss_kib, s.load_rss_kib) {
                (Some(x), Some(y)) => Some(x + y),
                (x, y) => x.or(y),
            };
        }
        out.first_frame_ms.extend(&r.first_frame_ms);
        out.first_part_ms.extend(&r.first_part_ms);
        let (a, b) = (&mut out.totals, &r.totals);
        a.duration_s = a.duration_s.max(b.duration_s);
        let (w, x) = (&mut a.webrtc, &b.webrtc);
        w.target += x.target;
        w.joined += x.joined;
        w.failed += x.failed;
        w.dropped += x.dropped;
        w.packets += x.packets;
        w.bytes += x.bytes;
        w.expected += x.expected;
        w.lost += x.lost;
        w.reordered += x.reordered;
        w.duplicates += x.duplicates;
        w.redirected += x.redirected;
        w.retried += x.retried;
        for (n, c) in &x.nodes {
            *w.nodes.entry(n.clone()).or_default() += c;
        }
        let (h, y) = (&mut a.hls, &b.hls);
        h.target += y.target;
        h.joined += y.joined;
        h.failed += y.failed;
        h.playlists += y.playlists;
        h.parts += y.parts;
        h.hinted_parts += y.hinted_parts;
        h.bytes += y.bytes;
        h.late_parts += y.late_parts;
        h.stalls += y.stalls;
        h.errors += y.errors;
        // Percentiles do not add: keep the worst machine's.
        h.lateness_p50_ms = h.lateness_p50_ms.max(y.lateness_p50_ms);
        h.lateness_p99_ms = h.lateness_p99_ms.max(y.lateness_p99_ms);
        h.lateness_max_ms = h.lateness_max_ms.max(y.lateness_max_ms);
        a.load_cpu_s += b.load_cpu_s;
        a.udp_rcvbuf_errors += b.udp_rcvbuf_errors;
        a.udp_sndbuf_errors += b.udp_sndbuf_errors;
        a.server_cpu_avg_pct = match (a.server_cpu_avg_pct, b.server_cpu_avg_pct) {
            (Some(p), Some(q)) => Some(p.max(q)),
            (p, q) => p.or(q),
        };
        a.server_rss_first_kib = a.server_rss_first_kib.or(b.server_rss_first_kib);
        a.server_rss_max_kib = a.server_rss_max_kib.max(b.server_rss_max_kib);
        a.server_rss_last_kib = a.server_rss_last_kib.max(b.server_rss_last_kib);
        details.push(r.webrtc.clone());
    }
    let w = &mut out.totals.webrtc;
    w.loss_pct = loss_pct(w.expected, w.expected.saturating_sub(w.lost));
    out.series = by_t.into_values().collect();
    let t0 = out.series.first().map(|s| s.t).unwrap_or(0);
    for s in &mut out.series {
        s.compute_loss();
        s.elapsed_s = (s.t - t0 + 1) as f64;
    }
    out.first_frame_ms.sort_by(f64::total_cmp);
    out.first_part_ms.sort_by(f64::total_cmp);
    out.webrtc = serde_json::Value::Array(details);
    out.verdict = judge(&out.totals, &out.criteria);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, t0: u64, secs: u64, pkts: u64, stalls: u64) -> Results {
        let series = (0..secs)
            .map(|i| Second {
                t: t0 + i,
                webrtc_target: 10,
                webrtc_joined: 10,
                pkts,
                expected: pkts,
                unique: pkts - 1,
                hls_parts: 5,
                stalls: (i == 0) as u64 * stalls,
                server_cpu_pct: Some(10.0 + i as f64),
                server_rss_kib: Some(1000 + i),
                load_cpu_pct: 5.0,
                ..Default::default()
            })
            .collect();
        let totals = Totals {
            webrtc: WebrtcTotals {
                target: 10,
                joined: 10,
                packets: pkts * secs,
                expected: pkts * secs,
                lost: secs,
                redirected: 2,
                nodes: [("127.0.0.2:1".to_string(), 4), (format!("{label}:1"), 6)].into(),
                ..Default::default()
            },
            hls: HlsTotals {
                target: 3,
                joined: 3,
                parts: 5 * secs,
                stalls,
                ..Default::default()
            },
            load_cpu_s: 1.0,
            ..Default::default()
        };
        Results {
            label: label.into(),
            series,
            first_frame_ms: vec![100.0, 50.0],
            totals,
            ..Default::default()
        }
    }

    #[test]
    fn merge_sums_counts_by_wall_clock_second_and_unites_samples() {
        let a = run("a", 1000, 3, 100, 0);
        let b = run("b", 1001, 3, 200, 1); // started one second later
        let m = merge(&[("a.json".into(), a), ("b.json".into(), b)]).unwrap();
        let ts: Vec<u64> = m.series.iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![1000, 1001, 1002, 1003]);
        assert_eq!(m.series[0].pkts, 100);
        assert_eq!(m.series[1].pkts, 300);
        assert_eq!(m.series[1].webrtc_joined, 20);
        assert_eq!(m.series[3].pkts, 200);
        // Same relay sampled by both: the larger sample, not the sum.
        assert_eq!(m.series[1].server_cpu_pct, Some(11.0));
        assert_eq!(m.series[1].load_cpu_pct, 10.0);
        assert!((m.series[1].loss_pct - 2.0 * 100.0 / 300.0).abs() < 1e-9);
        assert_eq!(m.first_frame_ms, vec![50.0, 50.0, 100.0, 100.0]);
        assert_eq!(m.totals.webrtc.joined, 20);
        assert_eq!(m.totals.webrtc.packets, 900);
        assert_eq!(m.totals.webrtc.redirected, 4);
        let nodes: Vec<(&str, u64)> = m
            .totals
            .webrtc
            .nodes
            .iter()
            .map(|(n, c)| (n.as_str(), *c))
            .collect();
        assert_eq!(nodes, vec![("127.0.0.2:1", 8), ("a:1", 6), ("b:1", 6)]);
        assert_eq!(m.totals.load_cpu_s, 2.0);
        assert_eq!(m.merged_from, vec!["a.json", "b.json"]);
        assert_eq!(m.label, "a+b");
        // b's stall fails the merged run.
        assert!(!m.verdict.passed);
        assert!(
            m.verdict.failures.iter().any(|f| f.contains("stalls")),
            "{:?}",
            m.verdict
        );
        assert!(merge(&[]).is_err());
    }

    #[test]
    fn verdict_follows_the_criteria() {
        let mut t = Totals {
            webrtc: WebrtcTotals {
                target: 2,
                joined: 2,
                packets: 1000,
                expected: 1000,
                lost: 4,
                loss_pct: 0.4,
                ..Default::default()
            },
            hls: HlsTotals {
                target: 2,
                joined: 2,
                parts: 10,
                late_parts: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let c = Criteria::default();
        let v = judge(&t, &c);
        assert_eq!(v.failures.len(), 1, "{v:?}");
        assert!(v.failures[0].contains("late"));
        let relaxed = Criteria {
            max_late_parts: 1,
            ..c.clone()
        };
        assert!(judge(&t, &relaxed).passed);
        t.webrtc.loss_pct = 0.6;
        assert!(!judge(&t, &relaxed).passed);
        t.webrtc.loss_pct = 0.0;
        t.webrtc.failed = 1;
        assert!(!judge(&t, &relaxed).passed);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(pct(&v, 0.5), 51.0);
        assert_eq!(pct(&v, 0.0), 1.0);
        assert_eq!(pct(&v, 1.0), 100.0);
        assert!(pct(&[], 0.5).is_nan());
    }
}
