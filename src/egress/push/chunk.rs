//! Sans-IO RTMP chunking of media messages, shared across destinations.
//!
//! RTMP splits every message into chunks of the negotiated size, each chunk after the first led
//! by a one-byte type-3 basic header. For a given chunk stream id and chunk size, that interleaved
//! layout is the same for every connection; only the first chunk's header (timestamp, message
//! stream id) differs. So the fan-out lays a frame out **once per stream** as a
//! [`ChunkedBody`] (payload with the continuation bytes already in place), and each destination
//! writes a 12-byte type-0 header of its own in front of the same `Bytes` (vectored write): no copy
//! of the payload per destination.
//!
//! Every media message starts with a full (type 0) header, so nothing depends on header
//! compression state, and the chunk streams used here (4 video, 5 audio) carry nothing else.
//! A timestamp at or past 2^24-1 ms (4.6 h into a destination's life) needs the extended
//! timestamp repeated in every continuation chunk, which differs per destination: those messages
//! are laid out per destination (one copy), everything else is shared.

use bytes::{BufMut, Bytes, BytesMut};

use crate::media::TrackKind;

/// Outbound chunk size every push connection announces (Set Chunk Size right after `connect`).
pub const CHUNK_SIZE: usize = 4096;
/// Chunk stream ids of media messages.
pub const CSID_VIDEO: u8 = 4;
pub const CSID_AUDIO: u8 = 5;
const TYPE_AUDIO: u8 = 8;
const TYPE_VIDEO: u8 = 9;
const MAX_TS: u32 = 0x00FF_FFFF;

fn csid(kind: TrackKind) -> u8 {
    match kind {
        TrackKind::Video => CSID_VIDEO,
        TrackKind::Audio => CSID_AUDIO,
    }
}

/// A message payload laid out for chunking: `payload[0..4096] C? payload[4096..8192] C? …` where
/// `C?` is the type-3 basic header of the payload's chunk stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkedBody {
    pub kind: TrackKind,
    /// Payload length (without the continuation bytes): the RTMP message length.
    pub len: usize,
    /// Payload with continuation headers in place.
    pub bytes: Bytes,
}

impl ChunkedBody {
    /// Lay out `parts` (concatenated) as one message payload of `kind`.
    pub fn new(kind: TrackKind, parts: &[&[u8]]) -> Self {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let seps = len.saturating_sub(1) / CHUNK_SIZE;
        let mut b = BytesMut::with_capacity(len + seps);
        let sep = 0xC0 | csid(kind);
        let mut in_chunk = 0usize;
        for p in parts {
            let mut p: &[u8] = p;
            while !p.is_empty() {
                if in_chunk == CHUNK_SIZE {
                    b.put_u8(sep);
                    in_chunk = 0;
                }
                let n = p.len().min(CHUNK_SIZE - in_chunk);
                b.put_slice(&p[..n]);
                in_chunk += n;
                p = &p[n..];
            }
        }
        ChunkedBody {
            kind,
            len,
            bytes: b.freeze(),
        }
    }

    /// The payload without continuation bytes (a copy; for the extended-timestamp path and tests).
    pub fn payload(&self) -> Bytes {
        if self.len <= CHUNK_SIZE {
            return self.bytes.clone();
        }
        let mut b = BytesMut::with_capacity(self.len);
        for c in self.bytes.chunks(CHUNK_SIZE + 1) {
            b.put_slice(&c[..c.len().min(CHUNK_SIZE)]);
        }
        b.freeze()
    }
}

/// The pieces one connection writes, in order: per-destination headers and shared bodies.
#[derive(Default)]
pub struct Segments {
    pub parts: Vec<Bytes>,
    headers: BytesMut,
    pub bytes: usize,
}

impl Segments {
    pub fn clear(&mut self) {
        self.parts.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Append bytes produced elsewhere (the session's control messages).
    pub fn push_owned(&mut self, b: Vec<u8>) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.parts.push(Bytes::from(b));
        }
    }

