//! Peers that bring media in, on the SFU workers: the WHIP POST that answers a publisher's offer
//! and hands its peer (role [`WhipPublisher`]) to the least-loaded worker, and an edge pull's
//! subscriber (role [`crate::ingest::whep_pull::UpstreamSubscriber`]), offered here and placed
//! once the upstream answered. Lives with the workers that host them, so `ingest::whip` (the
//! publisher role itself) never imports the SFU.

use std::sync::Arc;
use std::time::Instant;

use super::{ControlMsg, SfuHandle};
use crate::ingest::whep_pull::{
    build_subscriber_rtc, make_offer, subscriber_role, PendingSubscriber, PullError, PullLink,
};
use crate::ingest::whip::{
    build_publisher_rtc, media_mids, simulcast_rids, WhipControl, WhipError, WhipPublisher,
};
use crate::media::Registry;
use crate::webrtc::admission::SlotKind;
use crate::webrtc::offer::{self, Role};
use crate::webrtc::peer::{add_candidates, Peer};
use str0m::change::SdpAnswer;

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

impl SfuHandle {
    /// An edge pull's subscriber peer, offered on the least-loaded worker (its UDP candidates):
    /// see [`crate::ingest::whep_pull`]. Not an admission slot: a pull serves viewers, it is not
    /// one.
    pub fn offer_subscriber(&self) -> Result<PendingSubscriber, PullError> {
        let worker = self
            .place(SlotKind::Publisher)
            .map_err(|r| PullError::Unavailable(r.to_string()))?;
        let (mut rtc, creds) = build_subscriber_rtc(self.dtls_cert(), Instant::now());
        // The offerer connects out: passive TCP candidates would be of no use.
        add_candidates(&mut rtc, &worker.candidates, &[]);
        let (offer, pending) = make_offer(&mut rtc)
            .ok_or_else(|| PullError::Unavailable("no offer could be made".into()))?;
        Ok(PendingSubscriber {
            rtc,
            pending,
            offer,
            worker: worker.index,
            ufrag: creds.ufrag,
        })
    }

    /// Accept the upstream's answer, take the stream's publisher slot for the pull and hand the
    /// subscriber's peer to its worker. The peer's id (for [`SfuHandle::remove_peer`]).
    pub fn add_subscriber(
        &self,
        registry: &Arc<Registry>,
        stream: &str,
        mut sub: PendingSubscriber,
        answer: &str,
        upstream: &str,
        link: Arc<PullLink>,
    ) -> Result<u64, PullError> {
        let answer = SdpAnswer::from_sdp_string(answer)
            .map_err(|e| PullError::Connect(format!("bad SDP answer: {e}")))?;
        let mids = sub.mids();
        sub.rtc
            .sdp_api()
            .accept_answer(sub.pending, answer)
            .map_err(|e| PullError::Connect(format!("SDP answer refused: {e}")))?;
        let worker = &self.workers[sub.worker];
        let control = Arc::new(WhipControl::new(worker.waker.clone()));
        let publisher = registry
            .begin_publish(stream, format!("pull {upstream}"), control.clone())
            .map_err(|e| PullError::Unavailable(e.to_string()))?;
        let role = subscriber_role(&sub.rtc, &mids, publisher, control, link);
        let ids = self.new_ids();
        let p = Peer::new(
            ids.id,
            Arc::from(stream),
            sub.rtc,
            sub.ufrag,
            role,
            Instant::now(),
        );
        self.hand_over(
            worker,
            &ids,
            Role::Publisher,
            stream,
            ControlMsg::AddUpstream(Box::new(p)),
        )
        .map_err(|e| match e {
            super::HandOver::Full => PullError::Unavailable("SFU worker queue full".into()),
            super::HandOver::Stopped => PullError::Unavailable("SFU worker stopped".into()),
        })?;
        Ok(ids.id)
    }

    /// Drop a peer by id, whatever its role (a pull's subscriber).
    pub fn remove_peer(&self, id: u64) {
        if let Some(s) = self.sessions.remove(id) {
            let w = &self.workers[s.worker];
            let _ = w.control_tx.try_send(ControlMsg::Remove(id));
            w.waker.wake();
        }
    }
}
