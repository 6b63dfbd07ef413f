//! LL-HLS media playlist rendering (rfc8216bis): full and delta (`_HLS_skip=YES`) forms.
//! Pure functions of a [`PlaylistView`], so they can be rendered once per window change.

use std::fmt::Write;
use std::time::SystemTime;

pub struct PartView<'a> {
    pub uri: &'a str,
    pub duration: f64,
    pub independent: bool,
}

pub struct SegmentView<'a> {
    pub msn: u64,
    pub uri: &'a str,
    pub duration: f64,
    pub discontinuity: bool,
    pub map_uri: &'a str,
    pub program_date_time: SystemTime,
    /// Parts listed for this segment (empty for older segments).
    pub parts: Vec<PartView<'a>>,
    /// False for the segment being produced (it has parts only).
    pub complete: bool,
}

pub struct PlaylistView<'a> {
    pub target_duration: u64,
    pub part_target: f64,
    pub media_sequence: u64,
    pub discontinuity_sequence: u64,
    pub segments: Vec<SegmentView<'a>>,
    pub preload_hint: Option<String>,
    pub ended: bool,
}

impl PlaylistView<'_> {
    pub fn part_hold_back(&self) -> f64 {
        3.0 * self.part_target
    }
    pub fn can_skip_until(&self) -> f64 {
        6.0 * self.target_duration as f64
    }
}

fn fmt_pdt(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Render the playlist. With `skip`, complete segments older than CAN-SKIP-UNTIL from the end
/// are replaced by one EXT-X-SKIP tag.
pub fn render(v: &PlaylistView<'_>, skip: bool) -> String {
    let mut s = String::with_capacity(4096);
    s.push_str("#EXTM3U\n#EXT-X-VERSION:10\n");
    let _ = writeln!(s, "#EXT-X-TARGETDURATION:{}", v.target_duration);
    let _ = writeln!(s, "#EXT-X-PART-INF:PART-TARGET={:.3}", v.part_target);
    if v.ended {
        s.push_str("#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES\n");
    } else {
        let _ = writeln!(
            s,
            "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK={:.3},CAN-SKIP-UNTIL={:.1}",
            v.part_hold_back(),
            v.can_skip_until()
        );
    }
    let _ = writeln!(s, "#EXT-X-MEDIA-SEQUENCE:{}", v.media_sequence);
    if v.discontinuity_sequence > 0 {
        let _ = writeln!(
            s,
            "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
            v.discontinuity_sequence
        );
    }

    // Which segments a delta update may skip: complete ones that end more than
    // CAN-SKIP-UNTIL before the end of the playlist.
    let mut skipped = 0usize;
    if skip && !v.ended {
        let total: f64 = v.segments.iter().map(|s| s.duration).sum();
        let mut start = 0.0;
        for seg in &v.segments {
            if !seg.complete || start + seg.duration > total - v.can_skip_until() {
                break;
            }
            // A skipped segment must not carry tags the client would miss.
            if seg.discontinuity && skipped > 0 {
                break;
            }
            start += seg.duration;
            skipped += 1;
        }
        // Keep at least the discontinuity/map context: never skip everything.
        if skipped == v.segments.len() {
            skipped = skipped.saturating_sub(1);
        }
    }
    if skipped > 0 {
        let _ = writeln!(s, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
    }

    let mut current_map: Option<&str> = None;
    for (i, seg) in v.segments.iter().enumerate() {
        if i < skipped {
            current_map = Some(seg.map_uri);
            continue;
        }
        if seg.discontinuity && i > 0 {
            s.push_str("#EXT-X-DISCONTINUITY\n");
        }
        if current_map != Some(seg.map_uri) || i == skipped {
            let _ = writeln!(s, "#EXT-X-MAP:URI=\"{}\"", seg.map_uri);
            current_map = Some(seg.map_uri);
        }
        let _ = writeln!(
            s,
            "#EXT-X-PROGRAM-DATE-TIME:{}",
            fmt_pdt(seg.program_date_time)
        );
        for p in &seg.parts {
            let _ = write!(
                s,
                "#EXT-X-PART:DURATION={:.5},URI=\"{}\"",
                p.duration, p.uri
            );
            if p.independent {
                s.push_str(",INDEPENDENT=YES");
            }
            s.push('\n');
        }
        if seg.complete {
            let _ = writeln!(s, "#EXTINF:{:.5},\n{}", seg.duration, seg.uri);
        }
    }
    if let Some(h) = &v.preload_hint {
        if !v.ended {
            let _ = writeln!(s, "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"{h}\"");
        }
    }
    if v.ended {
        s.push_str("#EXT-X-ENDLIST\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdt_format() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_795_000_000_123);
        assert_eq!(fmt_pdt(t), "2026-11-18T11:06:40.123Z");
        assert_eq!(fmt_pdt(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    fn seg(msn: u64, complete: bool, disc: bool) -> SegmentView<'static> {
        SegmentView {
            msn,
            uri: "s.m4s",
            duration: 2.0,
            discontinuity: disc,
            map_uri: "init1.mp4",
            program_date_time: SystemTime::UNIX_EPOCH,
            parts: vec![PartView {
                uri: "p.m4s",
                duration: 0.2,
                independent: true,
            }],
            complete,
        }
    }

    #[test]
    fn renders_required_tags_and_skip() {
        let mut segs: Vec<_> = (0..12).map(|i| seg(i, true, false)).collect();
        segs.push(seg(12, false, false));
        let v = PlaylistView {
            target_duration: 2,
            part_target: 0.2,
            media_sequence: 0,
            discontinuity_sequence: 0,
            segments: segs,
            preload_hint: Some("next.m4s".into()),
            ended: false,
        };
        let full = render(&v, false);
        for tag in [
            "#EXT-X-TARGETDURATION:2",
            "#EXT-X-PART-INF:PART-TARGET=0.200",
            "CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.600,CAN-SKIP-UNTIL=12.0",
            "#EXT-X-MAP:URI=\"init1.mp4\"",
            "#EXT-X-PROGRAM-DATE-TIME:",
            "INDEPENDENT=YES",
            "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"next.m4s\"",
        ] {
            assert!(full.contains(tag), "missing {tag}\n{full}");
        }
        assert_eq!(full.matches("#EXTINF").count(), 12);
        let delta = render(&v, true);
        assert!(delta.contains("#EXT-X-SKIP:SKIPPED-SEGMENTS=7"), "{delta}");
        assert_eq!(delta.matches("#EXTINF").count(), 5);
        assert!(delta.contains("#EXT-X-MAP"));
    }
}
