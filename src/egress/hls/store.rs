//! The live window of every HLS stream, as the HTTP origin sees it: segments, parts and init
//! segments by reference, the playlists pre-rendered for the current window, and a version
//! channel that wakes blocked playlist and part requests when the window changes.
//!
//! The packager thread is the only writer; HTTP handlers only read.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use parking_lot::RwLock;
use tokio::sync::watch;

use super::playlist::{self, PartView, PlaylistView, SegmentView};
use super::segmenter::Output;

#[derive(Clone, Debug)]
pub struct Part {
    pub duration: f64,
    pub independent: bool,
    pub data: Bytes,
}

#[derive(Clone, Debug)]
pub struct Segment {
    pub msn: u64,
    pub parts: Vec<Part>,
    pub complete: bool,
    pub duration: f64,
    /// The whole segment (all parts), set when complete.
    pub data: Option<Bytes>,
    pub discontinuity: bool,
    pub program_date_time: SystemTime,
    pub init_version: u32,
    uri: String,
    part_uris: Vec<String>,
    map_uri: String,
}

#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    pub part_target_secs: f64,
    pub segment_target_secs: f64,
    pub window_segments: usize,
    pub retain_segments: usize,
}

impl StoreConfig {
    /// Parts after which the spec lets a server refuse a blocking request (Advance Part Limit).
    pub fn advance_part_limit(&self) -> u64 {
        if self.part_target_secs < 1.0 {
            (3.0 / self.part_target_secs).floor() as u64
        } else {
            3
        }
    }
}

/// Answer to "is what this blocking request waits for there yet?".
#[derive(Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The playlist holds the asked-for segment or part: answer now.
    Ready,
    /// Not yet (live, or idle with a publisher that may return): hold the request.
    Wait,
    /// The stream ended (EXT-X-ENDLIST): the blocking parameters are ignored and the playlist is
    /// answered as it is, without the asked-for part.
    Ended,
    /// Beyond what the spec lets a client ask for (400 at once, live or idle).
    TooFar(&'static str),
}

/// A media object lookup.
#[derive(Debug)]
pub enum Lookup {
    Found(Bytes),
    /// Will exist soon (the hinted part, the segment in progress): wait for a change.
    Pending,
    NotFound,
}

/// A media object name parsed from a URL.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Object {
    Init(u32),
    Segment(u64),
    Part(u64, usize),
}

impl Object {
    /// Parse `init{v}.mp4`, `seg{msn}.m4s`, `part{msn}.{i}.m4s`.
    pub fn parse(file: &str) -> Option<Object> {
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        if let Some(v) = file
            .strip_prefix("init")
            .and_then(|s| s.strip_suffix(".mp4"))
        {
            return Some(Object::Init(u32::try_from(num(v)?).ok()?));
        }
        if let Some(m) = file
            .strip_prefix("seg")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            return Some(Object::Segment(num(m)?));
        }
        if let Some(r) = file
            .strip_prefix("part")
            .and_then(|s| s.strip_suffix(".m4s"))
        {
            let (m, i) = r.split_once('.')?;
            return Some(Object::Part(num(m)?, usize::try_from(num(i)?).ok()?));
        }
        None
    }
}

pub struct Window {
    cfg: StoreConfig,
    gen: Arc<str>,
    segments: VecDeque<Segment>,
    /// Segments that left the playlist but stay downloadable for a while.
    retired: VecDeque<Segment>,
    inits: BTreeMap<u32, Bytes>,
    next_msn: u64,
    media_sequence: u64,
    discontinuity_sequence: u64,
    pending_discontinuity: bool,
    target_duration: u64,
    pub live: bool,
    pub ended: bool,
    playlist: Bytes,
    playlist_skip: Bytes,
    pub parts_total: u64,
    pub segments_total: u64,
    /// When the packager last changed this window (what a released blocking request waited for).
    pub updated_at: std::time::Instant,
}

impl Window {
    fn new(cfg: StoreConfig, gen: Arc<str>) -> Self {
        let mut w = Self {
            cfg,
            gen,
            segments: VecDeque::new(),
            retired: VecDeque::new(),
            inits: BTreeMap::new(),
            next_msn: 0,
            media_sequence: 0,
            discontinuity_sequence: 0,
            pending_discontinuity: false,
            target_duration: cfg.segment_target_secs.ceil().max(1.0) as u64,
            live: false,
            ended: false,
            playlist: Bytes::new(),
            playlist_skip: Bytes::new(),
            parts_total: 0,
            segments_total: 0,
            updated_at: std::time::Instant::now(),
        };
        w.render();
        w
    }

