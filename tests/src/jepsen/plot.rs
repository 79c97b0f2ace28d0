//! The run's plots, drawn as Jepsen draws its own:
//!
//! * `latency.png`: one point per completed operation at the time it was
//!   invoked (seconds since the history began) and its latency
//!   (milliseconds, log scale); colour by outcome (ok blue, info orange,
//!   fail red), marker shape by operation (`:f`).
//! * `rate.png`: completions per second by outcome and operation (same
//!   colours and markers), counted in buckets of one second or more.
//!
//! Both carry a title, axis labels with units and a legend, and shade each
//! nemesis interval, named at its top, so a latency spike or a drop in
//! throughput can be put next to the fault that caused it. Text is set in a
//! font compiled in from a crate (plotters' `ab_glyph` text backend), so
//! drawing needs neither system fonts nor fontconfig.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::OnceLock;

use pact_check::{History, OpType};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::{Drawable, PointCollection};
use plotters::prelude::*;
use plotters::style::FontStyle;
use plotters_backend::{BackendCoord, DrawingErrorKind};

use super::Interval;

pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 650;
const FONT_FAMILY: &str = "sans-serif";

/// Outcomes in drawing order: fails and infos last, so the rare ones sit on
/// top of the many oks.
const OUTCOMES: [(OpType, &str, RGBColor); 3] = [
    (OpType::Ok, "ok", RGBColor(31, 119, 180)),
    (OpType::Info, "info", RGBColor(255, 127, 14)),
    (OpType::Fail, "fail", RGBColor(214, 39, 40)),
];

/// Pale fills for fault intervals, one per fault kind in order of first
/// appearance (cycled).
const FAULT_FILLS: [RGBColor; 5] = [
    RGBColor(215, 215, 215),
    RGBColor(250, 225, 190),
    RGBColor(205, 230, 205),
    RGBColor(225, 210, 240),
    RGBColor(200, 225, 240),
];

/// plotters looks fonts up by family name; register the embedded one once.
fn font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(
                FONT_FAMILY,
                FontStyle::Normal,
                epaint_default_fonts::UBUNTU_LIGHT,
            )
            .map_err(|_| "the embedded font is not a readable TrueType font".to_string())
        })
        .clone()
}

/// One completed client operation.
struct Completion<'a> {
    f: &'a str,
    outcome: OpType,
    invoked_s: f64,
    completed_s: f64,
}

/// Invocations paired with the next completion of the same process;
/// nemesis ops and ops without a time are left out.
fn completions(history: &History) -> Vec<Completion<'_>> {
    let mut open: HashMap<i64, u64> = HashMap::new();
    let mut out = Vec::new();
    for op in history.iter().filter(|o| o.process >= 0) {
        let Some(t) = op.time_ns else { continue };
        if op.typ == OpType::Invoke {
            open.insert(op.process, t);
        } else if let Some(start) = open.remove(&op.process) {
            out.push(Completion {
                f: &op.f,
                outcome: op.typ,
                invoked_s: start as f64 / 1e9,
                completed_s: t.max(start) as f64 / 1e9,
            });
        }
    }
    out
}

/// A point's marker: shape `shape` of five (one per operation, cycled)
/// in the outcome's colour, centred on `at`, in any coordinate system
/// (data points and legend entries).
struct Marker<C> {
    at: C,
    shape: usize,
    color: RGBColor,
}

impl<'a, C> PointCollection<'a, C> for &'a Marker<C> {
    type Point = &'a C;
    type IntoIter = std::iter::Once<&'a C>;
    fn point_iter(self) -> Self::IntoIter {
        std::iter::once(&self.at)
    }
}

