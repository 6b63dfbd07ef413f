//! LL-HLS media playlists as a player reads them: a parser and URI resolution.

use std::collections::HashMap;

/// Resolve a URI found in the playlist at `base_path` (an absolute path such as
/// `/hls/s/index.m3u8`) the way a player does (RFC 3986 reference resolution, paths only).
pub fn resolve(base_path: &str, uri: &str) -> String {
    if let Some(rest) = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))
    {
        return match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        };
    }
    let (uri_path, query) = match uri.find('?') {
        Some(i) => (&uri[..i], &uri[i..]),
        None => (uri, ""),
    };
    let joined = if uri_path.starts_with('/') {
        uri_path.to_string()
    } else if uri_path.is_empty() {
        base_path.split('?').next().unwrap().to_string()
    } else {
        let base = base_path.split('?').next().unwrap();
        let dir = &base[..=base.rfind('/').unwrap_or(0)];
        format!("{dir}{uri_path}")
    };
    let mut out: Vec<&str> = Vec::new();
    let parts: Vec<&str> = joined.split('/').collect();
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "." => {
                if i == parts.len() - 1 {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == parts.len() - 1 {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let mut p = out.join("/");
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    p + query
}

#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub uri: String,
    pub duration: f64,
    pub independent: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    pub msn: u64,
    pub uri: String,
    pub duration: f64,
    /// EXT-X-DISCONTINUITY stands before this segment.
    pub discontinuity: bool,
    pub program_date_time: Option<String>,
    /// EXT-X-PART lines listed before this segment's URI.
    pub parts: Vec<Part>,
}

/// A parsed LL-HLS media playlist.
#[derive(Clone, Debug, Default)]
pub struct Playlist {
    pub text: String,
    /// Every `#EXT…` tag line in order: (name, value after the colon).
    pub tags: Vec<(String, String)>,
    pub version: Option<u32>,
    pub target_duration: Option<f64>,
    pub media_sequence: u64,
    pub discontinuity_sequence: Option<u64>,
    pub part_target: Option<f64>,
    pub server_control: HashMap<String, String>,
    pub map_uri: Option<String>,
    /// EXT-X-SKIP:SKIPPED-SEGMENTS
    pub skipped: Option<u64>,
    pub segments: Vec<Segment>,
    /// Parts of the segment still being produced (after the last URI line).
    pub trailing_parts: Vec<Part>,
    pub preload_hint: Option<HashMap<String, String>>,
    pub endlist: bool,
    /// A discontinuity tag among the trailing parts (before the next segment's URI).
    pub trailing_discontinuity: bool,
}

/// Parse an attribute list (`A=B,C="x,y"`) into a map with quotes removed.
pub fn parse_attrs(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let key_start = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b',' {
            i += 1;
        }
        let key = s[key_start..i].trim().to_string();
        let mut val = String::new();
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            if i < bytes.len() && bytes[i] == b'"' {
                i += 1;
                let vs = i;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += 1;
                }
                val = s[vs..i].to_string();
                i += 1; // closing quote
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
            } else {
                let vs = i;
                while i < bytes.len() && bytes[i] != b',' {
                    i += 1;
                }
                val = s[vs..i].trim().to_string();
            }
        }
        if !key.is_empty() {
            out.insert(key, val);
        }
        i += 1; // comma
    }
    out
}

