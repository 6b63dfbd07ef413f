//! Entry points for the fuzz targets in fuzz/ and for the corpus replay test: each takes raw
//! bytes from the network side of one parser and must return without panicking.

use bytes::Bytes;

/// FLV audio/video tag bodies through the demuxer; the first byte picks the tag type per body.
pub fn flv_tags(data: &[u8]) {
    let mut d = crate::ingest::flv::FlvDemuxer::new();
    let mut ts = 0i64;
    for body in data.split(|&b| b == 0xF7) {
        let Some((&sel, body)) = body.split_first() else {
            continue;
        };
        ts += (sel as i64) * 7;
        let body = Bytes::copy_from_slice(body);
        if sel & 1 == 0 {
            let _ = d.video(ts, body);
        } else {
            let _ = d.audio(ts, body);
        }
    }
}

/// AVCDecoderConfigurationRecord parsing.
pub fn avcc(data: &[u8]) {
    let _ = crate::media::codec::h264::parse_avcc(Bytes::copy_from_slice(data));
}

/// AudioSpecificConfig parsing.
pub fn asc(data: &[u8]) {
    let _ = crate::media::codec::aac::parse_asc(Bytes::copy_from_slice(data));
}

/// The RTMP chunk stream after the handshake.
pub fn rtmp_session(data: &[u8]) {
    crate::ingest::rtmp::fuzz_session_input(data);
}

/// FLV file framing (the demo reader).
pub fn flv_file(data: &[u8]) {
    let _ = crate::ingest::demo::read_flv(Bytes::copy_from_slice(data));
}

/// LL-HLS query parameters and media object names from request URLs.
pub fn hls_request(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let _ = crate::http::hls::parse_query_for_fuzz(&s);
    let _ = crate::egress::hls::store::Object::parse(&s);
}

/// The TOML config.
pub fn config(data: &[u8]) {
    if let Ok(c) = crate::config::Config::from_toml(&String::from_utf8_lossy(data)) {
        let _ = crate::app::check_config(&c);
    }
}

/// What a WebRTC publisher controls before and after the handshake: the WHIP/WHEP offer checks
/// (SDP text, simulcast rids, m-line ids) and depacketized H.264 access units per rid through
/// the assemblers and the simulcast layer ranking. Input: the offer, then 0xF7-separated access
/// units whose first byte picks the rid (low 2 bits, 3 = no rid) and a clock step.
pub fn webrtc_ingest(data: &[u8]) {
    use crate::ingest::simulcast::LayerSet;
    let (offer, aus) = match data.iter().position(|&b| b == 0xF7) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let offer = String::from_utf8_lossy(offer);
    for role in [crate::webrtc::Role::Publisher, crate::webrtc::Role::Viewer] {
        let _ = crate::webrtc::offer::check(&offer, role);
    }
    let rids = crate::ingest::whip::simulcast_rids(&offer);
    let _ = crate::webrtc::offer::mids(&offer);
    let mut set = LayerSet::new(rids, Some(std::time::Duration::from_millis(500)));
    let mut now = std::time::Instant::now();
    for au in aus.split(|&b| b == 0xF7) {
        let Some((&sel, au)) = au.split_first() else {
            continue;
        };
        now += std::time::Duration::from_millis((sel >> 2) as u64 * 10);
        let rid = match sel & 3 {
            3 => None,
            r => Some(str0m::media::Rid::from(["h", "m", "l"][r as usize])),
        };
        let Some(slot) = set.slot(rid) else {
            continue;
        };
        if let Ok(Some(unit)) = set.layer_mut(slot).h264.push(au) {
            let _ = set.place(slot, &unit, now);
        }
        set.want_keyframes(sel as u32, now);
        let _ = set.due_requests(now);
        let _ = set.next_request_at(now);
    }
}
