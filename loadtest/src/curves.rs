//! `relay-soak curves`: the scaling curves of BENCHMARKS.md §13 as SVG, drawn from folders of
//! soak reports (`scripts/curves` collects them with `../shared/peers/compare.sh`, one folder per
//! point, each holding `relay-N.json` and `peer-N.json`).
//!
//! Three sweeps, each a folder under `--reports`:
//! * `fanout/<firehose>/`: 1,000 sockets + N firehose sessions → `fanout.svg`, the server's
//!   steady-state CPU (cores) and the p99 against deliveries/s;
//! * `sockets/<n>/`: n idle sockets → `sockets.svg`, RSS after the ramp (MiB) and per socket
//!   (bytes) against sockets;
//! * `rate/<events per second>/`: 10,000 sockets → `rate.svg`, p99 and CPU against events/s.
//!
//! A missing sweep is skipped; rounds of one point are averaged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;

use serde_json::Value;

/// Where the reports are and where the pictures go.
#[derive(Args)]
pub struct CurvesArgs {
    /// Folder holding `fanout/`, `sockets/` and `rate/`, one subfolder per point.
    #[arg(long, default_value = "target/curves")]
    reports: PathBuf,
    /// Folder the SVGs are written to.
    #[arg(long, default_value = "docs/benchmarks")]
    out: PathBuf,
}

/// One measured quantity of a report (its JSON, `--out`), for one axis.
type Measure = fn(&Value) -> f64;

/// The number at `pointer` in `report`; 0 when absent.
fn at(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

/// One panel: its y axis and what it shows of each report.
struct Panel {
    y_desc: &'static str,
    log_y: bool,
    y: Measure,
}

/// One picture: a sweep's folder, the x of each report, and two panels.
struct Curve {
    sweep: &'static str,
    title: &'static str,
    x_desc: &'static str,
    x: Measure,
    panels: [Panel; 2],
}

fn steady_cores(r: &Value) -> f64 {
    at(r, "/steady/relay_cpu_seconds") / at(r, "/steady/seconds").max(1e-9)
}

fn p99(r: &Value) -> f64 {
    at(r, "/latency_ms/p99")
}

fn duration_s(r: &Value) -> f64 {
    at(r, "/params/duration_s").max(1e-9)
}

const CURVES: [Curve; 3] = [
    Curve {
        sweep: "fanout",
        title: "fan-out: 1,000 sockets + 1…200 firehose sessions, 2,000 events/s",
        x_desc: "deliveries/s",
        x: |r| at(r, "/delivered") / duration_s(r),
        panels: [
            Panel {
                y_desc: "CPU in steady state (cores)",
                log_y: false,
                y: steady_cores,
            },
            Panel {
                y_desc: "p99 commit → receive (ms, log)",
                log_y: true,
                y: p99,
            },
        ],
    },
    Curve {
        sweep: "sockets",
        title: "memory: idle sockets",
        x_desc: "sockets",
        x: |r| at(r, "/ramp/connected"),
        panels: [
            Panel {
                y_desc: "RSS after the ramp (MiB)",
                log_y: false,
                y: |r| at(r, "/relay/rss_after_ramp_bytes") / 1_048_576.0,
            },
            Panel {
                y_desc: "RSS per socket (bytes)",
                log_y: false,
                y: |r| at(r, "/relay/rss_per_connection_bytes"),
            },
        ],
    },
    Curve {
        sweep: "rate",
        title: "load: 10,000 sockets, events/s",
        x_desc: "events/s committed",
        x: |r| at(r, "/sent") / duration_s(r),
        panels: [
            Panel {
                y_desc: "p99 commit → receive (ms, log)",
                log_y: true,
                y: p99,
            },
            Panel {
                y_desc: "CPU in steady state (cores)",
                log_y: false,
                y: steady_cores,
            },
        ],
    },
];

/// The servers compared, by report file prefix, and their colours.
const SERVERS: [(&str, RGBColor); 2] = [("relay", BLUE), ("peer", RED)];

/// Draws every sweep found under `args.reports`.
///
/// Errors: a report that is not valid JSON, or an SVG that cannot be written.
pub fn run(args: CurvesArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    for curve in &CURVES {
        let dir = args.reports.join(curve.sweep);
        if !dir.is_dir() {
            tracing::warn!("no {} sweep in {}", curve.sweep, args.reports.display());
            continue;
        }
        let points = read_sweep(&dir)?;
        let path = args.out.join(format!("{}.svg", curve.sweep));
        draw(&path, curve, &points)?;
        println!("{}", path.display());
        print_points(curve, &points);
    }
    Ok(())
}

/// server → the reports of each point folder (a point is one folder, its rounds its files).
type Points = BTreeMap<&'static str, Vec<Vec<Value>>>;

fn read_sweep(dir: &Path) -> anyhow::Result<Points> {
    let mut points = Points::new();
    let mut folders: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    for folder in folders {
        let mut rounds: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
        for entry in std::fs::read_dir(&folder)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let server = SERVERS
                .iter()
                .map(|(s, _)| *s)
                .find(|s| name.starts_with(&format!("{s}-")));
            if let (Some(server), true) = (server, name.ends_with(".json")) {
                let text = std::fs::read_to_string(&path)?;
                let report =
                    serde_json::from_str(&text).with_context(|| path.display().to_string())?;
                rounds.entry(server).or_default().push(report);
            }
        }
        for (server, reports) in rounds {
            points.entry(server).or_default().push(reports);
        }
    }
    Ok(points)
}