    pub fn push_shared(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.bytes += b.len();
            self.parts.push(b);
        }
    }

    fn push_header(&mut self, write: impl FnOnce(&mut BytesMut)) {
        if self.headers.capacity() < 64 {
            self.headers.reserve(4096);
        }
        write(&mut self.headers);
        let h = self.headers.split().freeze();
        self.bytes += h.len();
        self.parts.push(h);
    }

    /// One media message: a type-0 header for this connection, then the shared body.
    pub fn message(&mut self, stream_id: u32, ts: u32, body: &ChunkedBody) {
        let cs = csid(body.kind);
        let type_id = match body.kind {
            TrackKind::Video => TYPE_VIDEO,
            TrackKind::Audio => TYPE_AUDIO,
        };
        let extended = ts >= MAX_TS;
        self.push_header(|h| {
            h.put_u8(cs); // fmt 0
            h.put_uint(u64::from(ts.min(MAX_TS)), 3);
            h.put_uint(body.len as u64, 3);
            h.put_u8(type_id);
            h.put_u32_le(stream_id);
            if extended {
                h.put_u32(ts);
            }
        });
        if !extended {
            self.push_shared(body.bytes.clone());
            return;
        }
        // Extended timestamp: every continuation chunk repeats it.
        let payload = body.payload();
        let mut b = BytesMut::with_capacity(payload.len() + (payload.len() / CHUNK_SIZE) * 5);
        for (i, c) in payload.chunks(CHUNK_SIZE).enumerate() {
            if i > 0 {
                b.put_u8(0xC0 | cs);
                b.put_u32(ts);
            }
            b.put_slice(c);
        }
        self.push_shared(b.freeze());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rml_rtmp::chunk_io::ChunkDeserializer;

    fn parse(segs: &Segments) -> Vec<(u8, u32, u32, Bytes)> {
        let wire: Vec<u8> = segs.parts.iter().flat_map(|p| p.iter().copied()).collect();
        assert_eq!(wire.len(), segs.bytes);
        let mut d = ChunkDeserializer::new();
        d.set_max_chunk_size(CHUNK_SIZE).unwrap();
        let mut out = Vec::new();
        let mut input: &[u8] = &wire;
        while let Some(m) = d.get_next_message(input).unwrap() {
            out.push((
                m.type_id,
                m.timestamp.value,
                m.message_stream_id,
                m.data.clone(),
            ));
            input = &[];
        }
        out
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn shared_bodies_with_per_connection_headers_parse_back() {
        let big = payload(3 * CHUNK_SIZE + 17);
        let video = ChunkedBody::new(TrackKind::Video, &[&[0x17, 1, 0, 0, 0], &big]);
        assert_eq!(video.len, big.len() + 5);
        assert_eq!(video.bytes.len(), video.len + 3, "three continuation bytes");
        let exact = ChunkedBody::new(TrackKind::Audio, &[&payload(CHUNK_SIZE)]);
        assert_eq!(
            exact.bytes.len(),
            CHUNK_SIZE,
            "no separator after a full last chunk"
        );
        let small = ChunkedBody::new(TrackKind::Audio, &[&[0xAF, 1], &[9, 9, 9]]);

        // Two connections with different stream ids and timestamps share the bodies.
        for (sid, base) in [(1u32, 0u32), (7, 123_456)] {
            let mut s = Segments::default();
            s.message(sid, base, &video);
            s.message(sid, base + 10, &small);
            s.message(sid, base + 20, &exact);
            s.message(sid, base + 33, &video);
            let m = parse(&s);
            assert_eq!(m.len(), 4);
            assert_eq!((m[0].0, m[0].1, m[0].2), (9, base, sid));
            assert_eq!(m[0].3, video.payload());
            assert_eq!(&m[0].3[5..], &big[..]);
            assert_eq!((m[1].0, m[1].1), (8, base + 10));
            assert_eq!(&m[1].3[..], &[0xAF, 1, 9, 9, 9]);
            assert_eq!(m[2].3.len(), CHUNK_SIZE);
            assert_eq!(m[3].1, base + 33);
            // The body is the very same allocation in both connections.
            assert!(s.parts.iter().any(|p| p.as_ptr() == video.bytes.as_ptr()));
        }
    }

    #[test]
    fn extended_timestamps_are_repeated_in_continuation_chunks() {
        let big = payload(2 * CHUNK_SIZE + 1);
        let video = ChunkedBody::new(TrackKind::Video, &[&big]);
        let mut s = Segments::default();
        s.message(1, 0x0100_0000, &video);
        s.message(1, 0x0100_0021, &video);
        let m = parse(&s);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].1, 0x0100_0000);
        assert_eq!(m[1].1, 0x0100_0021);
        assert_eq!(&m[0].3[..], &big[..]);
        assert_eq!(&m[1].3[..], &big[..]);
    }

    #[test]
    fn payload_round_trips() {
        for n in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            5 * CHUNK_SIZE + 3,
        ] {
            let p = payload(n);
            let c = ChunkedBody::new(TrackKind::Video, &[&p[..n / 2], &p[n / 2..]]);
            assert_eq!(&c.payload()[..], &p[..], "{n}");
        }
    }
}
