//! The one check of an SDP offer, for both WebRTC roles, run before any session state exists.
//! Its errors map to the status codes of RFC 9725 §4.2 (GUIDE §7):
//!
//! - 400 [`OfferError::Malformed`]: empty, unparsable, more than [`MAX_MLINES`] m-lines,
//!   duplicate `a=mid`, no `a=fingerprint`, ICE credentials missing or outside RFC 8839's
//!   grammar (`ice-ufrag` 4–256 and `ice-pwd` 22–256 ice-chars: letters, digits, `+`, `/`).
//! - 406 [`OfferError::UnsupportedMedia`]: no H.264 video m-line (video is relayed, never
//!   transcoded).
//! - 422 [`OfferError::UnsupportedSetup`]: a direction the role cannot use (a WHIP offer that
//!   receives, a WHEP offer that sends, an H.264 video m-line that does neither), or a DTLS
//!   fingerprint hash weaker than sha-256 (md5, sha-1). The DTLS stack verifies sha-256, so the
//!   fingerprint it will check must be that one (sha-384/512 alone are refused as well).

use str0m::change::SdpOffer;

/// Most m-lines an offer may have (one video, one audio, and room for data channels or extra
/// tracks that are left inactive).
pub const MAX_MLINES: usize = 16;
/// Longest `a=mid` value kept (RFC 8843 gives no limit; ours are one or two characters).
const MAX_MID_LEN: usize = 32;
/// Fingerprint hash functions accepted (RFC 8122 §5; md5 and sha-1 are too weak).
const STRONG_HASHES: [&str; 3] = ["sha-256", "sha-384", "sha-512"];
/// The one the DTLS stack (str0m) verifies a peer certificate with.
const VERIFIED_HASH: &str = "sha-256";

/// Which side of the media the offerer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// WHIP: the offerer sends media to this server.
    Publisher,
    /// WHEP: the offerer receives media from this server.
    Viewer,
}

impl Role {
    pub fn protocol(self) -> &'static str {
        match self {
            Role::Publisher => "WHIP",
            Role::Viewer => "WHEP",
        }
    }

    /// Directions of an m-line that carry media the way this role needs.
    fn usable(self, direction: &str) -> bool {
        match self {
            Role::Publisher => matches!(direction, "sendonly" | "sendrecv"),
            Role::Viewer => matches!(direction, "recvonly" | "sendrecv"),
        }
    }

    /// The one-way direction that is the opposite of what this role needs.
    fn opposite(self) -> &'static str {
        match self {
            Role::Publisher => "recvonly",
            Role::Viewer => "sendonly",
        }
    }
}

/// Why an offer is refused; the HTTP layer maps each to its status code (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("malformed SDP offer: {0}")]
    Malformed(String),
    #[error("{0}")]
    UnsupportedMedia(String),
    #[error("{0}")]
    UnsupportedSetup(String),
}

/// An offer that passed the check.
#[derive(Debug)]
pub struct Offer {
    pub sdp: SdpOffer,
    /// The m-lines' ids, in order (see [`mids`]).
    pub mids: Vec<String>,
    /// An audio m-line offers Opus.
    pub opus: bool,
    /// Video codecs offered (for messages).
    pub video_codecs: Vec<String>,
}

/// The `a=mid:` values of an SDP, in order (empty and over-long ones left out).
pub fn mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .filter(|m| !m.is_empty() && m.len() <= MAX_MID_LEN)
        .map(|m| m.to_string())
        .take(4 * MAX_MLINES)
        .collect()
}

/// The session part (before the first m-line) or one media section of an offer.
#[derive(Default)]
struct Section<'a> {
    /// `video`, `audio`, `application`…; empty for the session part.
    kind: &'a str,
    /// Port 0: the offerer rejected this m-line.
    rejected: bool,
    mid: Option<&'a str>,
    /// `a=sendrecv` / `sendonly` / `recvonly` / `inactive`.
    direction: Option<&'a str>,
    /// rtpmap encoding names, upper case.
    codecs: Vec<String>,
    /// (hash function, lower case).
    fingerprints: Vec<String>,
    ufrags: Vec<&'a str>,
    pwds: Vec<&'a str>,
}

