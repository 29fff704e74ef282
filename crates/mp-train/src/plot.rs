//! PNG plots (plotters, bitmap backend): loss curves, the loss-scale trajectory, and the
//! histogram of gradient exponents against the representable range of a format.
//!
//! Text needs a font. Plotters is built with its `ab_glyph` renderer (pure Rust, no system
//! libraries): the first TrueType font found (`MP_TRAIN_FONT`, then common system paths) is
//! registered. With no font at all the plots are still drawn, without any text, and
//! [`font_available`] says so.

use crate::error::{Result, TrainError};
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The font family every chart names.
pub const FONT: &str = "sans-serif";
const W: u32 = 960;
const H: u32 = 600;

/// Candidate fonts, tried in order after `MP_TRAIN_FONT`.
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a font once; true when text can be drawn. `MP_TRAIN_FONT=none` disables text.
pub fn font_available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        let from_env = std::env::var_os("MP_TRAIN_FONT").map(PathBuf::from);
        if from_env.as_deref() == Some(Path::new("none")) {
            return false;
        }
        let candidates = from_env
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .chain(find_any_ttf(Path::new("/usr/share/fonts"), 3));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the program's lifetime: leak once.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

fn find_any_ttf(dir: &Path, depth: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut dirs = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            dirs.push(p);
        } else if p.extension().is_some_and(|x| x.eq_ignore_ascii_case("ttf")) {
            return Some(p);
        }
    }
    if depth == 0 {
        return None;
    }
    dirs.sort();
    dirs.into_iter().find_map(|d| find_any_ttf(&d, depth - 1))
}

fn plot_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// One named line of a chart.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points `(x, y)`; non-finite y values are left out.
    pub points: Vec<(f64, f64)>,
    /// Draw markers at each point instead of a line.
    pub markers: bool,
    /// A shaded band `(x, low, high)` around the line (e.g. the range over seeds); empty: none.
    pub band: Vec<(f64, f64, f64)>,
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws line (or marker) series into a PNG; `log_y` uses a base-2 logarithmic y axis.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    let text = font_available();
    let finite = |s: &Series| {
        s.points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
            .collect::<Vec<_>>()
    };
    let band_points = |s: &Series| {
        s.band
            .iter()
            .flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)])
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
            .collect::<Vec<_>>()
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| finite(s).into_iter().chain(band_points(s)))
        .collect();
    let (mut x0, mut x1, mut y0, mut y1) = all.iter().fold(
        (f64::MAX, f64::MIN, f64::MAX, f64::MIN),
        |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)),
    );
    if all.is_empty() {
        (x0, x1, y0, y1) = (0.0, 1.0, 1.0, 2.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 * 2.0 + 1.0;
    }
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(if text { 45 } else { 5 })
        .y_label_area_size(if text { 70 } else { 5 });
    if text {
        builder.caption(title, (FONT, 24));
    }
    if log_y {
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 * 0.9..y1 * 1.1).log_scale().base(2.0))
            .map_err(|e| plot_err(path, e))?;
        mesh(&mut chart, text, x_label, y_label, path)?;
        draw_series(&mut chart, series, text, log_y, path)?;
    } else {
        let pad = (y1 - y0) * 0.05;
        let mut chart = builder
            .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
            .map_err(|e| plot_err(path, e))?;
        mesh(&mut chart, text, x_label, y_label, path)?;
        draw_series(&mut chart, series, text, log_y, path)?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

fn mesh<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    text: bool,
    x_label: &str,
    y_label: &str,
    path: &Path,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    if text {
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style((FONT, 15))
            .draw()
            .map_err(|e| plot_err(path, e))
    } else {
        // Without a font the mesh cannot label its axes; draw a plain frame instead.
        let area = chart.plotting_area();
        let (w, h) = area.dim_in_pixel();
        area.strip_coord_spec()
            .draw(&Rectangle::new(
                [(0, 0), (w as i32 - 1, h as i32 - 1)],
                BLACK.stroke_width(1),
            ))
            .map_err(|e| plot_err(path, e))
    }
}