impl<C, DB: DrawingBackend> Drawable<DB> for Marker<C> {
    fn draw<I: Iterator<Item = BackendCoord>>(
        &self,
        mut pos: I,
        backend: &mut DB,
        _: (u32, u32),
    ) -> Result<(), DrawingErrorKind<DB::ErrorType>> {
        let Some((x, y)) = pos.next() else {
            return Ok(());
        };
        let fill = self.color.filled();
        let line = self.color.stroke_width(2);
        match self.shape % 5 {
            0 => backend.draw_circle((x, y), 3, &fill, true),
            1 => backend.fill_polygon([(x, y - 5), (x - 4, y + 3), (x + 4, y + 3)], &fill),
            2 => backend.draw_rect((x - 3, y - 3), (x + 3, y + 3), &fill, true),
            3 => {
                backend.draw_line((x - 4, y - 4), (x + 4, y + 4), &line)?;
                backend.draw_line((x - 4, y + 4), (x + 4, y - 4), &line)
            }
            _ => backend.draw_circle((x, y), 4, &line, false),
        }
    }
}

fn marker<C>(shape: usize, at: C, color: RGBColor) -> Marker<C> {
    Marker { at, shape, color }
}

/// Operation names in order of first appearance, each with its shape.
fn shapes(done: &[Completion<'_>]) -> Vec<(String, usize)> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for c in done {
        if !seen.iter().any(|(f, _)| f == c.f) {
            let n = seen.len();
            seen.push((c.f.to_string(), n));
        }
    }
    seen
}

