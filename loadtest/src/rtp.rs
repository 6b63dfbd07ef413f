//! RTP sequence accounting from the cleartext RTP header: what a viewer received, per SSRC.
//!
//! SRTP encrypts the payload only, so the 12-byte header (sequence number, timestamp, SSRC,
//! marker) can be counted without decrypting: that is the WebRTC fast path. The full-decrypt
//! path feeds the same counter from str0m's decrypted packets, so both modes count alike.
//!
//! Loss is `expected − unique`: expected spans from the first extended sequence number seen to
//! the highest, unique counts each sequence number once (a recent-history bitmap tells
//! duplicates from late arrivals). A packet behind the highest seen is "reordered" (reordered on
//! the way, or a NACK/RTX repair); it still fills its gap.

/// The cleartext header fields the counter needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub payload_type: u8,
    pub marker: bool,
    pub seq: u16,
    pub ssrc: u32,
}

/// Parse an RTP (not RTCP) header: version 2, and a payload type outside RTCP's 64..=95
/// range (RFC 5761 demultiplexing). `None` for anything else (STUN, DTLS, RTCP, short).
pub fn parse_rtp(b: &[u8]) -> Option<RtpHeader> {
    if b.len() < 12 || b[0] >> 6 != 2 {
        return None;
    }
    let pt = b[1] & 0x7f;
    if (64..=95).contains(&pt) {
        return None;
    }
    Some(RtpHeader {
        payload_type: pt,
        marker: b[1] & 0x80 != 0,
        seq: u16::from_be_bytes([b[2], b[3]]),
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
    })
}

/// Sequence numbers remembered for duplicate detection (a power of two).
const HISTORY: u64 = 1024;

/// What one `add` changed, so callers can keep running totals without rescanning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Growth of the expected span (the highest sequence number moved up by this much).
    pub expected: u64,
    /// 1 when this sequence number had not been received before.
    pub unique: u64,
    pub reordered: u64,
    pub duplicate: u64,
}

/// One SSRC's sequence numbers.
#[derive(Clone, Debug)]
pub struct SeqCounter {
    /// First and highest extended (wrap-counting) sequence numbers.
    first: u64,
    highest: u64,
    started: bool,
    pub unique: u64,
    pub reordered: u64,
    pub duplicates: u64,
    /// Bit `s % HISTORY`: extended sequence number `s` (within HISTORY of the highest) seen.
    seen: [u64; (HISTORY / 64) as usize],
}

impl Default for SeqCounter {
    fn default() -> Self {
        SeqCounter {
            first: 0,
            highest: 0,
            started: false,
            unique: 0,
            reordered: 0,
            duplicates: 0,
            seen: [0; (HISTORY / 64) as usize],
        }
    }
}

impl SeqCounter {
    fn bit(&mut self, ext: u64) -> (&mut u64, u64) {
        let i = ext % HISTORY;
        (&mut self.seen[(i / 64) as usize], 1u64 << (i % 64))
    }

    /// Account one received sequence number.
    pub fn add(&mut self, seq: u16) -> Delta {
        let mut d = Delta::default();
        if !self.started {
            // Start high enough that a packet reordered across the first cannot underflow.
            self.started = true;
            self.first = (1 << 32) + seq as u64;
            self.highest = self.first;
            let (w, m) = self.bit(self.first);
            *w |= m;
            self.unique = 1;
            d.expected = 1;
            d.unique = 1;
            return d;
        }
        // The nearest extended number to the highest with these low 16 bits.
        let diff = seq.wrapping_sub(self.highest as u16) as i16 as i64;
        let ext = (self.highest as i64 + diff) as u64;
        if ext > self.highest {
            // Clear the history bits of the numbers skipped over (now gaps, or older than HISTORY).
            let clear = (ext - self.highest).min(HISTORY);
            for s in ext + 1 - clear..=ext {
                let (w, m) = self.bit(s);
                *w &= !m;
            }
            d.expected = ext - self.highest;
            self.highest = ext;
        } else if ext < self.first || self.highest - ext >= HISTORY {
            // Before the first packet counted, or too old to tell from a duplicate.
            self.reordered += 1;
            d.reordered = 1;
            return d;
        } else {
            self.reordered += 1;
            d.reordered = 1;
        }
        let (w, m) = self.bit(ext);
        if *w & m != 0 {
            self.duplicates += 1;
            d.duplicate = 1;
            // A duplicate is not a reorder.
            self.reordered -= d.reordered;
            d.reordered = 0;
            return d;
        }
        *w |= m;
        self.unique += 1;
        d.unique = 1;
        d
    }

    pub fn expected(&self) -> u64 {
        if self.started {
            self.highest - self.first + 1
        } else {
            0
        }
    }