impl Playlist {
    pub fn parse(text: &str) -> Result<Playlist, String> {
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some("#EXTM3U") {
            return Err("playlist does not start with #EXTM3U".into());
        }
        let mut p = Playlist {
            text: text.to_string(),
            ..Default::default()
        };
        let mut pending_parts: Vec<Part> = Vec::new();
        let mut pending_disc = false;
        let mut pending_pdt: Option<String> = None;
        let mut pending_dur: Option<f64> = None;
        let mut segments: Vec<Segment> = Vec::new();
        for line in lines {
            if let Some(tag) = line.strip_prefix('#') {
                if !tag.starts_with("EXT") {
                    continue; // comment
                }
                let (name, value) = match tag.split_once(':') {
                    Some((n, v)) => (n.to_string(), v.to_string()),
                    None => (tag.to_string(), String::new()),
                };
                let num = |v: &str| -> Result<f64, String> {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|_| format!("#{name}: bad number {v:?}"))
                };
                match name.as_str() {
                    "EXT-X-VERSION" => p.version = Some(num(&value)? as u32),
                    "EXT-X-TARGETDURATION" => p.target_duration = Some(num(&value)?),
                    "EXT-X-MEDIA-SEQUENCE" => p.media_sequence = num(&value)? as u64,
                    "EXT-X-DISCONTINUITY-SEQUENCE" => {
                        p.discontinuity_sequence = Some(num(&value)? as u64)
                    }
                    "EXT-X-PART-INF" => {
                        let a = parse_attrs(&value);
                        p.part_target = Some(num(a
                            .get("PART-TARGET")
                            .ok_or("PART-INF without PART-TARGET")?)?);
                    }
                    "EXT-X-SERVER-CONTROL" => p.server_control = parse_attrs(&value),
                    "EXT-X-MAP" => {
                        p.map_uri = Some(
                            parse_attrs(&value)
                                .remove("URI")
                                .ok_or("EXT-X-MAP without URI")?,
                        )
                    }
                    "EXT-X-SKIP" => {
                        let a = parse_attrs(&value);
                        p.skipped = Some(num(a
                            .get("SKIPPED-SEGMENTS")
                            .ok_or("EXT-X-SKIP without SKIPPED-SEGMENTS")?)?
                            as u64);
                    }
                    "EXT-X-PROGRAM-DATE-TIME" => pending_pdt = Some(value.clone()),
                    "EXT-X-DISCONTINUITY" => pending_disc = true,
                    "EXTINF" => pending_dur = Some(num(value.split(',').next().unwrap_or(""))?),
                    "EXT-X-PART" => {
                        let a = parse_attrs(&value);
                        pending_parts.push(Part {
                            uri: a.get("URI").ok_or("EXT-X-PART without URI")?.clone(),
                            duration: num(a
                                .get("DURATION")
                                .ok_or("EXT-X-PART without DURATION")?)?,
                            independent: a.get("INDEPENDENT").map(String::as_str) == Some("YES"),
                        });
                    }
                    "EXT-X-PRELOAD-HINT" => p.preload_hint = Some(parse_attrs(&value)),
                    "EXT-X-ENDLIST" => p.endlist = true,
                    _ => {}
                }
                p.tags.push((name, value));
            } else {
                let dur = pending_dur
                    .take()
                    .ok_or_else(|| format!("URI line {line:?} without EXTINF"))?;
                segments.push(Segment {
                    msn: 0, // numbered below, once MEDIA-SEQUENCE and SKIP are known
                    uri: line.to_string(),
                    duration: dur,
                    discontinuity: std::mem::take(&mut pending_disc),
                    program_date_time: pending_pdt.take(),
                    parts: std::mem::take(&mut pending_parts),
                });
            }
        }
        let first = p.media_sequence + p.skipped.unwrap_or(0);
        for (i, seg) in segments.iter_mut().enumerate() {
            seg.msn = first + i as u64;
        }
        p.segments = segments;
        p.trailing_parts = pending_parts;
        p.trailing_discontinuity = pending_disc;
        Ok(p)
    }

    /// MSN of the segment being produced (the one after the last complete segment).
    pub fn next_msn(&self) -> u64 {
        self.media_sequence + self.skipped.unwrap_or(0) + self.segments.len() as u64
    }

    /// Last complete segment's MSN, if any.
    pub fn last_msn(&self) -> Option<u64> {
        self.segments.last().map(|s| s.msn)
    }

    /// (msn, part index) of the next part to be produced: the one the preload hint names.
    pub fn next_part(&self) -> (u64, u64) {
        (self.next_msn(), self.trailing_parts.len() as u64)
    }

    /// The playlist lists part `part` of segment `msn` (or that segment complete).
    pub fn has_part(&self, msn: u64, part: u64) -> bool {
        if msn < self.next_msn() {
            return true;
        }
        msn == self.next_msn() && (self.trailing_parts.len() as u64) > part
    }

    pub fn has_tag(&self, name: &str) -> bool {
        self.tags.iter().any(|(n, _)| n == name)
    }

    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all_parts(&self) -> impl Iterator<Item = &Part> {
        self.segments
            .iter()
            .flat_map(|s| s.parts.iter())
            .chain(self.trailing_parts.iter())
    }

    /// Every media URI a player may download from this playlist (map, segments, parts), not
    /// the preload hint.
    pub fn media_uris(&self) -> Vec<String> {
        let mut v: Vec<String> = self.map_uri.iter().cloned().collect();
        for s in &self.segments {
            v.extend(s.parts.iter().map(|p| p.uri.clone()));
            v.push(s.uri.clone());
        }
        v.extend(self.trailing_parts.iter().map(|p| p.uri.clone()));
        v
    }

    pub fn has_discontinuity(&self) -> bool {
        self.has_tag("EXT-X-DISCONTINUITY")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_like_a_player() {
        let b = "/hls/s/index.m3u8";
        assert_eq!(resolve(b, "init.mp4"), "/hls/s/init.mp4");
        assert_eq!(resolve(b, "g1/p/3.4.m4s?x=1"), "/hls/s/g1/p/3.4.m4s?x=1");
        assert_eq!(resolve(b, "../t/a.mp4"), "/hls/t/a.mp4");
        assert_eq!(resolve(b, "/abs/x"), "/abs/x");
        assert_eq!(resolve(b, "http://h:1/hls/s/x"), "/hls/s/x");
        assert_eq!(resolve(b, "./a/./b"), "/hls/s/a/b");
    }

    #[test]
    fn parse_ll_hls_playlist() {
        let text = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-TARGETDURATION:2\n\
#EXT-X-PART-INF:PART-TARGET=0.2\n\
#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=0.6,CAN-SKIP-UNTIL=12.0\n\
#EXT-X-MEDIA-SEQUENCE:10\n#EXT-X-MAP:URI=\"g/init.mp4\"\n\
#EXT-X-PROGRAM-DATE-TIME:2024-01-01T00:00:00.000Z\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/10.1.m4s\"\n#EXTINF:0.4,\ng/10.m4s\n\
#EXT-X-DISCONTINUITY\n#EXTINF:0.4,\ng/11.m4s\n\
#EXT-X-PART:DURATION=0.2,URI=\"g/12.0.m4s\",INDEPENDENT=YES\n\
#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"g/12.1.m4s\"\n";
        let p = Playlist::parse(text).unwrap();
        assert_eq!(p.target_duration, Some(2.0));
        assert_eq!(p.part_target, Some(0.2));
        assert_eq!(p.server_control["PART-HOLD-BACK"], "0.6");
        assert_eq!(p.map_uri.as_deref(), Some("g/init.mp4"));
        assert_eq!(p.segments.len(), 2);
        assert_eq!(p.segments[0].msn, 10);
        assert_eq!(p.segments[0].parts.len(), 2);
        assert!(p.segments[0].parts[0].independent);
        assert!(!p.segments[0].parts[1].independent);
        assert!(p.segments[1].discontinuity && !p.segments[0].discontinuity);
        assert_eq!(p.next_part(), (12, 1));
        assert!(p.has_part(12, 0) && !p.has_part(12, 1) && p.has_part(11, 5));
        assert_eq!(p.preload_hint.as_ref().unwrap()["URI"], "g/12.1.m4s");
        assert_eq!(p.media_uris().len(), 6);
        let d = Playlist::parse(
            "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:3\n#EXT-X-SKIP:SKIPPED-SEGMENTS=4\n#EXTINF:1,\na\n",
        )
        .unwrap();
        assert_eq!(d.skipped, Some(4));
        assert_eq!(d.segments[0].msn, 7);
    }
}