fn end_s(done: &[Completion<'_>], faults: &[Interval]) -> f64 {
    done.iter()
        .map(|c| c.completed_s)
        .chain(faults.iter().map(|f| f.end_s))
        .fold(1.0f64, f64::max)
}

fn fault_name(f: &Interval) -> String {
    serde_json::to_value(f.fault)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{:?}", f.fault))
}

type Chart<'a, 'b, Y> = ChartContext<'a, BitMapBackend<'b>, Cartesian2d<RangedCoordf64, Y>>;

/// Shade every fault interval over the full height of the chart and name
/// it at the top; labels step down in three rows so neighbours overlap
/// less.
fn shade_faults<'a, 'b: 'a, Y>(
    chart: &mut Chart<'a, 'b, Y>,
    root: &DrawingArea<BitMapBackend<'_>, Shift>,
    faults: &[Interval],
    y_range: (f64, f64),
) -> Result<(), String>
where
    Y: Ranged<ValueType = f64>,
{
    let mut kinds: Vec<String> = Vec::new();
    for f in faults {
        let name = fault_name(f);
        let kind = match kinds.iter().position(|k| *k == name) {
            Some(i) => i,
            None => {
                kinds.push(name.clone());
                kinds.len() - 1
            }
        };
        let fill = FAULT_FILLS[kind % FAULT_FILLS.len()];
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(f.start_s, y_range.0), (f.end_s, y_range.1)],
                fill.mix(0.7).filled(),
            )))
            .map_err(|e| e.to_string())?;
    }
    let label = ("sans-serif", 12).into_font().color(&RGBColor(90, 90, 90));
    for (i, f) in faults.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(f.start_s, y_range.1));
        root.draw(&Text::new(
            fault_name(f),
            (x + 2, y + 3 + 13 * (i as i32 % 3)),
            label.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A white bitmap of the plots' size at `path` (written by `present`).
fn canvas(path: &Path) -> Result<DrawingArea<BitMapBackend<'_>, Shift>, String> {
    font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    Ok(root)
}

/// The frame every plot of a run shares: caption, time since the history
/// began on x (0 to `x_end` seconds), `y` (linear or log) described by
/// `y_desc` and labelled by `y_label`, and one set of fonts and margins,
/// so the plots of one run line up when viewed side by side.
fn frame<'a, 'b, Y>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    caption: &str,
    x_end: f64,
    y: Y,
    y_desc: &str,
    y_label: &dyn Fn(&f64) -> String,
) -> Result<Chart<'a, 'b, Y::CoordDescType>, String>
where
    Y: AsRangedCoord<Value = f64>,
    Y::CoordDescType: ValueFormatter<f64>,
{
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(62)
        .build_cartesian_2d(0.0..x_end, y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("time since the history began (s)")
        .y_desc(y_desc)
        .y_label_formatter(y_label)
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(e)?;
    Ok(chart)
}

fn ms_label(v: &f64) -> String {
    if *v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// Draw `latency.png`.
pub fn latency(
    path: &Path,
    title: &str,
    history: &History,
    faults: &[Interval],
) -> Result<(), String> {
    let done = completions(history);
    let shapes = shapes(&done);
    let end = end_s(&done, faults);
    let lat_ms = |c: &Completion<'_>| ((c.completed_s - c.invoked_s) * 1e3).max(1e-3);
    let (lo, hi) = done
        .iter()
        .map(lat_ms)
        .fold((f64::MAX, 0.0f64), |(lo, hi), l| (lo.min(l), hi.max(l)));
    let (lo, hi) = if done.is_empty() {
        (0.1, 1000.0)
    } else {
        // A decade of room below the fastest and above the slowest keeps
        // the log axis's labels on the chart.
        (
            10f64.powf(lo.log10().floor()),
            10f64
                .powf(hi.log10().ceil())
                .max(10f64.powf(lo.log10().floor() + 1.0)),
        )
    };
    let root = canvas(path)?;
    let mut chart = frame(
        &root,
        &format!("{title}: operation latency"),
        end,
        (lo..hi).log_scale(),
        "latency (ms, log scale)",
        &ms_label,
    )?;
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    shade_faults(&mut chart, &root, faults, (lo, hi))?;
    for (outcome, outcome_name, color) in OUTCOMES {
        for (f, shape) in &shapes {
            let points: Vec<(f64, f64)> = done
                .iter()
                .filter(|c| c.outcome == outcome && c.f == f)
                .map(|c| (c.invoked_s, lat_ms(c)))
                .collect();
            if points.is_empty() {
                continue;
            }
            let shape = *shape;
            chart
                .draw_series(points.into_iter().map(|p| marker(shape, p, color)))
                .map_err(e)?
                .label(format!("{f} {outcome_name}"))
                .legend(move |p| marker(shape, p, color));
        }
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(e)
}

fn draw_legend<'a, 'b: 'a, Y: Ranged<ValueType = f64>>(
    chart: &mut Chart<'a, 'b, Y>,
    at: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())
}

/// Draw `rate.png`.
pub fn rate(
    path: &Path,
    title: &str,
    history: &History,
    faults: &[Interval],
) -> Result<(), String> {
    let done = completions(history);
    let shapes = shapes(&done);
    let end = end_s(&done, faults);
    // One-second buckets up to two minutes, then about 120 buckets.
    let dt = (end / 120.0).ceil().max(1.0);
    let buckets = (end / dt).ceil() as usize;
    let mut counts: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    for c in &done {
        let Some(oi) = OUTCOMES.iter().position(|o| o.0 == c.outcome) else {
            continue;
        };
        let si = shapes.iter().position(|(f, _)| f == c.f).unwrap_or(0);
        let b = ((c.completed_s / dt) as usize).min(buckets.saturating_sub(1));
        counts.entry((oi, si)).or_insert_with(|| vec![0.0; buckets])[b] += 1.0 / dt;
    }
    let top = counts
        .values()
        .flat_map(|v| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.15;
    let root = canvas(path)?;
    let mut chart = frame(
        &root,
        &format!("{title}: completions per second ({dt:.0} s buckets)"),
        end,
        0.0..top,
        "completions (ops/s)",
        &|v: &f64| format!("{v:.0}"),
    )?;
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    shade_faults(&mut chart, &root, faults, (0.0, top))?;
    for ((oi, si), per_bucket) in &counts {
        let (_, outcome_name, color) = OUTCOMES[*oi];
        let (f, shape) = (&shapes[*si].0, shapes[*si].1);
        let points: Vec<(f64, f64)> = per_bucket
            .iter()
            .enumerate()
            .map(|(b, r)| ((b as f64 + 0.5) * dt, *r))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(e)?
            .label(format!("{f} {outcome_name}"))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new([(-8, 0), (8, 0)], color.stroke_width(2))
                    + marker(shape, (0, 0), color)
            });
        chart
            .draw_series(points.into_iter().map(|p| marker(shape, p, color)))
            .map_err(e)?;
    }
    draw_legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(e)
}

