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

use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::Bytes;

use crate::media::codec::h264::{
    nal_type, H264Error, Nalus, NAL_AUD, NAL_FILLER, NAL_IDR, NAL_PPS, NAL_SPS,
};

/// RTP payload types of RFC 6184 §5.4 (in the NAL unit type field).
pub const STAP_A: u8 = 24;
pub const FU_A: u8 = 28;

/// One RTP payload, shared by every viewer.
#[derive(Clone, Debug)]
pub struct RtpPayload {
    pub data: Arc<[u8]>,
    /// Last packet of the access unit (RTP marker bit for video).
    pub marker: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketizeError {
    #[error(transparent)]
    Framing(#[from] H264Error),
    #[error("access unit carries no NAL unit")]
    Empty,
}

/// Packetizer for one H.264 track (one publisher session's parameters).
#[derive(Clone, Debug)]
pub struct H264Packetizer {
    /// Largest payload emitted (RTP header, extensions and SRTP tag come on top).
    max_payload: usize,
    length_size: u8,
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
            return Err(H264Error::LengthSize(nalu_length_size.wrapping_sub(1)).into());
        }
        Ok(Self {
            max_payload: max_payload.max(64),
            length_size: nalu_length_size,
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

    /// Packetize one access unit into `out` (appended). The last payload has the marker set.
    pub fn packetize(
        &self,
        au: &[u8],
        keyframe: bool,
        out: &mut Vec<RtpPayload>,
    ) -> Result<(), PacketizeError> {
        let nalus = Nalus::avcc(au, self.length_size)?;
        // The first pass checks the framing and finds what the AU holds; the passes after it walk
        // the length prefixes again instead of building a list of units.
        let (mut is_idr, mut inband_ps) = (false, false);
        for n in nalus.clone() {
            let t = nal_type(n?);
            is_idr |= t == NAL_IDR;
            inband_ps |= matches!(t, NAL_SPS | NAL_PPS);
        }
        let start = out.len();
        if (is_idr || keyframe) && !inband_ps {
            let ps = self.sps.iter().chain(&self.pps).map(|b| &b[..]);
            self.emit_group(ps.filter(|b| !b.is_empty()), out);
        }
        // In-band parameter sets at the head of the AU travel together as one STAP-A.
        let units = nalus.map_while(Result::ok);
        let head = |n: &&[u8]| matches!(nal_type(n), NAL_SPS | NAL_PPS | NAL_AUD);
        let ps = units.clone().take_while(head);
        self.emit_group(ps.filter(|n| nal_type(n) != NAL_AUD), out);
        for n in units.skip_while(head) {
            if !matches!(nal_type(n), NAL_AUD | NAL_FILLER) {
                self.emit_nal(n, out);
            }
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
    fn emit_group<'a>(
        &self,
        nalus: impl Iterator<Item = &'a [u8]> + Clone,
        out: &mut Vec<RtpPayload>,
    ) {
        // F = OR of the F bits, NRI = max NRI of the aggregated units.
        let (mut count, mut size, mut f, mut nri, mut fits) = (0, 1, 0u8, 0u8, true);
        for n in nalus.clone() {
            count += 1;
            size += 2 + n.len();
            f |= n[0] & 0x80;
            nri = nri.max(n[0] & 0x60);
            fits &= n.len() <= 0xffff;
        }
        if count < 2 || size > self.max_payload || !fits {
            nalus.for_each(|n| self.emit_nal(n, out));
            return;
        }
        let data = shared_payload(size, |w| {
            w.put(&[f | nri | STAP_A]);
            for n in nalus {
                w.put(&(n.len() as u16).to_be_bytes());
                w.put(n);
            }
        });
        out.push(RtpPayload {
            data,
            marker: false,
        });
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
        let indicator = (n[0] & 0xe0) | FU_A;
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
            // One allocation (the shared payload itself), one copy of the chunk.
            let data = shared_payload(part.len() + 2, |w| {
                w.put(&[indicator, hdr]);
                w.put(part);
            });
            out.push(RtpPayload {
                data,
                marker: false,
            });
        }
    }
}

/// Writes a payload front to back into its not yet initialized buffer.
struct Fill<'a> {
    buf: &'a mut [MaybeUninit<u8>],
    /// Bytes `..pos` are written.
    pos: usize,
}

impl Fill<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let dst = &mut self.buf[self.pos..self.pos + bytes.len()];
        for (d, s) in dst.iter_mut().zip(bytes) {
            d.write(*s);
        }
        self.pos += bytes.len();
    }
}

/// A shared payload of exactly `len` bytes written by `fill`: one allocation (the `Arc`'s own)
/// and no zeroing pass, where `Arc::from(vec)` costs a second allocation and copy.
fn shared_payload(len: usize, fill: impl FnOnce(&mut Fill<'_>)) -> Arc<[u8]> {
    let mut arc = Arc::<[u8]>::new_uninit_slice(len);
    let buf = Arc::get_mut(&mut arc).expect("a new Arc is unique");
    let mut w = Fill { buf, pos: 0 };
    fill(&mut w);
    assert_eq!(w.pos, len, "payload length");
    // SAFETY: `Fill::put` writes bytes in order from offset 0 and `pos` counts them, so all `len`
    // bytes are initialized.
    unsafe { arc.assume_init() }
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
            STAP_A => {
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
            FU_A => {
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
            assert_eq!(out[0].data[0] & 0x1f, STAP_A);
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
        assert!(p.packetize(&[0, 0, 0, 0], false, &mut out).is_err());
        assert_eq!(
            p.packetize(&avcc(&[&[0x09, 0xf0], &[0x0c, 0xff]], 4), false, &mut out),
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
