//! WHIP publishers on the SFU workers: the POST that answers a publisher's offer and hands its
//! peer (role [`WhipPublisher`]) to the least-loaded worker. Lives with the workers that host
//! it, so `ingest::whip` (the publisher role itself) never imports the SFU.

use std::sync::Arc;
use std::time::Instant;

use super::{ControlMsg, SfuHandle};
use crate::ingest::whip::{
    build_publisher_rtc, media_mids, simulcast_rids, WhipControl, WhipError, WhipPublisher,
};
use crate::media::Registry;
use crate::webrtc::admission::SlotKind;
use crate::webrtc::offer::{self, Role};
use crate::webrtc::peer::{add_candidates, Peer};

/// Result of a successful WHIP POST.
pub struct WhipCreated {
    /// Session URL id (`/whip/{stream}/{session_id}`).
    pub session_id: String,
    pub answer: String,
    pub etag: String,
}

impl SfuHandle {
    /// WHIP POST: check the offer, answer it on the least-loaded SFU worker, take the stream's
    /// publisher slot and hand the peer to the worker.
    pub fn create_publisher(
        &self,
        registry: &Arc<Registry>,
        stream: &str,
        offer: &str,
        peer: String,
        ip: std::net::IpAddr,
    ) -> Result<WhipCreated, WhipError> {
        let checked = offer::check(offer, Role::Publisher)?;
        if !crate::media::stream::valid_stream_name(stream) {
            return Err(WhipError::BadName(stream.into()));
        }
        let mids = checked.mids;
        // A publisher's handshake costs a worker what a viewer's does: it takes a pending slot
        // (not a viewer slot, and it is never refused by load: that would cut every viewer off).
        let (slot, worker) = self
            .admit(ip, SlotKind::Publisher)
            .map_err(WhipError::Refused)?;
        let now = Instant::now();
        let (mut rtc, creds) = build_publisher_rtc(self.dtls_cert(), now);
        add_candidates(&mut rtc, &worker.candidates, &worker.tcp_candidates);
        let answer = rtc
            .sdp_api()
            .accept_offer(checked.sdp)
            .map_err(|e| WhipError::BadSdp(e.to_string()))?;
        let (video, audio) = media_mids(&rtc, &mids);
        if video.is_none() {
            return Err(WhipError::Unsupported(
                "the offer has no usable H.264 video m-line".into(),
            ));
        }
        // The core reaches the publisher (kick, keyframe requests) through its worker.
        let control = Arc::new(WhipControl::new(worker.waker.clone()));
        let publisher = registry.begin_publish(stream, peer, control.clone())?;
        let ids = self.new_ids();
        let mut role = WhipPublisher::new(publisher, control);
        role.set_mids(video, audio);
        role.set_video(simulcast_rids(offer), self.cfg.whip_keyframe_interval_ms);
        let mut p = Peer::new(ids.id, Arc::from(stream), rtc, creds.ufrag, role, now);
        p.set_slot(Some(slot));
        let created = self.hand_over(
            worker,
            &ids,
            Role::Publisher,
            stream,
            ControlMsg::AddPublisher(Box::new(p)),
        );
        if let Err(e) = created {
            // Dropping the peer (inside the error) drops the Publisher: the stream is idle again.
            return Err(match e {
                super::HandOver::Full => WhipError::Full,
                super::HandOver::Stopped => WhipError::Internal("SFU worker stopped".into()),
            });
        }
        Ok(WhipCreated {
            session_id: ids.session_id,
            answer: answer.to_sdp_string(),
            etag: ids.etag,
        })
    }
}