    /// A playlist can be served once it lists at least one part.
    pub fn has_media(&self) -> bool {
        self.segments.iter().any(|s| !s.parts.is_empty())
    }

    pub fn playlist(&self, skip: bool) -> Bytes {
        if skip {
            self.playlist_skip.clone()
        } else {
            self.playlist.clone()
        }
    }

    pub fn target_duration(&self) -> u64 {
        self.target_duration
    }

    pub fn media_sequence(&self) -> u64 {
        self.media_sequence
    }

    pub fn listed_segments(&self) -> usize {
        self.segments.len()
    }

    /// Bytes held by this window (listed and retired media, inits).
    pub fn bytes_held(&self) -> usize {
        let seg = |s: &Segment| {
            s.parts.iter().map(|p| p.data.len()).sum::<usize>()
                + s.data.as_ref().map_or(0, |d| d.len())
        };
        self.segments.iter().map(seg).sum::<usize>()
            + self.retired.iter().map(seg).sum::<usize>()
            + self.inits.values().map(|b| b.len()).sum::<usize>()
    }

    fn last_msn(&self) -> u64 {
        self.segments.back().map_or(self.next_msn, |s| s.msn)
    }

    /// Blocking reload: is playlist state (msn, part) reached? `part` counts from 0.
    ///
    /// An idle stream (publisher away, may return) answers like a live one: its next part comes
    /// when the publisher does, so a request for it waits (and the hold ends in 503), and the
    /// far-future limits still apply. Only an ended stream ignores the blocking parameters.
    pub fn readiness(&self, msn: u64, part: Option<u64>) -> Readiness {
        if self.ended {
            return match self.reached(msn, part) {
                true => Readiness::Ready,
                false => Readiness::Ended,
            };
        }
        let last = self.last_msn();
        if msn > last.saturating_add(2) {
            return Readiness::TooFar("_HLS_msn is more than two segments beyond the playlist");
        }
        if let (Some(p), Some(seg)) = (part, self.segments.back()) {
            if msn == seg.msn
                && !seg.complete
                && p >= seg.parts.len() as u64 + self.cfg.advance_part_limit()
            {
                return Readiness::TooFar("_HLS_part is beyond the advance part limit");
            }
        }
        if self.reached(msn, part) {
            Readiness::Ready
        } else {
            Readiness::Wait
        }
    }

    /// Does the playlist hold segment `msn` (complete) or its part `part`, or anything later?
    fn reached(&self, msn: u64, part: Option<u64>) -> bool {
        if msn < self.media_sequence {
            return true;
        }
        for seg in self.segments.iter().rev() {
            if seg.msn > msn && !seg.parts.is_empty() {
                return true;
            }
            if seg.msn == msn {
                return match part {
                    None => seg.complete,
                    Some(p) => (seg.parts.len() as u64) > p,
                };
            }
            if seg.msn < msn {
                break;
            }
        }
        false
    }

    fn find(&self, msn: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .chain(self.retired.iter())
            .find(|s| s.msn == msn)
    }

    pub fn lookup(&self, obj: Object) -> Lookup {
        match obj {
            Object::Init(v) => self
                .inits
                .get(&v)
                .cloned()
                .map_or(Lookup::NotFound, Lookup::Found),
            Object::Segment(m) => match self.find(m) {
                Some(s) => match &s.data {
                    Some(d) => Lookup::Found(d.clone()),
                    None if self.live => Lookup::Pending,
                    None => Lookup::NotFound,
                },
                None if self.live && m == self.next_msn => Lookup::Pending,
                None => Lookup::NotFound,
            },
            Object::Part(m, i) => {
                if let Some(s) = self.find(m) {
                    if let Some(p) = s.parts.get(i) {
                        return Lookup::Found(p.data.clone());
                    }
                    // The hinted part (or the one after it) of the open segment.
                    if self.live && !s.complete && i <= s.parts.len() + 1 {
                        return Lookup::Pending;
                    }
                    return Lookup::NotFound;
                }
                if self.live && m == self.next_msn && i == 0 {
                    return Lookup::Pending;
                }
                Lookup::NotFound
            }
        }
    }

    fn open_segment(&mut self, discontinuity: bool, pdt: SystemTime, init_version: u32) {
        let msn = self.next_msn;
        self.next_msn += 1;
        self.segments.push_back(Segment {
            msn,
            parts: Vec::new(),
            complete: false,
            duration: 0.0,
            data: None,
            discontinuity,
            program_date_time: pdt,
            init_version,
            uri: format!("{}/seg{msn}.m4s", self.gen),
            part_uris: Vec::new(),
            map_uri: format!("{}/init{init_version}.mp4", self.gen),
        });
    }