/// Colours of time-series lines, one per series in order (cycled).
const LINE_COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// One named series of a time-series plot: runs of `(seconds, value)`
/// points, each drawn as its own line (a gap between runs is time the
/// series had no value, e.g. a process that was down).
pub struct Series {
    pub name: String,
    pub runs: Vec<Vec<(f64, f64)>>,
}

/// Draw a time-series plot (a run's `memory.png`, `disk.png`,
/// `records.png`): one colour and marker per series, fault intervals
/// shaded and named as in the other plots, y from zero.
pub fn series(
    path: &Path,
    caption: &str,
    y_desc: &str,
    all: &[Series],
    faults: &[Interval],
) -> Result<(), String> {
    let points = || all.iter().flat_map(|s| s.runs.iter().flatten());
    let end = points()
        .map(|p| p.0)
        .chain(faults.iter().map(|f| f.end_s))
        .fold(1.0f64, f64::max);
    let top = points().map(|p| p.1).fold(1.0f64, f64::max) * 1.15;
    let root = canvas(path)?;
    let label = |v: &f64| {
        if top < 10.0 {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    };
    let mut chart = frame(&root, caption, end, 0.0..top, y_desc, &label)?;
    shade_faults(&mut chart, &root, faults, (0.0, top))?;
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    for (i, s) in all.iter().enumerate() {
        let color = LINE_COLORS[i % LINE_COLORS.len()];
        let shape = i / LINE_COLORS.len();
        for (r, run) in s.runs.iter().enumerate() {
            let line = chart
                .draw_series(LineSeries::new(run.clone(), color.stroke_width(2)))
                .map_err(e)?;
            if r == 0 {
                line.label(s.name.clone()).legend(move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(-8, 0), (8, 0)], color.stroke_width(2))
                        + marker(shape, (0, 0), color)
                });
            }
            chart
                .draw_series(run.iter().map(|p| marker(shape, *p, color)))
                .map_err(e)?;
        }
    }
    if all.iter().any(|s| !s.runs.is_empty()) {
        // Levels drawn from zero leave the bottom right free; the top
        // right is where they end.
        draw_legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use pact_check::{Op, Value};

    use super::*;
    use crate::jepsen::Fault;

    /// Four processes over 20 s, each one operation at a time: reads and
    /// writes, mostly ok, some failed or unknown, much slower during the
    /// second fault.
    fn history() -> History {
        let mut ops = Vec::new();
        for process in 0..4i64 {
            let mut t_ms = 13 * process as u64;
            let mut i = process as u64;
            while t_ms < 20_000 {
                let f = if i.is_multiple_of(3) { "write" } else { "read" };
                let slow = (12_000..16_000).contains(&t_ms);
                let latency = if slow { 300 + i % 400 } else { 1 + i % 40 };
                let outcome = match i % 23 {
                    0 => OpType::Fail,
                    7 => OpType::Info,
                    _ => OpType::Ok,
                };
                for (typ, t) in [(OpType::Invoke, t_ms), (outcome, t_ms + latency)] {
                    ops.push(Op {
                        index: 0,
                        time_ns: Some(t * 1_000_000),
                        process,
                        typ,
                        f: f.to_string(),
                        key: None,
                        value: Value::Nil,
                    });
                }
                t_ms += latency + 20;
                i += 7;
            }
        }
        // The nemesis's own ops are not client operations.
        ops.push(Op {
            index: 0,
            time_ns: Some(5_000_000_000),
            process: -1,
            typ: OpType::Info,
            f: "start".into(),
            key: None,
            value: Value::Nil,
        });
        ops.sort_by_key(|o| o.time_ns);
        for (i, op) in ops.iter_mut().enumerate() {
            op.index = i as u64;
        }
        ops
    }

    fn faults() -> Vec<Interval> {
        vec![
            Interval {
                fault: Fault::KillRandom,
                start_s: 5.0,
                end_s: 8.0,
                detail: "node 2".into(),
            },
            Interval {
                fault: Fault::IsolateOne,
                start_s: 12.0,
                end_s: 16.0,
                detail: "node 1".into(),
            },
        ]
    }

    /// Pixels matching `pred` in the rectangle [x0, x1) x [y0, y1).
    fn count(
        img: &image::RgbImage,
        (x0, x1): (u32, u32),
        (y0, y1): (u32, u32),
        pred: impl Fn(&image::Rgb<u8>) -> bool,
    ) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| pred(img.get_pixel(x, y)))
            .count()
    }

    fn dark(p: &image::Rgb<u8>) -> bool {
        p.0.iter().all(|c| *c < 110)
    }

    fn check_png(path: &Path) -> image::RgbImage {
        let bytes = std::fs::read(path).expect("plot written");
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{path:?} is not a PNG"
        );
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)
            .expect("decodes as PNG")
            .to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT), "{path:?}");
        let inked = count(&img, (0, WIDTH), (0, HEIGHT), |p| p.0 != [255, 255, 255]);
        assert!(
            inked > (WIDTH * HEIGHT / 50) as usize,
            "{path:?}: only {inked} non-white pixels"
        );
        // Text: the title across the top, the y axis's label down the
        // left edge (drawn rotated), tick labels under the x axis.
        let title = count(&img, (WIDTH / 4, WIDTH * 3 / 4), (0, 40), dark);
        assert!(title > 150, "{path:?}: no title ({title} dark pixels)");
        let y_desc = count(&img, (0, 30), (HEIGHT / 4, HEIGHT * 3 / 4), dark);
        assert!(y_desc > 80, "{path:?}: no y axis label ({y_desc})");
        let x_ticks = count(&img, (70, WIDTH), (HEIGHT - 54, HEIGHT - 30), dark);
        assert!(x_ticks > 80, "{path:?}: no x tick labels ({x_ticks})");
        // Every outcome's colour and a fault's shading are there.
        for (_, name, c) in OUTCOMES {
            let n = count(&img, (0, WIDTH), (0, HEIGHT), |p| {
                *p == image::Rgb([c.0, c.1, c.2])
            });
            assert!(n > 10, "{path:?}: no {name} points ({n})");
        }
        img
    }

    #[test]
    fn latency_and_rate_plots_are_labelled_pngs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let h = history();
        let latency_png = dir.path().join("latency.png");
        let rate_png = dir.path().join("rate.png");
        latency(&latency_png, "synthetic-42", &h, &faults()).expect("latency plot");
        rate(&rate_png, "synthetic-42", &h, &faults()).expect("rate plot");
        for path in [&latency_png, &rate_png] {
            let img = check_png(path);
            // The first fault's shading fills the chart between 5 and 8 s.
            let shaded = count(&img, (0, WIDTH), (HEIGHT / 2, HEIGHT / 2 + 1), |p| {
                p.0[0] > 200 && p.0[0] < 255 && p.0[0] == p.0[1] && p.0[1] == p.0[2]
            });
            assert!(shaded > 100, "{path:?}: no fault shading ({shaded})");
        }
        if let Ok(keep) = std::env::var("PACT_PLOT_KEEP") {
            for name in ["latency.png", "rate.png"] {
                std::fs::copy(dir.path().join(name), Path::new(&keep).join(name))
                    .expect("copy plot");
            }
        }
    }

    #[test]
    fn an_empty_history_still_draws_axes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("latency.png");
        latency(&path, "empty", &Vec::new(), &[]).expect("latency plot");
        rate(&dir.path().join("rate.png"), "empty", &Vec::new(), &[]).expect("rate plot");
        let bytes = std::fs::read(&path).unwrap();
        let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (WIDTH, HEIGHT));
        assert!(count(&img, (WIDTH / 4, WIDTH * 3 / 4), (0, 40), dark) > 100);
    }
}