impl Section<'_> {
    fn is_media(&self) -> bool {
        !self.rejected && matches!(self.kind, "audio" | "video")
    }
}

/// Split an offer into its session part and media sections. The caller bounds the m-line count.
fn sections(sdp: &str) -> (Section<'_>, Vec<Section<'_>>) {
    let mut session = Section::default();
    let mut media: Vec<Section<'_>> = Vec::new();
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            let mut it = m.split_whitespace();
            let kind = it.next().unwrap_or("");
            let port = it.next().unwrap_or("");
            media.push(Section {
                kind,
                rejected: port.split('/').next() == Some("0"),
                ..Section::default()
            });
            continue;
        }
        let Some(attr) = line.strip_prefix("a=") else {
            continue;
        };
        let (name, value) = attr.split_once(':').unwrap_or((attr, ""));
        let s = media.last_mut().unwrap_or(&mut session);
        match name {
            "mid" => s.mid = Some(value),
            "sendrecv" | "sendonly" | "recvonly" | "inactive" => s.direction = Some(name),
            "rtpmap" => {
                let codec = value
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.split('/').next())
                    .unwrap_or("");
                s.codecs.push(codec.to_ascii_uppercase());
            }
            "fingerprint" => {
                let hash = value.split_whitespace().next().unwrap_or("");
                s.fingerprints.push(hash.to_ascii_lowercase());
            }
            "ice-ufrag" => s.ufrags.push(value),
            "ice-pwd" => s.pwds.push(value),
            _ => {}
        }
    }
    (session, media)
}

/// RFC 8839 §5.4: `ice-char = ALPHA / DIGIT / "+" / "/"`, with a length range per attribute.
fn ice_credential(
    attr: &str,
    values: &[&str],
    len: std::ops::RangeInclusive<usize>,
) -> Result<(), OfferError> {
    if values.is_empty() {
        return Err(OfferError::Malformed(format!(
            "no a={attr} (ICE needs one, RFC 8839)"
        )));
    }
    for v in values {
        let n = v.chars().count();
        if !len.contains(&n) {
            return Err(OfferError::Malformed(format!(
                "a={attr} is {n} characters; RFC 8839 allows {} to {}",
                len.start(),
                len.end()
            )));
        }
        if !v
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
        {
            return Err(OfferError::Malformed(format!(
                "a={attr} has characters outside RFC 8839's ice-char (letters, digits, '+', '/')"
            )));
        }
    }
    Ok(())
}