    fn close_segment(&mut self) {
        if let Some(seg) = self.segments.back_mut() {
            if !seg.complete {
                let len: usize = seg.parts.iter().map(|p| p.data.len()).sum();
                let mut buf = BytesMut::with_capacity(len);
                for p in &seg.parts {
                    buf.extend_from_slice(&p.data);
                }
                seg.data = Some(buf.freeze());
                seg.complete = true;
                self.segments_total += 1;
                let d = seg.duration;
                // TARGETDURATION may only grow: a GOP longer than the target makes longer segments.
                let rounded = d.round().max(1.0) as u64;
                if rounded > self.target_duration {
                    self.target_duration = rounded;
                }
            }
        }
        // Slide the window: listed → retired → gone.
        while self.segments.len() > self.cfg.window_segments {
            let old = self.segments.pop_front().unwrap();
            self.media_sequence = self.segments.front().map_or(self.next_msn, |s| s.msn);
            if let Some(next) = self.segments.front() {
                if next.discontinuity {
                    self.discontinuity_sequence += 1;
                }
            }
            self.retired.push_back(old);
        }
        while self.retired.len() > self.cfg.retain_segments {
            self.retired.pop_front();
        }
        // Old init segments no longer referenced by anything kept.
        if let Some(min_v) = self
            .retired
            .iter()
            .chain(self.segments.iter())
            .map(|s| s.init_version)
            .min()
        {
            self.inits.retain(|v, _| *v >= min_v);
        }
    }

    pub fn apply(&mut self, out: &Output) {
        match out {
            Output::Init { version, data } => {
                self.inits.insert(*version, data.clone());
                self.live = true;
                self.ended = false;
            }
            Output::Part(p) => {
                self.live = true;
                let need_new = p.segment_start || self.segments.back().is_none_or(|s| s.complete);
                if need_new {
                    let disc = (p.discontinuity || self.pending_discontinuity)
                        && !self.segments.is_empty();
                    self.pending_discontinuity = false;
                    self.open_segment(disc, p.wallclock, p.init_version);
                }
                let gen = self.gen.clone();
                let seg = self.segments.back_mut().unwrap();
                let idx = seg.parts.len();
                seg.part_uris
                    .push(format!("{gen}/part{}.{idx}.m4s", seg.msn));
                seg.parts.push(Part {
                    duration: p.duration,
                    independent: p.independent,
                    data: p.data.clone(),
                });
                seg.duration += p.duration;
                self.parts_total += 1;
            }
            Output::SegmentEnd => self.close_segment(),
            Output::Idle => {
                self.close_segment();
                self.live = false;
                self.pending_discontinuity = true;
            }
            Output::Ended => {
                self.close_segment();
                self.live = false;
                self.ended = true;
            }
        }
    }

    /// Render both playlist forms for the current window.
    pub fn render(&mut self) {
        let part_list_from = {
            // List parts for segments within three target durations of the end.
            let mut acc = 0.0;
            let mut from = self.segments.len();
            for (i, s) in self.segments.iter().enumerate().rev() {
                if acc >= 3.0 * self.target_duration as f64 {
                    break;
                }
                acc += s.duration;
                from = i;
            }
            from
        };
        let hint = if self.ended || !self.live {
            None
        } else {
            Some(match self.segments.back() {
                Some(s) if !s.complete => {
                    format!("{}/part{}.{}.m4s", self.gen, s.msn, s.parts.len())
                }
                _ => format!("{}/part{}.0.m4s", self.gen, self.next_msn),
            })
        };
        let view = PlaylistView {
            target_duration: self.target_duration,
            part_target: self.cfg.part_target_secs,
            media_sequence: self.media_sequence,
            discontinuity_sequence: self.discontinuity_sequence,
            segments: self
                .segments
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.parts.is_empty())
                .map(|(i, s)| SegmentView {
                    msn: s.msn,
                    uri: &s.uri,
                    duration: s.duration,
                    discontinuity: s.discontinuity,
                    map_uri: &s.map_uri,
                    program_date_time: s.program_date_time,
                    parts: if i >= part_list_from {
                        s.parts
                            .iter()
                            .zip(&s.part_uris)
                            .map(|(p, uri)| PartView {
                                uri,
                                duration: p.duration,
                                independent: p.independent,
                            })
                            .collect()
                    } else {
                        Vec::new()
                    },
                    complete: s.complete,
                })
                .collect(),
            preload_hint: hint,
            ended: self.ended,
        };
        self.playlist = Bytes::from(playlist::render(&view, false));
        self.playlist_skip = Bytes::from(playlist::render(&view, true));
    }
}

