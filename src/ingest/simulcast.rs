//! Simulcast video from a WHIP publisher: one H.264 assembler and clock per RTP stream id (rid),
//! ranked by resolution into layers. Layer 0 (the best active rid) is the stream's video track
//! and feeds every path (LL-HLS, RTMP, WebRTC); layers 1.. go to WebRTC viewers only
//! ([`crate::media::Publisher::push_layer`]). A publisher without simulcast is one layer with no
//! rid, and behaves exactly like that.
//!
//! Sans-IO: access units and `now` come in, placements and keyframe requests go out.
//!
//! - Ranking: by picture area from each rid's SPS, among rids that sent a frame in the last
//!   [`ACTIVE_WINDOW`] (a browser stops its top layers when its uplink is short).
//! - Layer 0 changes rid only on a keyframe of the new rid (the others are asked for one), so
//!   LL-HLS and RTMP never get a P-frame of another encoding.
//! - A change of which rid is behind a lower layer number shows up as a new `codec` `Arc` on
//!   that layer; the SFU router then restarts the layer (viewers wait for its keyframe).
//! - At the start of a simulcast session nothing is published until every offered rid has
//!   sent its first keyframe or [`SETTLE`] has passed, so layer 0 does not start on a small rid
//!   and switch a moment later.

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::media::Rid;

use super::whip::{AccessUnit, H264Assembler};
use crate::media::control::KeyframeRequests;
use crate::media::{Codec, MAX_LAYERS};

/// A rid that sent nothing for this long is not ranked (its layer number goes to the others).
pub const ACTIVE_WINDOW: Duration = Duration::from_millis(1500);
/// Longest wait for every offered rid before layer 0 is chosen from those that arrived.
pub const SETTLE: Duration = Duration::from_millis(400);

/// One rid's video: its assembler, its clock slot (owned by the caller's clock logic) and its
/// current parameters.
pub struct RidLayer {
    pub rid: Option<Rid>,
    pub h264: H264Assembler,
    /// The caller's per-rid RTP clock mapping.
    pub clock: Option<super::whip::TrackClock>,
    codec: Option<Arc<Codec>>,
    area: u64,
    last_frame: Option<Instant>,
    /// Keyframe requests to this rid (viewers of its layer, the schedule, a better rid that
    /// should take layer 0), paced by the one policy.
    requests: KeyframeRequests,
}

/// Where an assembled access unit goes.
#[derive(Debug, PartialEq)]
pub enum Placement {
    /// The stream's video track. `codec` is set when layer 0's parameters changed (a new rid,
    /// or new SPS/PPS): announce it before the frame.
    Primary { codec: Option<Codec> },
    /// A lower layer (1..MAX_LAYERS) with that rid's parameters.
    Layer(u8, Arc<Codec>),
    /// Not published (waiting for layer 0 to start, or more rids than layers).
    Drop,
}

pub struct LayerSet {
    layers: Vec<RidLayer>,
    /// Index into `layers` of layer 0.
    primary: Option<usize>,
    /// The `codec` last announced for layer 0.
    primary_codec: Option<Arc<Codec>>,
    /// Rids the offer announced (0 or 1: not simulcast).
    expected: usize,
    first_frame: Option<Instant>,
    /// Ask for a keyframe on layer 0 when none came for this long (browsers send keyframes
    /// only when asked; LL-HLS segments and RTMP platforms need them every couple of seconds).
    keyframe_interval: Option<Duration>,
    /// Last keyframe of layer 0.
    primary_key_at: Option<Instant>,
}

impl LayerSet {
    /// `expected`: how many rids the offer's simulcast attribute lists (0 without simulcast).
    /// `keyframe_interval`: see [`LayerSet::keyframe_interval`]; `None` or zero: never ask on a
    /// schedule.
    pub fn new(expected: usize, keyframe_interval: Option<Duration>) -> Self {
        Self {
            layers: Vec::new(),
            primary: None,
            primary_codec: None,
            expected,
            first_frame: None,
            keyframe_interval: keyframe_interval.filter(|d| !d.is_zero()),
            primary_key_at: None,
        }
    }

    /// When layer 0 is due for a scheduled keyframe.
    fn scheduled_key_at(&self) -> Option<Instant> {
        let every = self.keyframe_interval?;
        self.primary?;
        Some(self.primary_key_at? + every)
    }