/// The mean of `measure` over a point's rounds.
fn mean(rounds: &[Value], measure: Measure) -> f64 {
    rounds.iter().map(measure).sum::<f64>() / rounds.len().max(1) as f64
}

/// (x, y) of each point of `server`, by x.
fn series(points: &Points, server: &str, x: Measure, y: Measure) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = points
        .get(server)
        .into_iter()
        .flatten()
        .map(|rounds| (mean(rounds, x), mean(rounds, y)))
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

fn print_points(curve: &Curve, points: &Points) {
    for (server, _) in SERVERS {
        for (i, panel) in curve.panels.iter().enumerate() {
            let s = series(points, server, curve.x, panel.y);
            let text: Vec<String> = s.iter().map(|(x, y)| format!("{x:.0}:{y:.3}")).collect();
            println!(
                "  {server} panel {i} ({}): {}",
                panel.y_desc,
                text.join(" ")
            );
        }
    }
}

fn draw(path: &Path, curve: &Curve, points: &Points) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(curve.title, ("sans-serif", 20))?;
    let (left, right) = root.split_horizontally(600);
    for (area, panel) in [left, right].iter().zip(&curve.panels) {
        let all: Vec<(f64, f64)> = SERVERS
            .iter()
            .flat_map(|(s, _)| series(points, s, curve.x, panel.y))
            .collect();
        let x_hi = all.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
        let y_hi = all.iter().map(|p| p.1).fold(1e-3, f64::max) * 1.2;
        let y_lo = all.iter().map(|p| p.1).fold(f64::MAX, f64::min).max(1e-3) / 1.5;
        let mut chart = ChartBuilder::on(area);
        chart.margin(15).x_label_area_size(40).y_label_area_size(70);
        if panel.log_y {
            let c = chart.build_cartesian_2d(0f64..x_hi, (y_lo..y_hi).log_scale())?;
            plot_panel(c, points, curve, panel)?;
        } else {
            let c = chart.build_cartesian_2d(0f64..x_hi, 0f64..y_hi)?;
            plot_panel(c, points, curve, panel)?;
        }
    }
    root.present()?;
    Ok(())
}

/// An axis label: integers without a fraction, small numbers with up to three digits.
fn short(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 || v.fract() == 0.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

/// The axes, one line with markers per server, and the legend.
fn plot_panel<'a, X, Y>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    points: &Points,
    curve: &Curve,
    panel: &Panel,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(curve.x_desc)
        .y_desc(panel.y_desc)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| short(*v))
        .draw()?;
    for (server, colour) in SERVERS {
        let s = series(points, server, curve.x, panel.y);
        if s.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(s.clone(), colour.stroke_width(2)))?
            .label(server)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 15, y)], colour));
        chart.draw_series(s.into_iter().map(|p| Circle::new(p, 4, colour.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(delivered: u64, p99: f64, cpu: f64) -> String {
        serde_json::json!({
            "sent": 100, "delivered": delivered,
            "latency_ms": {"p99": p99},
            "steady": {"relay_cpu_seconds": cpu, "seconds": 10.0},
            "ramp": {"connected": 1000},
            "relay": {"rss_after_ramp_bytes": 1_048_576, "rss_per_connection_bytes": 900},
            "params": {"duration_s": 10.0}
        })
        .to_string()
    }

    #[test]
    fn a_sweep_becomes_one_averaged_point_per_folder_and_an_svg() {
        let root = std::env::temp_dir().join(format!("relay-soak-curves-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let write = |rel: &str, text: String| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap_or(&root)).ok();
            std::fs::write(path, text).ok();
        };
        // Two rounds of the relay at one point, one of the peer; a second point for the relay.
        write("fanout/1/relay-1.json", report(1_000, 2.0, 1.0));
        write("fanout/1/relay-2.json", report(3_000, 4.0, 3.0));
        write("fanout/1/peer-1.json", report(2_000, 8.0, 5.0));
        write("fanout/10/relay-1.json", report(10_000, 6.0, 4.0));
        let points = read_sweep(&root.join("fanout")).unwrap_or_default();
        let curve = &CURVES[0];
        assert_eq!(
            series(&points, "relay", curve.x, curve.panels[1].y),
            vec![(200.0, 3.0), (1_000.0, 6.0)]
        );
        assert_eq!(
            series(&points, "peer", curve.x, curve.panels[0].y),
            vec![(200.0, 0.5)]
        );
        let out = root.join("svg");
        let args = CurvesArgs {
            reports: root.clone(),
            out: out.clone(),
        };
        assert!(run(args).is_ok());
        let svg = std::fs::read_to_string(out.join("fanout.svg")).unwrap_or_default();
        assert!(svg.contains("<svg") && svg.contains("relay") && svg.contains("peer"));
        // Sweeps without a folder are skipped.
        assert!(!out.join("rate.svg").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