fn draw_series<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    series: &[Series],
    text: bool,
    log_y: bool,
    path: &Path,
) -> Result<()>
where
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let ok = |y: f64| y.is_finite() && (!log_y || y > 0.0);
        let band: Vec<(f64, f64, f64)> = s
            .band
            .iter()
            .copied()
            .filter(|&(x, lo, hi)| x.is_finite() && ok(lo) && ok(hi))
            .collect();
        if band.len() >= 2 {
            let outline: Vec<(f64, f64)> = band
                .iter()
                .map(|&(x, _, hi)| (x, hi))
                .chain(band.iter().rev().map(|&(x, lo, _)| (x, lo)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.18).filled(),
                )))
                .map_err(|e| plot_err(path, e))?;
        }
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .copied()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0))
            .collect();
        let anno = if s.markers {
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(|e| plot_err(path, e))?
        } else {
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
        };
        if text {
            anno.label(s.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
    }
    if text && !series.is_empty() {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    Ok(())
}

/// A histogram of binary exponents: `counts[i]` values have exponent `lo + i`.
#[derive(Clone, Debug, PartialEq)]
pub struct ExponentHistogram {
    /// Legend text.
    pub name: String,
    /// Exponent of the first bucket.
    pub lo: i32,
    /// Count per exponent.
    pub counts: Vec<u64>,
}

/// A vertical marker at an exponent (e.g. a format's smallest subnormal).
#[derive(Clone, Debug, PartialEq)]
pub struct Marker {
    /// Legend text.
    pub name: String,
    /// Where it stands.
    pub exponent: f64,
}

/// Draws exponent histograms (fraction of values per binary exponent, overlaid) with
/// vertical markers for a format's representable range.
pub fn exponent_chart(
    path: &Path,
    title: &str,
    hists: &[ExponentHistogram],
    markers: &[Marker],
) -> Result<()> {
    let text = font_available();
    let mut lo = markers.iter().map(|m| m.exponent).fold(f64::MAX, f64::min);
    let mut hi = markers.iter().map(|m| m.exponent).fold(f64::MIN, f64::max);
    let mut ymax: f64 = 0.0;
    for h in hists {
        let total: u64 = h.counts.iter().sum::<u64>().max(1);
        for (i, &c) in h.counts.iter().enumerate() {
            if c > 0 {
                let e = f64::from(h.lo) + i as f64;
                lo = lo.min(e);
                hi = hi.max(e + 1.0);
                ymax = ymax.max(c as f64 / total as f64);
            }
        }
    }
    if lo >= hi {
        (lo, hi) = (-30.0, 20.0);
    }
    let ymax = if ymax > 0.0 { ymax * 1.1 } else { 1.0 };
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(20)
        .x_label_area_size(if text { 45 } else { 5 })
        .y_label_area_size(if text { 70 } else { 5 });
    if text {
        builder.caption(title, (FONT, 24));
    }
    let mut chart = builder
        .build_cartesian_2d((lo - 2.0)..(hi + 2.0), 0.0..ymax)
        .map_err(|e| plot_err(path, e))?;
    mesh(&mut chart, text, "log2 |value|", "fraction of values", path)?;
    for (k, h) in hists.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let total: u64 = h.counts.iter().sum::<u64>().max(1);
        let bars = h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| {
                let e = f64::from(h.lo) + i as f64;
                Rectangle::new(
                    [(e, 0.0), (e + 1.0, c as f64 / total as f64)],
                    color.mix(0.45).filled(),
                )
            });
        let anno = chart.draw_series(bars).map_err(|e| plot_err(path, e))?;
        if text {
            anno.label(h.name.clone()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.mix(0.45).filled())
            });
        }
    }
    for (k, m) in markers.iter().enumerate() {
        let color = PALETTE[(k + 3) % PALETTE.len()];
        let anno = chart
            .draw_series(LineSeries::new(
                vec![(m.exponent, 0.0), (m.exponent, ymax)],
                color.stroke_width(2),
            ))
            .map_err(|e| plot_err(path, e))?;
        if text {
            anno.label(m.name.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3))
            });
        }
    }
    if text {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font((FONT, 15))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_written_as_png() {
        let dir = std::env::temp_dir().join(format!("mp-train-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = Series {
            name: "train".into(),
            points: (0..50)
                .map(|i| (i as f64, 3.0 / (1.0 + i as f64)))
                .collect(),
            markers: false,
            band: Vec::new(),
        };
        let p = dir.join("loss.png");
        line_chart(&p, "loss", "step", "loss", std::slice::from_ref(&s), false).unwrap();
        line_chart(&dir.join("log.png"), "scale", "step", "scale", &[s], true).unwrap();
        let h = ExponentHistogram {
            name: "grads".into(),
            lo: -30,
            counts: (0..20).map(|i| i * 3).collect(),
        };
        let m = Marker {
            name: "fp16 min subnormal".into(),
            exponent: -24.0,
        };
        exponent_chart(&dir.join("exp.png"), "exponents", &[h], &[m]).unwrap();
        for f in ["loss.png", "log.png", "exp.png"] {
            let bytes = std::fs::read(dir.join(f)).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{f}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
