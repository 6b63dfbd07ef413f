//! Sans-IO H.264 packetizer (RFC 6184, packetization-mode 1): one access unit in AVCC form
//! (NAL units prefixed by `nalu_length_size` bytes, as the media core keeps them) → RTP payloads.
//!
//! Runs once per stream in the router; the payloads are `Arc<[u8]>` (what str0m's `RtpWrite`
//! takes) and are shared by every viewer on every worker. This is the one copy on the fan-out
//! path before SRTP: frame bytes → payload buffers. Every NAL unit that fits goes out as a single
//! NAL unit packet, larger ones as FU-A fragments; before each IDR the SPS and PPS go out as one
//! STAP-A (from the in-band copies if the frame carries them, else from the avcC), so a viewer
//! that joins at any keyframe can decode. Access unit delimiters and filler data are dropped.
//!
//! Why not the `rtp` crate's `H264Payloader`: it takes Annex B input (start codes), so AVCC frames
//! would need a conversion copy first, and it returns `Bytes`, which str0m would copy again into
//! an `Arc<[u8]>`. Writing the payloads directly from the AVCC slices is one copy instead of three.

use std::sync::Arc;

use bytes::Bytes;

/// NAL unit types used here (H.264 Table 7-1, RFC 6184 §5.4).
pub mod nal {
    pub const SLICE: u8 = 1;
    pub const IDR: u8 = 5;
    pub const SEI: u8 = 6;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const AUD: u8 = 9;
    pub const FILLER: u8 = 12;
    pub const STAP_A: u8 = 24;
    pub const FU_A: u8 = 28;
}

/// One RTP payload, shared by every viewer.
#[derive(Clone, Debug)]
pub struct RtpPayload {
    pub data: Arc<[u8]>,
    /// Last packet of the access unit (RTP marker bit for video).
    pub marker: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketizeError {
    #[error("NAL unit length {len} runs past the end of the frame ({left} bytes left)")]
    Truncated { len: usize, left: usize },
    #[error("NAL unit length size {0} is not 1, 2 or 4")]
    BadLengthSize(u8),
    #[error("access unit carries no NAL unit")]
    Empty,
}

/// Packetizer for one H.264 track (one publisher session's parameters).
#[derive(Clone, Debug)]
pub struct H264Packetizer {
    /// Largest payload emitted (RTP header, extensions and SRTP tag come on top).
    max_payload: usize,
    length_size: usize,
    sps: Vec<Bytes>,
    pps: Vec<Bytes>,
}

impl H264Packetizer {
    pub fn new(
        nalu_length_size: u8,
        sps: Vec<Bytes>,
        pps: Vec<Bytes>,
        max_payload: usize,
    ) -> Result<Self, PacketizeError> {
        if !matches!(nalu_length_size, 1 | 2 | 4) {
            return Err(PacketizeError::BadLengthSize(nalu_length_size));
        }
        Ok(Self {
            max_payload: max_payload.max(64),
            length_size: nalu_length_size as usize,
            sps,
            pps,
        })
    }

    pub fn from_params(
        p: &crate::media::H264Params,
        max_payload: usize,
    ) -> Result<Self, PacketizeError> {
        Self::new(
            p.nalu_length_size,
            p.sps.clone(),
            p.pps.clone(),
            max_payload,
        )
    }

