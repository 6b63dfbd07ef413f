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
    let _ = crate::config::Config::from_toml(&String::from_utf8_lossy(data));
}
