//! `--latency-svg FILE`: the completion-latency histogram (log-spaced
//! buckets) and the percentile curve (on a "nines" axis: 90, 99, 99.9 …)
//! of every job direction, side by side, as an SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::output;
use crate::run::{Outcome, RunError};
use crate::stats::Lat;

/// Buckets per decade of the histogram.
const PER_DECADE: f64 = 20.0;

/// One curve: its name and its completion latencies.
pub struct Series {
    /// Legend text.
    pub name: String,
    /// The histogram's points: (bucket centre µs, % of I/Os).
    pub histogram: Vec<(f64, f64)>,
    /// The percentile curve: (nines, latency µs).
    pub percentiles: Vec<(f64, f64)>,
}

/// The curves of `lat`.
pub fn series(name: String, lat: &Lat) -> Series {
    let mut buckets: std::collections::BTreeMap<i64, u64> = std::collections::BTreeMap::new();
    for value in lat.hist.iter_recorded() {
        let us = (value.value_iterated_to().max(1) as f64) / 1e3;
        let index = (us.log10() * PER_DECADE).floor() as i64;
        *buckets.entry(index).or_default() += value.count_at_value();
    }
    let total = lat.n.max(1) as f64;
    let histogram = buckets
        .into_iter()
        .map(|(index, count)| {
            let centre = 10f64.powf((index as f64 + 0.5) / PER_DECADE);
            (centre, 100.0 * count as f64 / total)
        })
        .collect();
    // Percentiles up to what the sample count resolves (1 - 1/n).
    let max_nines = (lat.n.max(10) as f64).log10();
    let steps = (max_nines * 20.0).ceil() as usize;
    let percentiles = (0..=steps)
        .map(|step| {
            let nines = (step as f64 / 20.0).min(max_nines);
            let quantile = 1.0 - 10f64.powf(-nines);
            let us = lat.hist.value_at_quantile(quantile).max(1) as f64 / 1e3;
            (nines, us)
        })
        .collect();
    Series {
        name,
        histogram,
        percentiles,
    }
}

/// The series of runs: every direction that did I/O, per run (group merged).
pub fn collect(runs: &[(&str, &Outcome)]) -> Vec<Series> {
    let mut all = Vec::new();
    for (label, outcome) in runs {
        let Some(group) = output::group(outcome) else {
            continue;
        };
        for (index, direction) in ["read", "write"].iter().enumerate() {
            let lat = &group.dirs[index].clat;
            if lat.n == 0 {
                continue;
            }
            let o = &group.options;
            let mut name = format!(
                "{}: {direction} ({}, rw={}, bs={}, iodepth={}, {} thread{})",
                o.name,
                group.engine,
                o.rw.name(),
                crate::units::bytes_binary(o.bs),
                group.iodepth,
                group.jobs,
                if group.jobs == 1 { "" } else { "s" }
            );
            if !label.is_empty() {
                name = format!("{label} | {name}");
            }
            all.push(series(name, lat));
        }
    }
    all
}

fn nines_label(nines: f64) -> String {
    if nines <= 0.0 {
        return "0".into();
    }
    let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
    let text = format!("{percentile:.6}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Draws the runs' latencies to `path`.
pub fn write(path: &Path, runs: &[(&str, &Outcome)]) -> Result<(), RunError> {
    let all = collect(runs);
    draw(path, &all).map_err(|e| RunError {
        usage: false,
        message: format!("writing {}: {e}", path.display()),
    })
}

/// Width and height of the two charts.
const CHARTS: (u32, u32) = (1200, 480);
/// Height of one legend line.
const LEGEND_LINE: u32 = 22;

fn draw(path: &Path, all: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let legend_height = 16 + LEGEND_LINE * all.len().max(1) as u32;
    let root = SVGBackend::new(path, (CHARTS.0, CHARTS.1 + legend_height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (charts, legend) = root.split_vertically(CHARTS.1);
    let charts = charts.titled(
        "isonvme-bench: completion latency (clat)",
        ("sans-serif", 22),
    )?;
    let (left, right) = charts.split_horizontally(CHARTS.0 / 2);
    let color = |index: usize| Palette99::pick(index).to_rgba();

    let points = |f: fn(&Series) -> &[(f64, f64)]| {
        all.iter()
            .flat_map(move |s| f(s).iter().copied())
            .collect::<Vec<_>>()
    };
    let histogram = points(|s| &s.histogram);
    let x_min = histogram
        .iter()
        .map(|p| p.0)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        / 1.5;
    let x_max = histogram.iter().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let y_max = histogram.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&left)
        .caption("histogram (20 buckets per decade)", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("clat (us)")
        .y_desc("% of I/Os")
        .draw()?;
    for (index, series) in all.iter().enumerate() {
        chart.draw_series(LineSeries::new(
            series.histogram.iter().copied(),
            color(index).stroke_width(2),
        ))?;
    }

    let percentiles = points(|s| &s.percentiles);
    let nines_max = percentiles.iter().map(|p| p.0).fold(1.0, f64::max).ceil();
    let lat_min = percentiles
        .iter()
        .map(|p| p.1)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        / 1.5;
    let lat_max = percentiles.iter().map(|p| p.1).fold(10.0, f64::max) * 1.5;
    let mut chart = ChartBuilder::on(&right)
        .caption("percentiles", ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..nines_max, (lat_min..lat_max).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(nines_max as usize + 1)
        .x_label_formatter(&|nines| nines_label(*nines))
        .x_desc("percentile")
        .y_desc("clat (us)")
        .draw()?;
    for (index, series) in all.iter().enumerate() {
        chart.draw_series(LineSeries::new(
            series.percentiles.iter().copied(),
            color(index).stroke_width(2),
        ))?;
    }

    // The legend, below both charts, one line per series.
    if all.is_empty() {
        legend.draw(&Text::new(
            "no I/O completed: nothing to plot",
            (70, 8),
            ("sans-serif", 15),
        ))?;
    }
    for (index, series) in all.iter().enumerate() {
        let y = 8 + (index as u32 * LEGEND_LINE) as i32 + LEGEND_LINE as i32 / 2;
        legend.draw(&PathElement::new(
            vec![(70, y), (110, y)],
            color(index).stroke_width(3),
        ))?;
        legend.draw(&Text::new(
            series.name.clone(),
            (120, y - 8),
            ("sans-serif", 15),
        ))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis_labels() {
        assert_eq!(nines_label(0.0), "0");
        assert_eq!(nines_label(1.0), "90");
        assert_eq!(nines_label(2.0), "99");
        assert_eq!(nines_label(3.0), "99.9");
    }
}
