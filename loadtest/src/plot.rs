//! The latency distribution as an SVG: a histogram and a CDF on a logarithmic millisecond
//! axis, with the SLO target marked.

use std::path::Path;

use plotters::prelude::*;

/// Draws `latencies_ms` (any order) to `path`; `target_ms` is marked on both panels.
///
/// Errors: the file cannot be written.
pub fn draw(path: &Path, latencies_ms: &[f64], target_ms: f64, title: &str) -> anyhow::Result<()> {
    let mut values: Vec<f64> = latencies_ms.iter().map(|v| v.max(0.01)).collect();
    values.sort_by(f64::total_cmp);
    let hi = values.last().copied().unwrap_or(1.0).max(target_ms * 2.0);
    let lo = values.first().copied().unwrap_or(0.01).min(0.1);
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);

    // Histogram: 60 logarithmic bins.
    let bins = 60usize;
    let (llo, lhi) = (lo.ln(), hi.ln());
    let edge = |i: usize| (llo + (lhi - llo) * i as f64 / bins as f64).exp();
    let mut counts = vec![0u64; bins];
    for v in &values {
        let i = (((v.ln() - llo) / (lhi - llo)) * bins as f64) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    let peak = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(&left)
        .caption("latency histogram (commit → client)", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0u64..peak + peak / 10 + 1)?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("events")
        .draw()?;
    chart.draw_series(
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| {
                Rectangle::new([(edge(i), 0), (edge(i + 1), c)], BLUE.mix(0.6).filled())
            }),
    )?;
    chart
        .draw_series(LineSeries::new(
            [(target_ms, 0), (target_ms, peak)],
            RED.stroke_width(2),
        ))?
        .label(format!("{target_ms} ms target"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;

    // CDF.
    let mut chart = ChartBuilder::on(&right)
        .caption("cumulative distribution", ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..1.0)?;
    chart
        .configure_mesh()
        .x_desc("ms (log scale)")
        .y_desc("fraction ≤ x")
        .draw()?;
    let n = values.len().max(1) as f64;
    let step = (values.len() / 2_000).max(1);
    let points = values
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || *i + 1 == values.len())
        .map(|(i, &v)| (v, (i + 1) as f64 / n));
    chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
    chart
        .draw_series(LineSeries::new(
            [(target_ms, 0.0), (target_ms, 1.0)],
            RED.stroke_width(2),
        ))?
        .label(format!("{target_ms} ms target"))
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
