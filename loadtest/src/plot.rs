//! `plot`: pictures of a results file with `plotters`: joined viewers, WebRTC loss, late LL-HLS
//! parts and stalls, the relay's CPU and RSS over time, and the first-frame / first-part CDFs.
//! SVG by default; PNG through the bitmap backend. Text is drawn with a TTF font found on the
//! system (DejaVu Sans by default; `DELTACAST_LOAD_FONT` names another).

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::report::Results;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Svg,
    Png,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> Result<(), String> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let env = std::env::var("DELTACAST_LOAD_FONT").ok();
        let candidates: Vec<&str> = env.iter().map(String::as_str).chain(FONTS.iter().copied()).collect();
        for c in &candidates {
            if let Ok(b) = std::fs::read(c) {
                let b: &'static [u8] = Box::leak(b.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, b)
                    .map_err(|_| format!("{c}: not a usable TTF font"));
            }
        }
        Err(format!(
            "no TTF font found for the plot's text (tried {}); install fonts-dejavu-core or set DELTACAST_LOAD_FONT",
            candidates.join(", ")
        ))
    })
    .clone()
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, RGBColor, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE)?;
    let pts = series.iter().flat_map(|s| s.2.iter());
    let (mut x1, mut y1) = (1.0f64, 1.0f64);
    for &(x, y) in pts {
        x1 = x1.max(x);
        y1 = y1.max(y);
    }
    let mut c = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x1, 0f64..y1 * 1.1)?;
    c.configure_mesh().x_desc(x_label).y_desc(y_label).draw()?;
    for (name, color, p) in series {
        let col = *color;
        c.draw_series(LineSeries::new(p.iter().copied(), col.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], col.stroke_width(2)));
    }
    c.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// One chart: `series` (name, colour, points) over x, in a file `name`.
fn chart(
    path: &Path,
    format: Format,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, RGBColor, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let r = match format {
        Format::Svg => draw(
            SVGBackend::new(path, (960, 480)).into_drawing_area(),
            title,
            x_label,
            y_label,
            series,
        ),
        Format::Png => draw(
            BitMapBackend::new(path, (960, 480)).into_drawing_area(),
            title,
            x_label,
            y_label,
            series,
        ),
    };
    r.map_err(|e| format!("{}: {e}", path.display()))
}

fn cdf(sorted: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &x)| (x, (i + 1) as f64 * 100.0 / n))
        .collect()
}

/// Write the charts of `r` into `dir`; returns the files written.
pub fn plot(r: &Results, dir: &Path, format: Format) -> Result<Vec<PathBuf>, String> {
    register_font()?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let ext = match format {
        Format::Svg => "svg",
        Format::Png => "png",
    };
    let x = |s: &crate::report::Second| s.elapsed_s;
    let ser = &r.series;
    let pts = |f: &dyn Fn(&crate::report::Second) -> Option<f64>| -> Vec<(f64, f64)> {
        ser.iter().filter_map(|s| f(s).map(|y| (x(s), y))).collect()
    };
    let mut out = Vec::new();
    let mut emit = |name: &str,
                    title: &str,
                    xl: &str,
                    yl: &str,
                    s: Vec<(&str, RGBColor, Vec<(f64, f64)>)>|
     -> Result<(), String> {
        if s.iter().all(|(_, _, p)| p.is_empty()) {
            return Ok(());
        }
        let p = dir.join(format!("{name}.{ext}"));
        chart(&p, format, title, xl, yl, &s)?;
        out.push(p);
        Ok(())
    };
    let label = if r.label.is_empty() {
        String::new()
    } else {
        format!(" ({})", r.label)
    };
    emit(
        "joined",
        &format!("Joined viewers{label}"),
        "s",
        "viewers",
        vec![
            (
                "WebRTC joined",
                BLUE,
                pts(&|s| (r.totals.webrtc.target > 0).then_some(s.webrtc_joined as f64)),
            ),
            (
                "LL-HLS joined",
                GREEN,
                pts(&|s| (r.totals.hls.target > 0).then_some(s.hls_joined as f64)),
            ),
            (
                "failed",
                RED,
                pts(&|s| Some((s.webrtc_failed + s.hls_failed) as f64)),
            ),
        ],
    )?;
    if r.totals.webrtc.target > 0 {
        emit(
            "loss",
            &format!("WebRTC loss per second{label}"),
            "s",
            "loss %",
            vec![("loss %", RED, pts(&|s| Some(s.loss_pct)))],
        )?;
    }
    if r.totals.hls.target > 0 {
        emit(
            "late",
            &format!("LL-HLS late parts and stalls per second{label}"),
            "s",
            "count",
            vec![
                ("late parts", RED, pts(&|s| Some(s.late_parts as f64))),
                ("stalls", MAGENTA, pts(&|s| Some(s.stalls as f64))),
                ("errors", BLACK, pts(&|s| Some(s.hls_errors as f64))),
            ],
        )?;
    }
    emit(
        "cpu",
        &format!("CPU{label}"),
        "s",
        "% of one core",
        vec![
            ("server", BLUE, pts(&|s| s.server_cpu_pct)),
            ("load tool", CYAN, pts(&|s| Some(s.load_cpu_pct))),
        ],
    )?;
    emit(
        "rss",
        &format!("Server RSS{label}"),
        "s",
        "MiB",
        vec![(
            "server RSS",
            BLUE,
            pts(&|s| s.server_rss_kib.map(|k| k as f64 / 1024.0)),
        )],
    )?;
    let mut ff = r.first_frame_ms.clone();
    ff.sort_by(f64::total_cmp);
    let mut fp = r.first_part_ms.clone();
    fp.sort_by(f64::total_cmp);
    emit(
        "first_frame_cdf",
        &format!("Time to first frame / first part{label}"),
        "ms",
        "% of viewers",
        vec![
            ("WebRTC: POST → first frame", BLUE, cdf(&ff)),
            ("LL-HLS: start → first part", GREEN, cdf(&fp)),
        ],
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Second;

    #[test]
    fn plots_a_small_result_as_svg_and_png() {
        let mut r = Results::default();
        r.totals.webrtc.target = 2;
        r.totals.hls.target = 3;
        r.series = (0..5)
            .map(|i| Second {
                elapsed_s: i as f64 + 1.0,
                webrtc_joined: 2,
                hls_joined: 3,
                loss_pct: 0.1 * i as f64,
                late_parts: i,
                server_cpu_pct: Some(20.0),
                server_rss_kib: Some(50_000 + i * 10),
                load_cpu_pct: 5.0,
                ..Default::default()
            })
            .collect();
        r.first_frame_ms = vec![120.0, 90.0];
        r.first_part_ms = vec![300.0, 250.0, 280.0];
        let dir = tempfile::tempdir().unwrap();
        let svg = plot(&r, dir.path(), Format::Svg).unwrap();
        assert_eq!(svg.len(), 6, "{svg:?}");
        let text = std::fs::read_to_string(dir.path().join("joined.svg")).unwrap();
        assert!(text.contains("<svg") && text.contains("Joined viewers"));
        let png = plot(&r, &dir.path().join("png"), Format::Png).unwrap();
        let b = std::fs::read(&png[0]).unwrap();
        assert_eq!(&b[1..4], b"PNG");
    }
}