    /// Split an AVCC access unit into NAL unit slices.
    pub fn nal_units<'a>(&self, au: &'a [u8]) -> Result<Vec<&'a [u8]>, PacketizeError> {
        let mut out = Vec::with_capacity(4);
        let mut rest = au;
        while !rest.is_empty() {
            if rest.len() < self.length_size {
                return Err(PacketizeError::Truncated {
                    len: self.length_size,
                    left: rest.len(),
                });
            }
            let mut len = 0usize;
            for b in &rest[..self.length_size] {
                len = (len << 8) | *b as usize;
            }
            rest = &rest[self.length_size..];
            if len > rest.len() {
                return Err(PacketizeError::Truncated {
                    len,
                    left: rest.len(),
                });
            }
            if len > 0 {
                out.push(&rest[..len]);
            }
            rest = &rest[len..];
        }
        Ok(out)
    }

    /// Packetize one access unit into `out` (appended). The last payload has the marker set.
    pub fn packetize(
        &self,
        au: &[u8],
        keyframe: bool,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        let nalus = self.nal_units(au)?;
        let start = out.len();
        let is_idr = nalus.iter().any(|n| n[0] & 0x1f == nal::IDR);
        let inband_ps = nalus
            .iter()
            .any(|n| matches!(n[0] & 0x1f, nal::SPS | nal::PPS));
        if (is_idr || keyframe) && !inband_ps {
            let ps: Vec<&[u8]> = self
                .sps
                .iter()
                .chain(self.pps.iter())
                .map(|b| b.as_ref())
                .filter(|b| !b.is_empty())
                .collect();
            self.emit_group(&ps, out);
        }
        // In-band parameter sets at the head of the AU travel together as one STAP-A.
        let mut i = 0;
        let mut head: Vec<&[u8]> = Vec::new();
        while i < nalus.len() && matches!(nalus[i][0] & 0x1f, nal::SPS | nal::PPS | nal::AUD) {
            if nalus[i][0] & 0x1f != nal::AUD {
                head.push(nalus[i]);
            }
            i += 1;
        }
        self.emit_group(&head, out);
        for n in &nalus[i..] {
            let t = n[0] & 0x1f;
            if t == nal::AUD || t == nal::FILLER {
                continue;
            }
            self.emit_nal(n, out);
        }
        if out.len() == start {
            return Err(PacketizeError::Empty);
        }
        if let Some(last) = out.last_mut() {
            last.marker = true;
        }
        Ok(())
    }

    /// Several small NAL units: one STAP-A when they fit, else one by one.
    fn emit_group(&self, nalus: &[&[u8]], out: &mut Vec<RtpPayload>) {
        match nalus.len() {
            0 => {}
            1 => self.emit_nal(nalus[0], out),
            _ => {
                let size = 1 + nalus.iter().map(|n| 2 + n.len()).sum::<usize>();
                if size <= self.max_payload && nalus.iter().all(|n| n.len() <= 0xffff) {
                    let mut buf = Vec::with_capacity(size);
                    // F = OR of the F bits, NRI = max NRI of the aggregated units.
                    let f = nalus.iter().fold(0u8, |a, n| a | (n[0] & 0x80));
                    let nri = nalus.iter().map(|n| n[0] & 0x60).max().unwrap_or(0x60);
                    buf.push(f | nri | nal::STAP_A);
                    for n in nalus {
                        buf.extend_from_slice(&(n.len() as u16).to_be_bytes());
                        buf.extend_from_slice(n);
                    }
                    out.push(RtpPayload {
                        data: Arc::from(buf),
                        marker: false,
                    });
                } else {
                    for n in nalus {
                        self.emit_nal(n, out);
                    }
                }
            }
        }
    }

    fn emit_nal(&self, n: &[u8], out: &mut Vec<RtpPayload>) {
        if n.len() <= self.max_payload {
            out.push(RtpPayload {
                data: Arc::from(n),
                marker: false,
            });
            return;
        }
        // FU-A: indicator (F|NRI|28), header (S|E|R|type), then a chunk of the NAL body.
        let indicator = (n[0] & 0xe0) | nal::FU_A;
        let typ = n[0] & 0x1f;
        let body = &n[1..];
        let chunk = self.max_payload - 2;
        let count = body.len().div_ceil(chunk);
        for (k, part) in body.chunks(chunk).enumerate() {
            let mut hdr = typ;
            if k == 0 {
                hdr |= 0x80;
            }
            if k + 1 == count {
                hdr |= 0x40;
            }
            // Build the Arc in place: one allocation, one copy of the chunk.
            let mut buf: Arc<[u8]> = Arc::from(vec![0u8; part.len() + 2]);
            let b = Arc::get_mut(&mut buf).expect("fresh Arc is unique");
            b[0] = indicator;
            b[1] = hdr;
            b[2..].copy_from_slice(part);
            out.push(RtpPayload {
                data: buf,
                marker: false,
            });
        }
    }
}