/// One stream's window plus its change notification.
pub struct HlsStream {
    pub name: Arc<str>,
    pub window: RwLock<Window>,
    version: watch::Sender<u64>,
    /// Playlist clients seen recently, by address (an estimate: behind a CDN it counts edges).
    clients: parking_lot::Mutex<HashMap<std::net::IpAddr, std::time::Instant>>,
}

/// Most client addresses remembered per stream for the viewer estimate.
const MAX_TRACKED_CLIENTS: usize = 100_000;

impl HlsStream {
    /// Note a playlist request from `ip` (for the viewers-by-path estimate).
    pub fn saw_client(&self, ip: std::net::IpAddr, now: std::time::Instant) {
        let mut c = self.clients.lock();
        if c.len() >= MAX_TRACKED_CLIENTS && !c.contains_key(&ip) {
            let horizon = std::time::Duration::from_secs(10);
            c.retain(|_, t| now.duration_since(*t) < horizon);
            if c.len() >= MAX_TRACKED_CLIENTS {
                return;
            }
        }
        c.insert(ip, now);
    }

    /// Distinct client addresses that fetched a playlist in the last `within`.
    pub fn recent_clients(&self, now: std::time::Instant, within: std::time::Duration) -> usize {
        let mut c = self.clients.lock();
        c.retain(|_, t| now.duration_since(*t) < within);
        c.len()
    }

    /// Subscribe to window changes. Subscribe before checking the window to never miss a wake-up.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Apply packager output, re-render, wake waiters.
    pub fn apply(&self, outs: &[Output]) {
        if outs.is_empty() {
            return;
        }
        {
            let mut w = self.window.write();
            for o in outs {
                w.apply(o);
            }
            w.render();
            w.updated_at = std::time::Instant::now();
        }
        self.version.send_modify(|v| *v += 1);
    }
}

/// Every stream's HLS window.
pub struct HlsStore {
    pub cfg: StoreConfig,
    /// Generation token in every media URI (see ARCHITECTURE.md).
    pub gen: Arc<str>,
    streams: RwLock<HashMap<Arc<str>, Arc<HlsStream>>>,
}

fn base36(mut n: u64) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut s = Vec::new();
    loop {
        s.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    s.reverse();
    String::from_utf8(s).unwrap()
}

