//! Allocations on the H.264 paths, counted: every RTP payload of the SFU packetizer (single NAL
//! unit, STAP-A, FU-A) is one heap allocation, the shared `Arc<[u8]>` itself, written without a
//! zeroing pass, and nothing else is allocated per access unit; the toolbox's NAL iterator
//! allocates nothing. Its own test binary, because it installs a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use deltacast::egress::sfu::packetizer::{depacketize_annexb, H264Packetizer, FU_A, STAP_A};
use deltacast::media::codec::h264::Nalus;

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static ZEROED: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only adds counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        ZEROED.fetch_add(1, Ordering::Relaxed);
        self.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn counts() -> (usize, usize, usize) {
    (
        ALLOCS.load(Ordering::SeqCst),
        ZEROED.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    )
}

/// The only test in this binary, so no other thread allocates while it counts.
#[test]
fn one_allocation_per_payload_and_no_zeroing() {
    let sps = Bytes::from_static(&[0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40]);
    let pps = Bytes::from_static(&[0x68, 0xce, 0x3c, 0x80]);
    let p = H264Packetizer::new(4, vec![sps.clone()], vec![pps.clone()], 1200).unwrap();
    // An IDR of 5,000 bytes (FU-A) and a small SEI (single NAL unit); the SPS/PPS come from the
    // avcC as one STAP-A.
    let idr: Vec<u8> = std::iter::once(0x65u8)
        .chain((0..5000u32).map(|i| (i * 7) as u8))
        .collect();
    let sei = [0x06u8, 5, 1, 0x80];
    let mut au = Vec::new();
    for n in [&sei[..], &idr] {
        au.extend_from_slice(&(n.len() as u32).to_be_bytes());
        au.extend_from_slice(n);
    }
    let mut out = Vec::with_capacity(64);

    let before = counts();
    p.packetize(&au, true, &mut out).unwrap();
    let after = counts();

    let types: Vec<u8> = out.iter().map(|x| x.data[0] & 0x1f).collect();
    assert_eq!(types[0], STAP_A);
    assert_eq!(types[1], 6);
    assert_eq!(types[2..], [FU_A; 5]);
    let allocs = after.0 - before.0;
    assert_eq!(allocs, out.len(), "allocations for {} payloads", out.len());
    assert_eq!(after.1 - before.1, 0, "zeroed allocations");
    // Each allocation is the Arc's header (two counters) and the payload, nothing more.
    let payload: usize = out.iter().map(|x| x.data.len()).sum();
    let bytes = after.2 - before.2;
    assert!(
        bytes <= payload + out.len() * 24,
        "{bytes} bytes for {payload}"
    );

    // And the payloads are right.
    let refs: Vec<&[u8]> = out.iter().map(|x| &x.data[..]).collect();
    let mut want = Vec::new();
    for n in [&sps[..], &pps[..], &sei[..], &idr[..]] {
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(n);
    }
    assert_eq!(depacketize_annexb(&refs).unwrap(), want);

    // The NAL iterator, over the same units in both framings: no allocation.
    let annexb = want;
    let before = counts();
    let avcc_units = Nalus::avcc(&au, 4)
        .unwrap()
        .map(|n| n.unwrap().len())
        .sum::<usize>();
    let annexb_units = Nalus::annexb(&annexb)
        .map(|n| n.unwrap().len())
        .sum::<usize>();
    let after = counts();
    assert_eq!(
        (avcc_units, annexb_units),
        (sei.len() + idr.len(), annexb.len() - 16)
    );
    assert_eq!(
        after.0 - before.0,
        0,
        "allocations while iterating NAL units"
    );
}
