//! Fixtures the in-process benches share (product types, so they live here and not in the
//! network-only testkit).

use std::sync::Arc;

use bytes::Bytes;
use deltacast::media::{AacParams, Codec, H264Params, TrackSet};

/// A 1280x720 H.264 (constrained baseline) + 48 kHz stereo AAC-LC track set.
pub fn tracks() -> Arc<TrackSet> {
    Arc::new(TrackSet {
        session: 1,
        video: Some(Codec::H264(H264Params {
            avcc: Bytes::new(),
            sps: vec![Bytes::from_static(&[
                0x67, 0x42, 0xc0, 0x1e, 0xd9, 0x00, 0xa0, 0x47, 0xfe, 0xc8,
            ])],
            pps: vec![Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80])],
            profile_idc: 0x42,
            constraint_flags: 0xc0,
            level_idc: 0x1e,
            width: 1280,
            height: 720,
            nalu_length_size: 4,
        })),
        audio: Some(Codec::Aac(AacParams {
            asc: Bytes::from_static(&[0x11, 0x90]),
            object_type: 2,
            sample_rate: 48_000,
            channels: 2,
        })),
    })
}
