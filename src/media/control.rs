//! Publisher control: the core's one way to ask a stream's current publisher for something.
//!
//! Every ingest hands the registry a [`PublisherControl`] when publishing begins
//! ([`crate::media::Registry::begin_publish`]); the stream holds it until that publisher leaves.
//! The API kicks through it ([`crate::media::Stream::kick`]), the SFU asks for keyframes of a
//! simulcast layer through it ([`crate::media::Stream::request_keyframe`]). What a request costs
//! on the wire is the ingest's business: RTMP cannot ask for keyframes, WHIP sends a PLI, paced
//! by the one policy here ([`KeyframeRequests`], after mediasoup's KeyFrameRequestManager).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What the core may ask of a stream's current publisher. Calls come from any thread and must
/// not block.
pub trait PublisherControl: Send + Sync {
    /// Leave: the publisher disconnects and its stream goes idle.
    fn kick(&self);
    /// Send a keyframe of simulcast layer `layer` (0: the stream's video track) soon. Best
    /// effort; a publisher that cannot be asked ignores it.
    fn request_keyframe(&self, layer: u8);
}

/// The control of a publisher that runs as a tokio task (RTMP, the demo loop): a kick wakes
/// [`KickSignal::kicked`]; keyframes cannot be requested over RTMP, so requests are ignored.
#[derive(Default)]
pub struct KickSignal {
    kicked: AtomicBool,
    notify: Notify,
}

impl KickSignal {
    /// Resolves once the publisher has been kicked (at once if it already was).
    pub async fn kicked(&self) {
        loop {
            let n = self.notify.notified();
            if self.kicked.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

impl PublisherControl for KickSignal {
    fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn request_keyframe(&self, _layer: u8) {}
}

/// Least time between two keyframe requests for one layer.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);
/// A request that brought no keyframe in this long is sent again (the PLI, or the keyframe,
/// may have been lost).
pub const KEYFRAME_WAIT: Duration = Duration::from_millis(1000);

/// The keyframe-request policy for one layer of a publisher, after mediasoup's
/// KeyFrameRequestManager: a wanted keyframe is requested at once unless a request went out
/// less than [`KEYFRAME_REQUEST_INTERVAL`] ago; a request still waiting for its keyframe
/// absorbs further wants and is repeated after [`KEYFRAME_WAIT`]; the keyframe clears it.
/// Sans-IO: `now` comes in, "send a request now" goes out.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyframeRequests {
    wanted: bool,
    /// The last request sent, while its keyframe has not arrived.
    waiting_since: Option<Instant>,
    last_sent: Option<Instant>,
}

impl KeyframeRequests {
    /// Someone (a viewer, a lost frame, the schedule) wants a keyframe.
    pub fn want(&mut self) {
        self.wanted = true;
    }

    /// A keyframe arrived: nothing is owed any more.
    pub fn keyframe(&mut self) {
        self.wanted = false;
        self.waiting_since = None;
    }

    /// When a request is due (None: nothing to ask for). `due` stands for "at once", so this
    /// never reads the clock.
    pub fn next_at(&self, due: Instant) -> Option<Instant> {
        let limit = |t: Option<Instant>| t.map_or(due, |s| s + KEYFRAME_REQUEST_INTERVAL);
        match self.waiting_since {
            Some(t) => Some((t + KEYFRAME_WAIT).max(limit(self.last_sent))),
            None if self.wanted => Some(limit(self.last_sent)),
            None => None,
        }
    }

    /// True when a request should be sent now; it is then counted as sent.
    pub fn poll(&mut self, now: Instant) -> bool {
        if self.next_at(now).is_none_or(|t| t > now) {
            return false;
        }
        self.wanted = false;
        self.waiting_since = Some(now);
        self.last_sent = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_paced_repeated_until_the_keyframe_and_cleared_by_it() {
        let t0 = Instant::now();
        let mut k = KeyframeRequests::default();
        assert!(!k.poll(t0), "nothing wanted, nothing sent");
        k.want();
        assert!(k.poll(t0));
        // Wants while the request waits for its keyframe are absorbed.
        k.want();
        assert!(!k.poll(t0 + Duration::from_millis(100)));
        assert!(!k.poll(t0 + KEYFRAME_WAIT - Duration::from_millis(1)));
        // No keyframe: asked again after the wait.
        assert_eq!(k.next_at(t0), Some(t0 + KEYFRAME_WAIT));
        assert!(k.poll(t0 + KEYFRAME_WAIT));
        // The keyframe clears it; a new want is still paced by the interval.
        let t1 = t0 + KEYFRAME_WAIT + Duration::from_millis(10);
        k.keyframe();
        assert_eq!(k.next_at(t1), None);
        assert!(!k.poll(t1 + Duration::from_secs(5)));
        k.want();
        assert!(!k.poll(t1));
        assert_eq!(
            k.next_at(t1),
            Some(t0 + KEYFRAME_WAIT + KEYFRAME_REQUEST_INTERVAL)
        );
        assert!(k.poll(t0 + KEYFRAME_WAIT + KEYFRAME_REQUEST_INTERVAL));
    }

    #[tokio::test]
    async fn a_kick_wakes_the_publisher_even_before_it_waits() {
        let k = std::sync::Arc::new(KickSignal::default());
        k.kick();
        tokio::time::timeout(Duration::from_secs(5), k.kicked())
            .await
            .expect("a kick before the wait is not lost");
        let k = std::sync::Arc::new(KickSignal::default());
        let k2 = k.clone();
        let t = tokio::spawn(async move { k2.kicked().await });
        tokio::task::yield_now().await;
        k.kick();
        tokio::time::timeout(Duration::from_secs(5), t)
            .await
            .expect("kicked in time")
            .unwrap();
    }
}