    /// The slot of `rid`, created on first use; `None` once [`MAX_LAYERS`] rids are known.
    pub fn slot(&mut self, rid: Option<Rid>) -> Option<usize> {
        if let Some(i) = self.layers.iter().position(|l| l.rid == rid) {
            return Some(i);
        }
        if self.layers.len() >= MAX_LAYERS {
            return None;
        }
        self.layers.push(RidLayer {
            rid,
            h264: H264Assembler::new(),
            clock: None,
            codec: None,
            area: 0,
            last_frame: None,
            requests: KeyframeRequests::default(),
        });
        Some(self.layers.len() - 1)
    }

    pub fn layer_mut(&mut self, i: usize) -> &mut RidLayer {
        &mut self.layers[i]
    }

    /// How many rids have been seen.
    pub fn rids(&self) -> usize {
        self.layers.len()
    }

    fn active(&self, i: usize, now: Instant) -> bool {
        let l = &self.layers[i];
        l.codec.is_some()
            && l.last_frame
                .is_some_and(|t| now.saturating_duration_since(t) <= ACTIVE_WINDOW)
    }

    /// Active rids, best first (area, then the order they appeared).
    fn ranked(&self, now: Instant) -> Vec<usize> {
        let mut v: Vec<usize> = (0..self.layers.len())
            .filter(|&i| self.active(i, now))
            .collect();
        v.sort_by(|&a, &b| {
            self.layers[b]
                .area
                .cmp(&self.layers[a].area)
                .then(a.cmp(&b))
        });
        v
    }

    /// The slot behind layer number `n` now (0 = primary).
    fn slot_of_layer(&self, n: usize, now: Instant) -> Option<usize> {
        if n == 0 {
            return self.primary;
        }
        self.ranked(now)
            .into_iter()
            .filter(|&i| Some(i) != self.primary)
            .nth(n - 1)
    }

    /// Slot `i` assembled `au`: record it and say where it goes.
    pub fn place(&mut self, i: usize, au: &AccessUnit, now: Instant) -> Placement {
        {
            let l = &mut self.layers[i];
            if let Some(p) = &au.params {
                l.area = p.width as u64 * p.height as u64;
                l.codec = Some(Arc::new(Codec::H264(p.clone())));
            }
            if l.codec.is_none() {
                return Placement::Drop;
            }
            l.last_frame = Some(now);
            if au.keyframe {
                l.requests.keyframe();
            }
        }
        let first = *self.first_frame.get_or_insert(now);
        let ranked = self.ranked(now);
        let best = ranked[0];
        if self.primary.is_none() {
            let all_here =
                self.layers.len() >= self.expected && self.layers.iter().all(|l| l.codec.is_some());
            if !all_here && now.saturating_duration_since(first) < SETTLE {
                return Placement::Drop;
            }
        }
        if self.primary != Some(best) {
            // A better rid (or the only live one, when layer 0 stalled) takes layer 0 at its
            // next keyframe; ask for one.
            if i == best && au.keyframe {
                self.primary = Some(best);
            } else {
                self.layers[best].requests.want();
            }
        }
        if self.primary == Some(i) {
            if au.keyframe {
                self.primary_key_at = Some(now);
            }
            let codec = self.layers[i].codec.clone();
            let changed = !match (&codec, &self.primary_codec) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if changed {
                self.primary_codec = codec.clone();
                return Placement::Primary {
                    codec: codec.map(|c| (*c).clone()),
                };
            }
            return Placement::Primary { codec: None };
        }
        if self.primary.is_none() {
            return Placement::Drop;
        }
        let n = 1 + ranked
            .iter()
            .filter(|&&x| Some(x) != self.primary)
            .position(|&x| x == i)
            .unwrap_or(usize::MAX - 1);
        match (n < MAX_LAYERS, &self.layers[i].codec) {
            (true, Some(c)) => Placement::Layer(n as u8, c.clone()),
            _ => Placement::Drop,
        }
    }

    /// Viewers asked for keyframes on the layers in `mask` (bit n = layer n).
    pub fn want_keyframes(&mut self, mask: u32, now: Instant) {
        for n in 0..MAX_LAYERS {
            if mask & (1 << n) != 0 {
                if let Some(i) = self.slot_of_layer(n, now) {
                    self.layers[i].requests.want();
                }
            }
        }
    }