impl HlsStore {
    pub fn new(cfg: StoreConfig) -> Arc<Self> {
        let ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        Arc::new(Self {
            cfg,
            gen: Arc::from(base36(ms)),
            streams: RwLock::new(HashMap::new()),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<HlsStream>> {
        self.streams.read().get(name).cloned()
    }

    pub fn get_or_create(&self, name: &Arc<str>) -> Arc<HlsStream> {
        if let Some(s) = self.get(name) {
            return s;
        }
        self.streams
            .write()
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(HlsStream {
                    name: name.clone(),
                    window: RwLock::new(Window::new(self.cfg, self.gen.clone())),
                    version: watch::channel(0).0,
                    clients: parking_lot::Mutex::new(HashMap::new()),
                })
            })
            .clone()
    }

    pub fn remove(&self, name: &str) {
        self.streams.write().remove(name);
    }

    pub fn list(&self) -> Vec<Arc<HlsStream>> {
        self.streams.read().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::hls::segmenter::PartOut;

    fn cfg() -> StoreConfig {
        StoreConfig {
            part_target_secs: 0.2,
            segment_target_secs: 1.0,
            window_segments: 3,
            retain_segments: 2,
        }
    }

    fn part(seg_start: bool, disc: bool) -> Output {
        Output::Part(PartOut {
            data: Bytes::from_static(b"moofmdat"),
            duration: 0.2,
            independent: seg_start,
            segment_start: seg_start,
            discontinuity: disc,
            init_version: 1,
            wallclock: SystemTime::now(),
        })
    }

    fn feed(w: &mut Window, segments: usize) {
        for _ in 0..segments {
            for i in 0..5 {
                w.apply(&part(i == 0, false));
            }
            w.apply(&Output::SegmentEnd);
        }
        w.render();
    }

    #[test]
    fn object_names() {
        assert_eq!(Object::parse("init3.mp4"), Some(Object::Init(3)));
        assert_eq!(Object::parse("seg12.m4s"), Some(Object::Segment(12)));
        assert_eq!(Object::parse("part12.4.m4s"), Some(Object::Part(12, 4)));
        for bad in [
            "seg.m4s",
            "seg-1.m4s",
            "part1.m4s",
            "segx.m4s",
            "seg99999999999999999999999.m4s",
            "../x",
        ] {
            assert_eq!(Object::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn readiness_and_limits() {
        let mut w = Window::new(cfg(), "g".into());
        w.apply(&Output::Init {
            version: 1,
            data: Bytes::from_static(b"init"),
        });
        feed(&mut w, 2);
        w.apply(&part(true, false));
        w.apply(&part(false, false));
        w.render();
        // Segments 0,1 complete; 2 has parts 0 and 1.
        assert_eq!(w.readiness(1, None), Readiness::Ready);
        assert_eq!(w.readiness(2, Some(1)), Readiness::Ready);
        assert_eq!(w.readiness(2, Some(2)), Readiness::Wait);
        assert_eq!(w.readiness(2, None), Readiness::Wait);
        assert_eq!(w.readiness(4, None), Readiness::Wait);
        assert!(matches!(w.readiness(5, None), Readiness::TooFar(_)));
        assert!(matches!(w.readiness(2, Some(2 + 15)), Readiness::TooFar(_)));
        assert!(matches!(w.lookup(Object::Part(2, 2)), Lookup::Pending));
        assert!(matches!(w.lookup(Object::Part(2, 9)), Lookup::NotFound));
        assert!(matches!(w.lookup(Object::Segment(2)), Lookup::Pending));
        assert!(matches!(w.lookup(Object::Segment(1)), Lookup::Found(_)));
        let pl = String::from_utf8(w.playlist(false).to_vec()).unwrap();
        assert!(
            pl.contains("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"g/part2.2.m4s\""),
            "{pl}"
        );
    }

    #[test]
    fn window_slides_and_retired_segments_stay_downloadable() {
        let mut w = Window::new(cfg(), "g".into());
        w.apply(&Output::Init {
            version: 1,
            data: Bytes::from_static(b"init"),
        });
        feed(&mut w, 10);
        assert_eq!(w.listed_segments(), 3);
        assert_eq!(w.media_sequence(), 7);
        assert!(matches!(w.lookup(Object::Segment(5)), Lookup::Found(_)));
        assert!(matches!(w.lookup(Object::Part(6, 3)), Lookup::Found(_)));
        assert!(matches!(w.lookup(Object::Segment(4)), Lookup::NotFound));
        let held = w.bytes_held();
        feed(&mut w, 50);
        assert_eq!(w.bytes_held(), held, "memory must stay flat");
    }

    #[test]
    fn idle_stream_holds_blocking_requests_and_keeps_the_limits() {
        let mut w = Window::new(cfg(), "g".into());
        w.apply(&Output::Init {
            version: 1,
            data: Bytes::from_static(b"init"),
        });
        feed(&mut w, 2);
        w.apply(&part(true, false));
        w.apply(&Output::Idle);
        w.render();
        // Segments 0..=2 complete (2 closed early by the idle); the publisher may come back.
        assert!(!w.live && !w.ended);
        assert_eq!(w.readiness(2, Some(0)), Readiness::Ready);
        assert_eq!(
            w.readiness(3, Some(0)),
            Readiness::Wait,
            "not there while idle"
        );
        assert_eq!(w.readiness(3, None), Readiness::Wait);
        assert!(matches!(w.readiness(5, None), Readiness::TooFar(_)));
        assert!(matches!(w.readiness(5000, Some(0)), Readiness::TooFar(_)));
        // The publisher returns: the held part appears.
        w.apply(&part(true, false));
        w.render();
        assert_eq!(w.readiness(3, Some(0)), Readiness::Ready);
        // Ended: the blocking parameters are ignored, far future included.
        w.apply(&Output::Ended);
        w.render();
        assert_eq!(w.readiness(3, Some(0)), Readiness::Ready);
        assert_eq!(w.readiness(4, Some(0)), Readiness::Ended);
        assert_eq!(w.readiness(5000, None), Readiness::Ended);
    }

    #[test]
    fn publisher_return_marks_discontinuity() {
        let mut w = Window::new(cfg(), "g".into());
        w.apply(&Output::Init {
            version: 1,
            data: Bytes::from_static(b"init"),
        });
        feed(&mut w, 2);
        w.apply(&Output::Idle);
        w.render();
        assert!(!String::from_utf8_lossy(&w.playlist(false)).contains("PRELOAD-HINT"));
        feed(&mut w, 1);
        let pl = String::from_utf8(w.playlist(false).to_vec()).unwrap();
        assert_eq!(pl.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{pl}");
    }
}