/// Depacketizer for tests and the test client: RTP payloads of one access unit → Annex B.
pub fn depacketize_annexb(payloads: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut fu: Option<Vec<u8>> = None;
    for p in payloads {
        if p.is_empty() {
            return Err("empty payload".into());
        }
        match p[0] & 0x1f {
            1..=23 => {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(p);
            }
            nal::STAP_A => {
                let mut r = &p[1..];
                while r.len() >= 2 {
                    let len = u16::from_be_bytes([r[0], r[1]]) as usize;
                    r = &r[2..];
                    if len > r.len() {
                        return Err("STAP-A unit past the end".into());
                    }
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(&r[..len]);
                    r = &r[len..];
                }
            }
            nal::FU_A => {
                if p.len() < 2 {
                    return Err("short FU-A".into());
                }
                let (s, e) = (p[1] & 0x80 != 0, p[1] & 0x40 != 0);
                if s {
                    fu = Some(vec![(p[0] & 0xe0) | (p[1] & 0x1f)]);
                }
                let Some(buf) = fu.as_mut() else {
                    return Err("FU-A without start".into());
                };
                buf.extend_from_slice(&p[2..]);
                if e {
                    out.extend_from_slice(&[0, 0, 0, 1]);
                    out.extend_from_slice(&fu.take().unwrap());
                }
            }
            t => return Err(format!("unsupported NAL/packet type {t}")),
        }
    }
    if fu.is_some() {
        return Err("FU-A without end".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn avcc(nalus: &[&[u8]], ls: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nalus {
            let len = (n.len() as u32).to_be_bytes();
            v.extend_from_slice(&len[4 - ls..]);
            v.extend_from_slice(n);
        }
        v
    }

    fn annexb(nalus: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for n in nalus {
            v.extend_from_slice(&[0, 0, 0, 1]);
            v.extend_from_slice(n);
        }
        v
    }

    fn sps() -> Bytes {
        Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40])
    }
    fn pps() -> Bytes {
        Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80])
    }

    #[test]
    fn idr_gets_stap_a_then_fu_a_round_trip() {
        for ls in [1usize, 2, 4] {
            let p = H264Packetizer::new(ls as u8, vec![sps()], vec![pps()], 1200).unwrap();
            let big: Vec<u8> = std::iter::once(0x65u8)
                .chain((0..if ls == 1 { 250 } else { 5000 }).map(|i| (i * 7) as u8))
                .collect();
            let sei = [0x06u8, 5, 1, 0x80];
            let aud = [0x09u8, 0xf0];
            let au = avcc(&[&aud, &sei, &big], ls);
            let mut out = Vec::new();
            p.packetize(&au, true, &mut out).unwrap();
            assert_eq!(out[0].data[0] & 0x1f, nal::STAP_A);
            assert!(out.iter().all(|x| x.data.len() <= 1200));
            assert!(out.last().unwrap().marker);
            assert_eq!(out.iter().filter(|x| x.marker).count(), 1);
            let refs: Vec<&[u8]> = out.iter().map(|x| &x.data[..]).collect();
            let got = depacketize_annexb(&refs).unwrap();
            assert_eq!(got, annexb(&[&sps(), &pps(), &sei, &big]), "ls {ls}");
        }
    }

    #[test]
    fn inband_parameter_sets_and_small_slices() {
        let p = H264Packetizer::new(4, vec![sps()], vec![pps()], 1200).unwrap();
        let s = sps();
        let q = pps();
        let idr = [0x65u8, 1, 2, 3];
        let au = avcc(&[&s, &q, &idr], 4);
        let mut out = Vec::new();
        p.packetize(&au, true, &mut out).unwrap();
        // in-band SPS/PPS → one STAP-A (no extra copy from the avcC), then the IDR.
        assert_eq!(out.len(), 2);
        let refs: Vec<&[u8]> = out.iter().map(|x| &x.data[..]).collect();
        assert_eq!(depacketize_annexb(&refs).unwrap(), annexb(&[&s, &q, &idr]));
        // a P frame: just the slice.
        let pf = [0x41u8, 9, 9];
        out.clear();
        p.packetize(&avcc(&[&pf], 4), false, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(&out[0].data[..], &pf);
        assert!(out[0].marker);
    }

    #[test]
    fn hostile_input_is_an_error_not_a_panic() {
        let p = H264Packetizer::new(4, vec![], vec![], 1200).unwrap();
        let mut out = Vec::new();
        assert!(p.packetize(&[0, 0, 0, 9, 1], false, &mut out).is_err());
        assert!(p.packetize(&[0, 0], false, &mut out).is_err());
        assert_eq!(
            p.packetize(&[0, 0, 0, 0], false, &mut out),
            Err(PacketizeError::Empty)
        );
        assert!(H264Packetizer::new(3, vec![], vec![], 1200).is_err());
        // exactly-at-MTU and MTU+1 boundaries
        for n in [1199usize, 1200, 1201, 2398, 2399] {
            let nalu: Vec<u8> = std::iter::once(0x41)
                .chain(std::iter::repeat_n(7u8, n - 1))
                .collect();
            out.clear();
            p.packetize(&avcc(&[&nalu], 4), false, &mut out).unwrap();
            assert!(out.iter().all(|x| x.data.len() <= 1200), "{n}");
            let refs: Vec<&[u8]> = out.iter().map(|x| &x.data[..]).collect();
            assert_eq!(depacketize_annexb(&refs).unwrap(), annexb(&[&nalu]), "{n}");
        }
        for bad in [&[0x7cu8][..], &[0x7c, 0x05, 1], &[0x7c, 0x85, 1]] {
            assert!(depacketize_annexb(&[bad]).is_err());
        }
    }
}