/// A value from the offer, short and printable enough to put in an error message.
fn shown(v: &str) -> String {
    v.chars()
        .take(MAX_MID_LEN)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Check `offer` for `role` (see the module docs for what is refused and with which error).
pub fn check(offer: &str, role: Role) -> Result<Offer, OfferError> {
    if offer.trim().is_empty() {
        return Err(OfferError::Malformed("empty body".into()));
    }
    let mlines = offer.lines().filter(|l| l.starts_with("m=")).count();
    if mlines > MAX_MLINES {
        return Err(OfferError::Malformed(format!(
            "{mlines} m-lines; a {} offer has at most {MAX_MLINES}",
            role.protocol()
        )));
    }
    let (session, media) = sections(offer);
    // str0m accepts duplicate MIDs (two m-lines would share one id).
    let mut seen: Vec<&str> = Vec::with_capacity(media.len());
    for m in media.iter().filter_map(|s| s.mid) {
        if seen.contains(&m) {
            return Err(OfferError::Malformed(format!(
                "duplicate a=mid:{}",
                shown(m)
            )));
        }
        seen.push(m);
    }
    let sdp = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;

    // ICE credentials (session level, or per m-line as browsers write them).
    let all = || std::iter::once(&session).chain(media.iter());
    let ufrags: Vec<&str> = all().flat_map(|s| s.ufrags.iter().copied()).collect();
    let pwds: Vec<&str> = all().flat_map(|s| s.pwds.iter().copied()).collect();
    ice_credential("ice-ufrag", &ufrags, 4..=256)?;
    ice_credential("ice-pwd", &pwds, 22..=256)?;

    // DTLS fingerprints.
    let fingerprints: Vec<&str> = all()
        .flat_map(|s| s.fingerprints.iter().map(String::as_str))
        .collect();
    if fingerprints.is_empty() {
        return Err(OfferError::Malformed(
            "no a=fingerprint (DTLS-SRTP needs the certificate's fingerprint, RFC 8122)".into(),
        ));
    }
    if let Some(weak) = fingerprints.iter().find(|h| !STRONG_HASHES.contains(h)) {
        return Err(OfferError::UnsupportedSetup(format!(
            "a=fingerprint uses '{}'; this server accepts sha-256, sha-384 or sha-512 \
             certificate fingerprints (RFC 8122)",
            shown(weak)
        )));
    }
    // The set the DTLS stack takes: session level if any, else the first m-line that has one.
    let effective = if session.fingerprints.is_empty() {
        media
            .iter()
            .map(|s| &s.fingerprints)
            .find(|f| !f.is_empty())
            .expect("a fingerprint was found above")
    } else {
        &session.fingerprints
    };
    if !effective.iter().any(|h| h == VERIFIED_HASH) {
        return Err(OfferError::UnsupportedSetup(format!(
            "the DTLS fingerprint is {}; this server verifies {VERIFIED_HASH} fingerprints, so \
             the offer needs one",
            effective.join(", ")
        )));
    }

    // Media: H.264 video, in a direction this role can use.
    let mut video_codecs: Vec<String> = Vec::new();
    let mut opus = false;
    for s in media.iter().filter(|s| s.is_media()) {
        for c in &s.codecs {
            match s.kind {
                "video"
                    if !["RTX", "RED", "ULPFEC", "FLEXFEC-03"].contains(&c.as_str())
                        && !video_codecs.contains(c)
                        && video_codecs.len() < 16 =>
                {
                    video_codecs.push(shown(c))
                }
                "audio" if c == "OPUS" => opus = true,
                _ => {}
            }
        }
    }
    let h264: Vec<&Section<'_>> = media
        .iter()
        .filter(|s| s.is_media() && s.kind == "video" && s.codecs.iter().any(|c| c == "H264"))
        .collect();
    if h264.is_empty() {
        let offered = if video_codecs.is_empty() {
            "no video".to_string()
        } else {
            video_codecs.join(", ")
        };
        return Err(OfferError::UnsupportedMedia(match role {
            Role::Publisher => format!(
                "the offer has no H.264 video (offered: {offered}); this server ingests H.264 \
                 video with optional Opus audio, because video is relayed without transcoding"
            ),
            Role::Viewer => format!(
                "the offer has no H.264 video (offered: {offered}); this server sends H.264 \
                 (packetization-mode=1) and Opus only"
            ),
        }));
    }
    // str0m's parser wants exactly one direction attribute per m-line.
    let direction = |s: &Section<'_>| s.direction.unwrap_or("sendrecv").to_string();
    let (verb, want) = match role {
        Role::Publisher => ("sends", "a=sendonly"),
        Role::Viewer => ("receives", "a=recvonly"),
    };
    if let Some(s) = media
        .iter()
        .filter(|s| s.is_media())
        .find(|s| direction(s) == role.opposite())
    {
        return Err(OfferError::UnsupportedSetup(format!(
            "the offer's {} m-line (mid {}) is {}: a {} offer {verb} media ({want})",
            s.kind,
            shown(s.mid.unwrap_or("-")),
            role.opposite(),
            role.protocol()
        )));
    }
    if !h264.iter().any(|s| role.usable(&direction(s))) {
        return Err(OfferError::UnsupportedSetup(format!(
            "the offer's H.264 video m-line is {}: a {} offer {verb} video ({want})",
            direction(h264[0]),
            role.protocol()
        )));
    }
    Ok(Offer {
        sdp,
        mids: mids(offer),
        opus,
        video_codecs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser-like offer: session-level fingerprint, per-m-line ICE credentials.
    fn offer(direction: &str, codec: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n\
             a=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\n\
             m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
             a={direction}\r\na=rtcp-mux\r\na=setup:actpass\r\n\
             a=rtpmap:96 {codec}/90000\r\na=fmtp:96 packetization-mode=1;profile-level-id=42e01f\r\n\
             m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\n\
             a={direction}\r\na=rtcp-mux\r\na=setup:actpass\r\na=rtpmap:111 opus/48000/2\r\n"
        )
    }

    fn setup_err(r: Result<Offer, OfferError>) -> String {
        match r {
            Err(OfferError::UnsupportedSetup(m)) => m,
            other => panic!("expected 422 (unsupported setup), got {other:?}"),
        }
    }

    fn malformed(r: Result<Offer, OfferError>) -> String {
        match r {
            Err(OfferError::Malformed(m)) => m,
            other => panic!("expected 400 (malformed), got {other:?}"),
        }
    }

    #[test]
    fn accepts_what_each_role_uses() {
        let o = check(&offer("sendonly", "H264"), Role::Publisher).unwrap();
        assert_eq!(o.mids, ["0", "1"]);
        assert!(o.opus);
        assert_eq!(o.video_codecs, ["H264"]);
        check(&offer("recvonly", "H264"), Role::Viewer).unwrap();
        for role in [Role::Publisher, Role::Viewer] {
            check(&offer("sendrecv", "H264"), role).unwrap();
        }
        // Every m-line needs its direction (str0m's parser insists).
        malformed(check(&offer("rtcp-mux", "H264"), Role::Viewer));
    }

    #[test]
    fn direction_per_role() {
        let m = setup_err(check(&offer("recvonly", "H264"), Role::Publisher));
        assert!(m.contains("recvonly") && m.contains("WHIP"), "{m}");
        for d in ["sendonly", "inactive"] {
            let m = setup_err(check(&offer(d, "H264"), Role::Viewer));
            assert!(m.contains(d) && m.contains("WHEP"), "{m}");
        }
        setup_err(check(&offer("inactive", "H264"), Role::Publisher));
        // Audio the wrong way round is refused too, H.264 video the right way or not.
        let s = offer("sendonly", "H264").replacen("a=sendonly", "a=recvonly", 1);
        assert!(setup_err(check(&s, Role::Publisher)).contains("video"));
        let s = offer("recvonly", "H264").replacen("a=recvonly", "a=sendrecv", 1);
        assert!(setup_err(check(&s, Role::Publisher)).contains("audio"));
        // A rejected (port 0) m-line does not count.
        let s = offer("sendonly", "H264").replace(
            "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\na=sendonly",
            "m=audio 0 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n\
             a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdef0123456789\r\na=recvonly",
        );
        assert_ne!(s, offer("sendonly", "H264"));
        check(&s, Role::Publisher).unwrap();
    }

    #[test]
    fn fingerprint_hash_sha256_or_stronger() {
        let good = offer("sendonly", "H264");
        for weak in ["md5", "sha-1", "SHA-1"] {
            let s = good.replace("fingerprint:sha-256", &format!("fingerprint:{weak}"));
            let m = setup_err(check(&s, Role::Publisher));
            assert!(m.contains(&weak.to_ascii_lowercase()), "{m}");
        }
        let upper = good.replace("fingerprint:sha-256", "fingerprint:SHA-256");
        check(&upper, Role::Publisher).unwrap();
        // A weak one next to a strong one is still refused.
        let both = good.replace(
            "a=fingerprint:sha-256",
            "a=fingerprint:sha-1 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33\r\na=fingerprint:sha-256",
        );
        setup_err(check(&both, Role::Publisher));
        // Strong but not what DTLS verifies: refused with the reason.
        let only512 = good.replace("fingerprint:sha-256", "fingerprint:sha-512");
        let m = setup_err(check(&only512, Role::Publisher));
        assert!(m.contains("sha-256"), "{m}");
        let plus512 = good.replace(
            "a=fingerprint:sha-256",
            "a=fingerprint:sha-512 00:11\r\na=fingerprint:sha-256",
        );
        check(&plus512, Role::Publisher).unwrap();
        // None at all: malformed.
        let none: String = good
            .lines()
            .filter(|l| !l.starts_with("a=fingerprint"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        malformed(check(&none, Role::Publisher));
    }

    #[test]
    fn ice_credentials_per_rfc_8839() {
        let good = offer("recvonly", "H264");
        let ufrag = |u: &str| good.replace("a=ice-ufrag:abcd", &format!("a=ice-ufrag:{u}"));
        let pwd = |p: &str| {
            good.replace(
                "a=ice-pwd:0123456789abcdef0123456789",
                &format!("a=ice-pwd:{p}"),
            )
        };
        check(&ufrag(&"u".repeat(256)), Role::Viewer).unwrap();
        check(&ufrag("a+/b"), Role::Viewer).unwrap();
        check(&pwd(&"p".repeat(22)), Role::Viewer).unwrap();
        check(&pwd(&"p".repeat(256)), Role::Viewer).unwrap();
        for bad in [
            ufrag("abc"),
            ufrag(&"u".repeat(257)),
            ufrag(&"u".repeat(5000)),
        ] {
            let m = malformed(check(&bad, Role::Viewer));
            assert!(m.contains("ice-ufrag") && m.len() < 200, "{m}");
        }
        for bad in [pwd(&"p".repeat(21)), pwd(&"p".repeat(257))] {
            let m = malformed(check(&bad, Role::Viewer));
            assert!(m.contains("ice-pwd"), "{m}");
        }
        malformed(check(&ufrag("ab-cd"), Role::Viewer));
        let none: String = good
            .lines()
            .filter(|l| !l.starts_with("a=ice-pwd"))
            .map(|l| format!("{l}\r\n"))
            .collect();
        malformed(check(&none, Role::Viewer));
    }

    #[test]
    fn malformed_and_unsupported_media() {
        malformed(check("", Role::Publisher));
        malformed(check("v=0\r\nnot sdp\r\n", Role::Viewer));
        let good = offer("sendonly", "H264");
        let dup = good.replace("a=mid:1", "a=mid:0");
        assert!(malformed(check(&dup, Role::Publisher)).contains("duplicate"));
        let video = &good[good.find("m=video").unwrap()..good.find("m=audio").unwrap()];
        let mut many = good.clone();
        for i in 0..MAX_MLINES {
            many.push_str(&video.replace("a=mid:0", &format!("a=mid:x{i}")));
        }
        assert!(malformed(check(&many, Role::Publisher)).contains("m-lines"));
        match check(&offer("sendonly", "VP8"), Role::Publisher) {
            Err(OfferError::UnsupportedMedia(m)) => {
                assert!(m.contains("VP8") && m.contains("H.264"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        match check(&offer("recvonly", "VP8"), Role::Viewer) {
            Err(OfferError::UnsupportedMedia(m)) => assert!(m.contains("H.264"), "{m}"),
            other => panic!("{other:?}"),
        }
        // H.264 named only in an audio section is no H.264 video.
        let odd = offer("recvonly", "VP8").replace("opus/48000/2", "H264/90000");
        assert!(matches!(
            check(&odd, Role::Viewer),
            Err(OfferError::UnsupportedMedia(_))
        ));
    }

    #[test]
    fn mids_are_bounded() {
        let sdp = format!(
            "a=mid:0\r\na=mid:\r\na=mid:{}\r\na=mid:v\r\n",
            "x".repeat(40)
        );
        assert_eq!(mids(&sdp), ["0", "v"]);
    }
}
