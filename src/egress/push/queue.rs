//! Sans-IO per-destination send queue: bounded by bytes and by frames, drop-to-keyframe when the
//! destination is slower than the stream, keyframe starts with sequence headers, and timestamps
//! that never go back, not even across reconnects.
//!
//! The fan-out thread pushes shared tags ([`SendQueue::push`]); the destination's connection task
//! pops them ([`SendQueue::pop`]). The queue only accepts frames while a connection is live
//! ([`SendQueue::start`] … [`SendQueue::stop`]): a destination that is connecting or backing off
//! never accumulates a stale backlog, and a new connection starts from the stream's current GOP
//! (or the next keyframe), never from what was queued for the previous one.

use std::collections::VecDeque;
use std::sync::Arc;

use super::flv::{FlvTag, Headers};
use crate::media::TrackKind;

/// Bounds of one destination's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// Tag payload bytes queued at most.
    pub max_bytes: usize,
    /// Tags queued at most.
    pub max_frames: usize,
}

impl Default for QueueLimits {
    fn default() -> Self {
        // 8 MiB is 16 s of a 4 Mb/s program, and holds a 2 s GOP snapshot up to ~30 Mb/s.
        Self {
            max_bytes: 8 << 20,
            max_frames: 2048,
        }
    }
}

/// What a destination sends, in order.
#[derive(Clone, Debug)]
pub enum Item {
    /// Sequence headers (and metadata) of a publisher session; sent before its first frame.
    Headers(Arc<Headers>),
    Tag(Arc<FlvTag>),
}

/// What [`SendQueue::push`] did with a tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// No live connection: nothing is kept for later.
    NotAccepting,
    /// At or before what this destination already has (a GOP replay, or a timestamp going back).
    Stale,
    /// Waiting for a keyframe to (re)start on.
    WaitingForKeyframe,
    /// The queue is full (or was, and the next keyframe has not come yet): lost.
    Dropped,
}

fn idx(k: TrackKind) -> usize {
    match k {
        TrackKind::Video => 0,
        TrackKind::Audio => 1,
    }
}

#[derive(Debug)]
pub struct SendQueue {
    limits: QueueLimits,
    items: VecDeque<Item>,
    /// Tag bytes in `items`.
    bytes: usize,
    /// Tags in `items`.
    frames: usize,
    accepting: bool,
    /// Over a limit: dropping until the next keyframe, where the backlog is discarded.
    lagging: bool,
    /// Nothing passes before a keyframe (connection start, new sequence headers).
    need_sync: bool,
    /// The stream's current headers (latest session seen).
    headers: Option<Arc<Headers>>,
    /// Newest dts queued per track on this connection.
    last_dts: [Option<i64>; 2],
    /// Newest dts handed to the connection per track, over the destination's whole life: a new
    /// connection never sends anything at or before it.
    sent_dts: [Option<i64>; 2],
    /// Frames lost to a full queue.
    dropped: u64,
}

impl SendQueue {
    pub fn new(limits: QueueLimits) -> Self {
        Self {
            limits,
            items: VecDeque::new(),
            bytes: 0,
            frames: 0,
            accepting: false,
            lagging: false,
            need_sync: true,
            headers: None,
            last_dts: [None, None],
            sent_dts: [None, None],
            dropped: 0,
        }
    }