    /// Rids to send a keyframe request for now (a viewer asked, the assembler lost frames, or
    /// layer 0's schedule), paced per rid by [`KeyframeRequests`]. Marks them as requested.
    pub fn due_requests(&mut self, now: Instant) -> Vec<Option<Rid>> {
        if self.scheduled_key_at().is_some_and(|t| t <= now) {
            if let Some(p) = self.primary {
                self.layers[p].requests.want();
            }
        }
        let mut out = Vec::new();
        for l in self.layers.iter_mut() {
            if l.h264.wants_keyframe() {
                l.requests.want();
            }
            if l.requests.poll(now) {
                out.push(l.rid);
            }
        }
        out
    }

    /// When the next paced request may go out (None: nothing pending); `due` stands for "at
    /// once" (any instant not in the future), so this code never reads the clock.
    pub fn next_request_at(&self, due: Instant) -> Option<Instant> {
        let wanted = |l: &RidLayer| {
            let mut r = l.requests;
            if l.h264.wants_keyframe() {
                r.want();
            }
            r
        };
        let asked = self
            .layers
            .iter()
            .filter_map(|l| wanted(l).next_at(due))
            .min();
        // The schedule, but never sooner than the policy allows for layer 0.
        let scheduled = self.scheduled_key_at().and_then(|t| {
            let mut r = self.layers[self.primary?].requests;
            r.want();
            Some(r.next_at(due).map_or(t, |l| t.max(l)))
        });
        match (asked, scheduled) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::control::KEYFRAME_WAIT;
    use crate::media::H264Params;
    use bytes::Bytes;

    fn params(w: u32, h: u32) -> H264Params {
        H264Params {
            avcc: Bytes::from(vec![w as u8]),
            sps: vec![Bytes::from(vec![0x67, w as u8])],
            pps: vec![Bytes::from_static(&[0x68])],
            profile_idc: 0x42,
            constraint_flags: 0xc0,
            level_idc: 0x1f,
            width: w,
            height: h,
            nalu_length_size: 4,
        }
    }

    fn au(key: bool, p: Option<H264Params>) -> AccessUnit {
        AccessUnit {
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            keyframe: key,
            params: p,
        }
    }

    fn rid(s: &str) -> Option<Rid> {
        Some(Rid::from(s))
    }

    #[test]
    fn single_rid_is_the_primary_from_its_first_keyframe() {
        let mut s = LayerSet::new(0, None);
        let t = Instant::now();
        let i = s.slot(None).unwrap();
        match s.place(i, &au(true, Some(params(320, 240))), t) {
            Placement::Primary {
                codec: Some(Codec::H264(p)),
            } => assert_eq!(p.width, 320),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.place(i, &au(false, None), t),
            Placement::Primary { codec: None }
        );
    }

    #[test]
    fn rids_rank_by_area_and_layer_zero_waits_for_all_offered() {
        let mut s = LayerSet::new(3, None);
        let t = Instant::now();
        let l = s.slot(rid("l")).unwrap();
        let h = s.slot(rid("h")).unwrap();
        let m = s.slot(rid("m")).unwrap();
        // Only "l" so far: held back while the others may still come.
        assert_eq!(
            s.place(l, &au(true, Some(params(160, 120))), t),
            Placement::Drop
        );
        assert_eq!(
            s.place(m, &au(true, Some(params(640, 360))), t),
            Placement::Drop
        );
        assert!(matches!(
            s.place(h, &au(true, Some(params(1280, 720))), t),
            Placement::Primary { codec: Some(_) }
        ));
        match s.place(m, &au(false, None), t) {
            Placement::Layer(1, c) => assert!(matches!(&*c, Codec::H264(p) if p.width == 640)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.place(l, &au(false, None), t),
            Placement::Layer(2, _)
        ));
        // Viewers of layer 2 ask for a keyframe: that is rid "l" (the others were never fed
        // through their assemblers here, so they want one too).
        s.want_keyframes(1 << 2, t);
        assert!(s.due_requests(t).contains(&rid("l")));
        // A request waiting for its keyframe absorbs new wants, and is repeated when the
        // keyframe does not come.
        s.want_keyframes(1 << 2, t);
        assert!(s.due_requests(t + Duration::from_millis(100)).is_empty());
        assert!(s.due_requests(t + Duration::from_millis(600)).is_empty());
        assert!(s.due_requests(t + KEYFRAME_WAIT).contains(&rid("l")));
    }

    #[test]
    fn settle_time_lets_a_partial_set_start() {
        let mut s = LayerSet::new(3, None);
        let t = Instant::now();
        let m = s.slot(rid("m")).unwrap();
        assert_eq!(
            s.place(m, &au(true, Some(params(640, 360))), t),
            Placement::Drop
        );
        let later = t + SETTLE + Duration::from_millis(1);
        assert!(matches!(
            s.place(m, &au(true, None), later),
            Placement::Primary { codec: Some(_) }
        ));
    }

    #[test]
    fn layer_zero_moves_only_on_a_keyframe_and_when_the_top_rid_stops() {
        let mut s = LayerSet::new(2, None);
        let t = Instant::now();
        let h = s.slot(rid("h")).unwrap();
        let l = s.slot(rid("l")).unwrap();
        // "h" arrives while "l" is still expected: held back, and taken at its next keyframe.
        assert_eq!(
            s.place(h, &au(true, Some(params(1280, 720))), t),
            Placement::Drop
        );
        assert_eq!(
            s.place(l, &au(true, Some(params(320, 180))), t),
            Placement::Drop
        );
        assert!(matches!(
            s.place(h, &au(true, None), t),
            Placement::Primary { codec: Some(_) }
        ));
        assert!(matches!(
            s.place(h, &au(false, None), t),
            Placement::Primary { codec: None }
        ));
        // "h" goes quiet: "l" is the best active rid, but takes layer 0 only at its keyframe.
        let t2 = t + ACTIVE_WINDOW + Duration::from_millis(10);
        // Until then "l" stays layer 1 for its viewers.
        assert!(matches!(
            s.place(l, &au(false, None), t2),
            Placement::Layer(1, _)
        ));
        assert!(s.due_requests(t2).contains(&rid("l")));
        match s.place(l, &au(true, None), t2) {
            Placement::Primary {
                codec: Some(Codec::H264(p)),
            } => assert_eq!(p.width, 320),
            other => panic!("{other:?}"),
        }
        // "h" comes back: it is a lower layer until its keyframe, then layer 0 again.
        let t3 = t2 + Duration::from_millis(10);
        assert!(matches!(
            s.place(h, &au(false, None), t3),
            Placement::Layer(1, _)
        ));
        assert!(matches!(
            s.place(h, &au(true, None), t3),
            Placement::Primary { codec: Some(_) }
        ));
        assert!(matches!(
            s.place(l, &au(false, None), t3),
            Placement::Layer(1, _)
        ));
    }

    #[test]
    fn layer_zero_gets_a_keyframe_request_on_schedule() {
        let mut s = LayerSet::new(0, Some(Duration::from_secs(2)));
        let t = Instant::now();
        let i = s.slot(None).unwrap();
        s.place(i, &au(true, Some(params(320, 240))), t);
        s.layer_mut(i).h264 = started_assembler();
        assert!(s.due_requests(t + Duration::from_secs(1)).is_empty());
        assert_eq!(
            s.next_request_at(t),
            Some(t + Duration::from_secs(2)),
            "next scheduled request"
        );
        let t2 = t + Duration::from_millis(2100);
        assert_eq!(s.due_requests(t2), vec![None]);
        // Not again before the keyframe arrives and the interval passes once more.
        assert!(s.due_requests(t2 + Duration::from_millis(100)).is_empty());
        s.place(i, &au(true, None), t2 + Duration::from_millis(150));
        assert!(s.due_requests(t2 + Duration::from_secs(1)).is_empty());
        assert_eq!(s.due_requests(t2 + Duration::from_millis(2200)), vec![None]);
    }

    /// An assembler that has seen SPS, PPS and an IDR (so it does not want a keyframe).
    fn started_assembler() -> H264Assembler {
        let mut a = H264Assembler::new();
        let mut au = Vec::new();
        for nal in [SPS, PPS, &[0x65, 0x88, 0x84, 0x00][..]] {
            au.extend_from_slice(&[0, 0, 0, 1]);
            au.extend_from_slice(nal);
        }
        a.push(&au).expect("IDR").expect("an access unit");
        assert!(!a.wants_keyframe());
        a
    }

    // libx264 baseline 320x240.
    const SPS: &[u8] = &[
        0x67, 0x42, 0xc0, 0x0d, 0xd9, 0x01, 0x41, 0xfb, 0x01, 0x10, 0x00, 0x00, 0x03, 0x00, 0x10,
        0x00, 0x00, 0x03, 0x03, 0xc0, 0xf1, 0x42, 0xa4, 0x80,
    ];
    const PPS: &[u8] = &[0x68, 0xcb, 0x83, 0xcb, 0x20];
}
