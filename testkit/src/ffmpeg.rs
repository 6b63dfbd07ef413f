//! ffmpeg as a peer: an RTMP publisher of the test pattern ([`Ffmpeg`]), an `ffmpeg -listen`
//! RTMP receiver ([`FfmpegListen`]), and ffprobe readings of what a receiver recorded.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::process::{kill_child, require_tool, run_bounded, tail_of, wait_listening};

/// An ffmpeg child process (publisher). Killed on drop; its log is printed if the test panics.
pub struct Ffmpeg {
    child: Child,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
    label: String,
}

/// Input and encoder arguments of the standard test publisher: 30 fps test pattern with a 1 s
/// GOP (no B-frames) and a 440 Hz AAC tone.
pub fn h264_aac_args() -> Vec<String> {
    h264_aac_args_with("testsrc=size=320x240:rate=30", &[])
}

/// [`h264_aac_args`] from the lavfi video source `video` (e.g. a bigger, noisier picture), with
/// `video_extra` encoder options (e.g. a bitrate).
pub fn h264_aac_args_with(video: &str, video_extra: &[&str]) -> Vec<String> {
    let head = ["-re", "-f", "lavfi", "-i", video, "-f", "lavfi", "-i"];
    let codec = [
        "sine=frequency=440:sample_rate=48000",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-tune",
        "zerolatency",
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-bf",
        "0",
    ];
    let tail = ["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k"];
    head.iter()
        .chain(codec.iter())
        .chain(video_extra.iter())
        .chain(tail.iter())
        .map(|s| s.to_string())
        .collect()
}

impl Ffmpeg {
    /// Publish the standard H.264 + AAC test program to `url`.
    pub fn publish(label: &str, url: &str) -> Ffmpeg {
        Self::spawn(label, &h264_aac_args(), url)
    }

    /// Run ffmpeg with `args` (inputs and encoders) writing FLV to `url`.
    pub fn spawn(label: &str, args: &[String], url: &str) -> Ffmpeg {
        require_tool("ffmpeg");
        let dir = tempfile::Builder::new()
            .prefix(&format!("ffmpeg-{label}-"))
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("ffmpeg.log");
        let f = File::create(&log).expect("ffmpeg log");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"])
            .args(args)
            .args(["-f", "flv", url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ffmpeg: {e}"));
        Ffmpeg {
            child,
            log,
            _dir: dir,
            label: label.to_string(),
        }
    }

    /// Wait up to `timeout` for ffmpeg to exit; None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kill it abruptly (SIGKILL): the server sees the TCP connection drop.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// The lines of ffmpeg's log that report an error (why it gave up).
    pub fn error_lines(&self) -> String {
        let text = tail_of(&self.log, 400);
        let errs: Vec<&str> = text
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("fail") || l.contains("refused")
            })
            .collect();
        errs.join("\n")
    }
}

impl Drop for Ffmpeg {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] ffmpeg log, last 30 lines ────\n{}\n────",
                self.label,
                self.log_tail(30)
            );
        }
    }
}

// ───────────────────────────── ffmpeg -listen ─────────────────────────────

/// `ffmpeg -listen 1 -i rtmp://127.0.0.1:PORT/app/key -c copy -f flv OUT`: one RTMP publish in,
/// written to a file.
pub struct FfmpegListen {
    child: Child,
    pub port: u16,
    pub out: PathBuf,
    log: PathBuf,
    label: String,
}

impl FfmpegListen {
    pub fn start(label: &str, port: u16, out: &Path) -> FfmpegListen {
        require_tool("ffmpeg");
        let log = out.with_extension("log");
        let child = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"])
            .args(["-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/app/key"))
            .args(["-c", "copy", "-f", "flv", "-y"])
            .arg(out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start ffmpeg: {e}"));
        let f = FfmpegListen {
            child,
            port,
            out: out.to_path_buf(),
            log,
            label: label.into(),
        };
        wait_listening(port, Duration::from_secs(10), "ffmpeg -listen");
        f
    }

    pub fn url(&self) -> String {
        format!("rtmp://127.0.0.1:{}/app/key", self.port)
    }

    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Wait for ffmpeg to finish (it does when the publish ends); false on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_of(&self.log, n)
    }
}

impl Drop for FfmpegListen {
    fn drop(&mut self) {
        kill_child(&mut self.child);
        if std::thread::panicking() {
            eprintln!(
                "──── [{}] ffmpeg -listen log, last 20 lines ────\n{}\n────",
                self.label,
                self.log_tail(20)
            );
        }
    }
}

// ───────────────────────────── ffprobe ─────────────────────────────

/// (pts seconds, keyframe) of every packet of one stream type (`v` or `a`) of a media file.
pub fn packets(file: &Path, stream: &str) -> Vec<(f64, bool)> {
    require_tool("ffprobe");
    let (st, out, err) = run_bounded(
        Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", stream])
            .args(["-show_entries", "packet=pts_time,flags", "-of", "csv=p=0"])
            .arg(file),
        Duration::from_secs(60),
    );
    assert!(st.success(), "ffprobe {}: {err}", file.display());
    out.lines()
        .filter_map(|l| {
            let mut it = l.split(',');
            let pts = it.next()?.trim().parse::<f64>().ok()?;
            let flags = it.next().unwrap_or("");
            Some((pts, flags.starts_with('K')))
        })
        .collect()
}

/// Decode a file completely; returns ffmpeg's error output (empty when it decoded cleanly).
pub fn decode_errors(file: &Path) -> String {
    let (_, _, err) = run_bounded(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
            .arg(file)
            .args(["-f", "null", "-"]),
        Duration::from_secs(60),
    );
    err
}

/// Largest gap between consecutive packet times.
pub fn max_gap(p: &[(f64, bool)]) -> f64 {
    p.windows(2).map(|w| w[1].0 - w[0].0).fold(0.0, f64::max)
}
