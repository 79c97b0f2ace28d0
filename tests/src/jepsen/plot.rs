//! Latency over time as a PNG: one dot per completed operation (green ok,
//! red fail, orange info) at its completion time and latency (log scale,
//! 1 ms to 10 s bottom to top), fault intervals shaded grey. Drawn without
//! text so it needs no fonts; the scale is stated here and in the README.

use std::collections::BTreeMap;
use std::path::Path;

use pact_check::{History, OpType};
use plotters::prelude::*;

use super::Interval;

const W: u32 = 1200;
const H: u32 = 500;
const MARGIN: i32 = 20;

pub fn latency(path: &Path, history: &History, faults: &[Interval]) -> Result<(), String> {
    let mut pending: BTreeMap<i64, u64> = BTreeMap::new();
    let mut points = Vec::new();
    for op in history.iter().filter(|o| o.process >= 0) {
        let Some(t) = op.time_ns else { continue };
        match op.typ {
            OpType::Invoke => {
                pending.insert(op.process, t);
            }
            typ => {
                if let Some(start) = pending.remove(&op.process) {
                    points.push((t as f64 / 1e9, (t - start) as f64 / 1e9, typ));
                }
            }
        }
    }
    let end = points
        .iter()
        .map(|p| p.0)
        .chain(faults.iter().map(|f| f.end_s))
        .fold(1.0f64, f64::max);
    let x = |s: f64| MARGIN + ((s / end) * f64::from(W - 2 * MARGIN as u32)) as i32;
    let y = |lat: f64| {
        // 1 ms .. 10 s on a log scale.
        let v = ((lat.max(1e-3).log10() + 3.0) / 4.0).clamp(0.0, 1.0);
        H as i32 - MARGIN - (v * f64::from(H - 2 * MARGIN as u32)) as i32
    };
    let root = BitMapBackend::new(path, (W, H)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    for f in faults {
        root.draw(&Rectangle::new(
            [(x(f.start_s), MARGIN), (x(f.end_s), H as i32 - MARGIN)],
            RGBColor(220, 220, 220).filled(),
        ))
        .map_err(e)?;
    }
    // Decade grid lines: 1 ms, 10 ms, 100 ms, 1 s, 10 s.
    for d in 0..=4 {
        let yy = y(10f64.powi(d - 3));
        root.draw(&PathElement::new(
            vec![(MARGIN, yy), (W as i32 - MARGIN, yy)],
            RGBColor(180, 180, 180),
        ))
        .map_err(e)?;
    }
    for (t, lat, typ) in points {
        let color = match typ {
            OpType::Ok => RGBColor(0, 150, 0),
            OpType::Fail => RGBColor(200, 0, 0),
            _ => RGBColor(240, 140, 0),
        };
        root.draw(&Circle::new((x(t), y(lat)), 2, color.filled()))
            .map_err(e)?;
    }
    root.present().map_err(e)
}