    pub fn accepting(&self) -> bool {
        self.accepting
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len_frames(&self) -> usize {
        self.frames
    }

    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    pub fn headers(&self) -> Option<&Arc<Headers>> {
        self.headers.as_ref()
    }

    fn sync_point(&self, tag: &FlvTag) -> bool {
        tag.keyframe
            || (tag.kind == TrackKind::Audio
                && !self.headers.as_ref().is_some_and(|h| h.has_video()))
    }

    /// A new publisher session (or codec change). Older sessions are ignored: the queue may have
    /// started from a snapshot that is ahead of the fan-out's event stream.
    pub fn on_headers(&mut self, h: Arc<Headers>) -> bool {
        if self
            .headers
            .as_ref()
            .is_some_and(|cur| cur.session >= h.session)
        {
            return false;
        }
        self.headers = Some(h.clone());
        if self.accepting {
            self.items.push_back(Item::Headers(h));
            self.need_sync = true;
        }
        true
    }

    /// Offer one tag of the stream.
    pub fn push(&mut self, tag: Arc<FlvTag>) -> Pushed {
        if !self.accepting {
            return Pushed::NotAccepting;
        }
        let i = idx(tag.kind);
        if self.last_dts[i].is_some_and(|d| tag.dts <= d) {
            return Pushed::Stale;
        }
        if self.need_sync || self.lagging {
            if !self.sync_point(&tag) {
                if self.lagging {
                    self.dropped += 1;
                    return Pushed::Dropped;
                }
                return Pushed::WaitingForKeyframe;
            }
            if self.lagging {
                self.discard_backlog();
            }
            self.lagging = false;
            self.need_sync = false;
        }
        if self.frames + 1 > self.limits.max_frames
            || self.bytes + tag.len() > self.limits.max_bytes
        {
            self.lagging = true;
            self.dropped += 1;
            return Pushed::Dropped;
        }
        self.last_dts[i] = Some(tag.dts);
        self.bytes += tag.len();
        self.frames += 1;
        self.items.push_back(Item::Tag(tag));
        Pushed::Queued
    }

    /// Throw away queued tags (not headers: the connection still needs the latest ones).
    fn discard_backlog(&mut self) {
        let before = self.frames as u64;
        let mut last_headers = None;
        for it in self.items.drain(..) {
            if let Item::Headers(h) = it {
                last_headers = Some(h);
            }
        }
        if let Some(h) = last_headers {
            self.items.push_back(Item::Headers(h));
        }
        self.dropped += before;
        self.bytes = 0;
        self.frames = 0;
    }

    /// Next thing to send.
    pub fn pop(&mut self) -> Option<Item> {
        let it = self.items.pop_front()?;
        if let Item::Tag(t) = &it {
            self.bytes -= t.len();
            self.frames -= 1;
            let i = idx(t.kind);
            self.sent_dts[i] = Some(self.sent_dts[i].map_or(t.dts, |d| d.max(t.dts)));
        }
        Some(it)
    }

    /// A connection went live: queue the sequence headers, then the stream's current GOP
    /// (`snapshot`, oldest first, starting at a keyframe) as far as it is newer than anything this
    /// destination sent before; if it is not usable (empty, stale, too big), wait for the next
    /// keyframe instead. Returns the number of snapshot tags queued.
    pub fn start(&mut self, headers: Option<Arc<Headers>>, snapshot: Vec<Arc<FlvTag>>) -> usize {
        self.items.clear();
        self.bytes = 0;
        self.frames = 0;
        self.accepting = true;
        self.lagging = false;
        self.need_sync = true;
        self.last_dts = self.sent_dts;
        if let Some(h) = headers {
            if self
                .headers
                .as_ref()
                .is_none_or(|cur| cur.session <= h.session)
            {
                self.headers = Some(h);
            }
        }
        if let Some(h) = &self.headers {
            self.items.push_back(Item::Headers(h.clone()));
        }
        // Start at the first keyframe newer than what was sent before; keep what follows it.
        let fresh =
            |t: &FlvTag, floor: &[Option<i64>; 2]| floor[idx(t.kind)].is_none_or(|d| t.dts > d);
        let Some(first) = snapshot
            .iter()
            .position(|t| self.sync_point(t) && fresh(t, &self.sent_dts))
        else {
            return 0;
        };
        let take: Vec<_> = snapshot[first..]
            .iter()
            .filter(|t| fresh(t, &self.sent_dts))
            .cloned()
            .collect();
        let bytes: usize = take.iter().map(|t| t.len()).sum();
        if take.len() > self.limits.max_frames || bytes > self.limits.max_bytes {
            return 0;
        }
        let n = take.len();
        for t in take {
            let i = idx(t.kind);
            self.last_dts[i] = Some(self.last_dts[i].map_or(t.dts, |d| d.max(t.dts)));
            self.bytes += t.len();
            self.frames += 1;
            self.items.push_back(Item::Tag(t));
        }
        self.need_sync = false;
        // The snapshot's newest frames may still be on their way through the fan-out: `last_dts`
        // now makes them stale.
        n
    }

    /// The connection ended: nothing queued survives it.
    pub fn stop(&mut self) {
        self.items.clear();
        self.bytes = 0;
        self.frames = 0;
        self.accepting = false;
        self.lagging = false;
        self.need_sync = true;
        self.last_dts = self.sent_dts;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::push::chunk::ChunkedBody;

    fn headers(session: u64, video: bool) -> Arc<Headers> {
        Arc::new(Headers {
            session,
            video: video
                .then(|| ChunkedBody::new(TrackKind::Video, &[b"\x17\x00\x00\x00\x00avcc"])),
            audio: Some(ChunkedBody::new(TrackKind::Audio, &[b"\xaf\x00\x12\x10"])),
            metadata: Default::default(),
            refusal: None,
        })
    }

    fn v(dts: i64, key: bool, len: usize) -> Arc<FlvTag> {
        Arc::new(FlvTag {
            kind: TrackKind::Video,
            dts,
            keyframe: key,
            body: ChunkedBody::new(TrackKind::Video, &[&vec![0u8; len]]),
        })
    }

    fn a(dts: i64) -> Arc<FlvTag> {
        Arc::new(FlvTag {
            kind: TrackKind::Audio,
            dts,
            keyframe: false,
            body: ChunkedBody::new(TrackKind::Audio, &[b"\xaf\x01xx"]),
        })
    }

    fn drain(q: &mut SendQueue) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(it) = q.pop() {
            out.push(match it {
                Item::Headers(h) => format!("H{}", h.session),
                Item::Tag(t) => format!(
                    "{}{}{}",
                    if t.kind == TrackKind::Video { "v" } else { "a" },
                    t.dts,
                    if t.keyframe { "k" } else { "" }
                ),
            });
        }
        out
    }

    #[test]
    fn nothing_is_kept_while_not_live_and_start_is_on_a_keyframe() {
        let mut q = SendQueue::new(QueueLimits::default());
        q.on_headers(headers(1, true));
        assert_eq!(q.push(v(0, true, 10)), Pushed::NotAccepting);
        q.start(None, vec![]);
        assert_eq!(q.push(a(1)), Pushed::WaitingForKeyframe);
        assert_eq!(q.push(v(2, false, 10)), Pushed::WaitingForKeyframe);
        assert_eq!(q.push(v(3, true, 10)), Pushed::Queued);
        assert_eq!(q.push(a(4)), Pushed::Queued);
        assert_eq!(drain(&mut q), ["H1", "v3k", "a4"]);
    }

    #[test]
    fn snapshot_start_then_the_fanout_catches_up_without_replay() {
        let mut q = SendQueue::new(QueueLimits::default());
        q.on_headers(headers(1, true));
        // The snapshot holds v10k a11 v12; the fan-out still has a9 v10k a11 v12 in flight.
        let n = q.start(
            Some(headers(1, true)),
            vec![v(10, true, 5), a(11), v(12, false, 5)],
        );
        assert_eq!(n, 3);
        for t in [a(9), v(10, true, 5), a(11), v(12, false, 5)] {
            assert_eq!(q.push(t), Pushed::Stale);
        }
        assert_eq!(q.push(a(13)), Pushed::Queued);
        assert!(!q.on_headers(headers(1, true)), "same session: no repeat");
        assert_eq!(drain(&mut q), ["H1", "v10k", "a11", "v12", "a13"]);
    }

    #[test]
    fn a_reconnect_never_goes_back_in_time_nor_replays_the_old_queue() {
        let mut q = SendQueue::new(QueueLimits::default());
        q.on_headers(headers(1, true));
        q.start(None, vec![]);
        for t in [v(100, true, 5), a(101), v(102, false, 5), v(103, false, 5)] {
            q.push(t);
        }
        // Two tags went out, then the connection died with two still queued.
        q.pop();
        q.pop();
        q.pop();
        q.stop();
        assert_eq!(q.len_frames(), 0);
        // The GOP snapshot still starts at v100: too old for this destination.
        let n = q.start(
            None,
            vec![
                v(100, true, 5),
                a(101),
                v(102, false, 5),
                v(103, false, 5),
                a(104),
            ],
        );
        assert_eq!(n, 0);
        assert_eq!(q.push(v(105, false, 5)), Pushed::WaitingForKeyframe);
        assert_eq!(q.push(v(106, true, 5)), Pushed::Queued);
        assert_eq!(drain(&mut q), ["H1", "v106k"]);
        // A snapshot whose keyframe is newer than what was sent is used, from that keyframe.
        q.stop();
        let n = q.start(None, vec![v(110, true, 5), a(111), v(112, false, 5)]);
        assert_eq!(n, 3);
        assert_eq!(drain(&mut q), ["H1", "v110k", "a111", "v112"]);
    }

    #[test]
    fn a_slow_destination_drops_to_the_next_keyframe_and_stays_bounded() {
        let limits = QueueLimits {
            max_bytes: 1000,
            max_frames: 50,
        };
        let mut q = SendQueue::new(limits);
        q.on_headers(headers(1, true));
        q.start(None, vec![]);
        // Nobody pops: a stalled peer. 10 GOPs of 30 frames of 100 bytes.
        let mut dts = 0;
        for g in 0..10 {
            for f in 0..30 {
                q.push(v(dts, f == 0, 100));
                q.push(a(dts + 1));
                dts += 3;
                assert!(q.len_bytes() <= limits.max_bytes);
                assert!(q.len_frames() <= limits.max_frames);
            }
            let _ = g;
        }
        assert!(q.dropped() > 500, "{}", q.dropped());
        // The peer reads again: it gets the newest GOP start, not the oldest backlog.
        let out = drain(&mut q);
        assert_eq!(out[0], "H1");
        assert_eq!(out[1], format!("v{}k", 9 * 90), "{out:?}");
    }

    #[test]
    fn new_headers_mid_stream_wait_for_a_keyframe_and_old_sessions_are_ignored() {
        let mut q = SendQueue::new(QueueLimits::default());
        q.on_headers(headers(1, true));
        q.start(None, vec![]);
        q.push(v(1, true, 5));
        assert!(q.on_headers(headers(2, true)));
        assert_eq!(q.push(v(5, false, 5)), Pushed::WaitingForKeyframe);
        assert_eq!(q.push(v(6, true, 5)), Pushed::Queued);
        assert!(!q.on_headers(headers(1, true)));
        assert_eq!(drain(&mut q), ["H1", "v1k", "H2", "v6k"]);
    }

    #[test]
    fn audio_only_programs_start_on_any_audio_frame() {
        let mut q = SendQueue::new(QueueLimits::default());
        q.on_headers(headers(1, false));
        q.start(None, vec![a(3), a(4)]);
        assert_eq!(q.push(a(5)), Pushed::Queued);
        assert_eq!(drain(&mut q), ["H1", "a3", "a4", "a5"]);
    }

    #[test]
    fn an_oversized_snapshot_is_not_used() {
        let mut q = SendQueue::new(QueueLimits {
            max_bytes: 100,
            max_frames: 10,
        });
        q.on_headers(headers(1, true));
        assert_eq!(q.start(None, vec![v(1, true, 80), v(2, false, 80)]), 0);
        assert_eq!(q.push(v(3, true, 80)), Pushed::Queued);
    }
}