    pub fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.unique)
    }
}

/// Counters of one viewer: a few SSRCs (video, audio, maybe RTX).
#[derive(Clone, Debug, Default)]
pub struct StreamCounters {
    pub by_ssrc: Vec<(u32, SeqCounter)>,
}

impl StreamCounters {
    /// At most this many SSRCs per viewer (video, audio, RTX and a spare).
    const MAX_SSRCS: usize = 4;

    pub fn add(&mut self, ssrc: u32, seq: u16) -> Delta {
        if let Some((_, c)) = self.by_ssrc.iter_mut().find(|(s, _)| *s == ssrc) {
            return c.add(seq);
        }
        if self.by_ssrc.len() >= Self::MAX_SSRCS {
            return Delta::default();
        }
        let mut c = SeqCounter::default();
        let d = c.add(seq);
        self.by_ssrc.push((ssrc, c));
        d
    }

    pub fn expected(&self) -> u64 {
        self.by_ssrc.iter().map(|(_, c)| c.expected()).sum()
    }

    pub fn lost(&self) -> u64 {
        self.by_ssrc.iter().map(|(_, c)| c.lost()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_parse_demuxes_rtp_from_rtcp_stun_dtls() {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[1] = 0x80 | 96;
        p[2..4].copy_from_slice(&65535u16.to_be_bytes());
        p[8..12].copy_from_slice(&0xdead_beefu32.to_be_bytes());
        let h = parse_rtp(&p).unwrap();
        assert_eq!(
            (h.payload_type, h.marker, h.seq, h.ssrc),
            (96, true, 65535, 0xdead_beef)
        );
        p[1] = 200; // RTCP sender report (PT 200 = 0x80 | 72)
        assert!(parse_rtp(&p).is_none());
        p[0] = 0x00; // STUN
        assert!(parse_rtp(&p).is_none());
        p[0] = 22; // DTLS handshake
        assert!(parse_rtp(&p).is_none());
        assert!(parse_rtp(&[0x80; 11]).is_none());
    }

    #[test]
    fn in_order_across_the_16_bit_wrap() {
        let mut c = SeqCounter::default();
        let mut s = 65530u16;
        for _ in 0..20 {
            c.add(s);
            s = s.wrapping_add(1);
        }
        assert_eq!(
            (c.expected(), c.unique, c.lost(), c.reordered),
            (20, 20, 0, 0)
        );
    }

    #[test]
    fn gaps_are_loss_until_filled_and_late_fills_count_as_reordered() {
        let mut c = SeqCounter::default();
        for s in [65534u16, 65535, 2, 3] {
            c.add(s);
        }
        // 0 and 1 missing across the wrap.
        assert_eq!((c.expected(), c.lost()), (6, 2));
        let d = c.add(0);
        assert_eq!(
            d,
            Delta {
                expected: 0,
                unique: 1,
                reordered: 1,
                duplicate: 0
            }
        );
        assert_eq!((c.lost(), c.reordered), (1, 1));
        // The same again is a duplicate, not a reorder and not a unique packet.
        let d = c.add(0);
        assert_eq!(d.duplicate, 1);
        assert_eq!((c.lost(), c.reordered, c.duplicates), (1, 1, 1));
    }

    #[test]
    fn reordered_before_the_first_is_not_loss_and_never_underflows() {
        let mut c = SeqCounter::default();
        c.add(0);
        c.add(65535); // behind the first packet, across the wrap
        assert_eq!((c.expected(), c.lost(), c.reordered), (1, 0, 1));
        c.add(1);
        assert_eq!((c.expected(), c.lost()), (2, 0));
    }

    #[test]
    fn a_long_gap_clears_history_so_old_bits_do_not_read_as_duplicates() {
        let mut c = SeqCounter::default();
        for s in 0..10u16 {
            c.add(s);
        }
        // Jump 3,000 ahead (several wraps of the history ring), then keep going.
        c.add(3010);
        c.add(3011);
        assert_eq!(c.duplicates, 0);
        assert_eq!(c.expected(), 3012);
        assert_eq!(c.lost(), 3012 - 12);
        // A packet older than the history is counted as reordered, not unique.
        c.add(5);
        assert_eq!((c.unique, c.reordered), (12, 1));
    }

    #[test]
    fn stream_counters_sum_ssrcs_and_cap_them() {
        let mut v = StreamCounters::default();
        for s in 0..5u16 {
            v.add(1, s);
            if s != 2 {
                v.add(2, s * 1);
            }
        }
        assert_eq!((v.expected(), v.lost()), (10, 1));
        for ssrc in 3..10 {
            v.add(ssrc, 0);
        }
        assert_eq!(v.by_ssrc.len(), StreamCounters::MAX_SSRCS);
    }
}
