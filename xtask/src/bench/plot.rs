//! benchmarks.svg: the time per operation of each tool relative to no
//! tracer (log scale), one group of bars per workload, and the real builds'
//! wall and CPU time under `monitor exec`. plotters' SVG backend writes text
//! as SVG `<text>` elements: no system fonts needed.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::{
    Matrix, Setup,
    builds::BuildResults,
    stats,
    worker::{WORKLOADS, Workload},
};

/// The bars of each workload group.
const BARS: [Setup; 7] = [
    Setup::Floor,
    Setup::MonitorOutside,
    Setup::MonitorInside,
    Setup::BpftraceInside,
    Setup::StraceInside,
    Setup::AuditInside,
    Setup::FatraceInside,
];

fn bar_name(setup: Setup) -> &'static str {
    match setup {
        Setup::Floor => "floor (empty hook)",
        Setup::MonitorOutside => "monitor, outside",
        Setup::MonitorInside => "monitor, inside",
        Setup::BpftraceInside => "bpftrace",
        Setup::StraceInside => "strace",
        Setup::AuditInside => "audit",
        _ => "fatrace",
    }
}

/// One group of bars: its name and (legend name, ratio to bare).
type Group = (String, Vec<(&'static str, f64)>);

fn groups(matrix: &Matrix, builds: Option<&BuildResults>) -> Vec<Group> {
    let mut groups: Vec<Group> = WORKLOADS
        .iter()
        .map(|&w: &Workload| {
            let bare = matrix.median(Setup::Bare, w);
            let bars = BARS
                .iter()
                .map(|&s| (bar_name(s), matrix.median(s, w) / bare))
                .collect();
            (w.short().to_owned(), bars)
        })
        .collect();
    if let Some(b) = builds.filter(|b| !b.triples.is_empty()) {
        let wall: Vec<f64> = b
            .triples
            .iter()
            .map(|t| 1.0 + t.wall_parts().2 / 100.0)
            .collect();
        let cpu: Vec<f64> = b
            .triples
            .iter()
            .map(|t| 1.0 + t.cpu_parts().2 / 100.0)
            .collect();
        groups.push((
            "Bazel build".to_owned(),
            vec![
                (BUILD_BARS[0], stats::median(&wall)),
                (BUILD_BARS[1], stats::median(&cpu)),
            ],
        ));
    }
    if let Some(side) = builds.and_then(|b| b.side_by_side.as_ref()) {
        let ratio = |series: Vec<f64>| 1.0 + stats::median(&series) / 100.0;
        groups.push((
            "Bazel, side by side".to_owned(),
            vec![
                (BUILD_BARS[1], ratio(side.total_series().1)),
                (BUILD_BARS[2], ratio(side.trace_total_series().1)),
            ],
        ));
    }
    groups
}

/// The build groups' bars, each with a colour of its own after the
/// workloads' (the same name, the same colour in every group).
const BUILD_BARS: [&str; 3] = [
    "monitor exec: wall",
    "monitor exec: CPU",
    "monitor exec, trace profile: CPU",
];

const COLOURS: [RGBColor; 10] = [
    RGBColor(150, 150, 150),
    RGBColor(120, 170, 230),
    RGBColor(20, 90, 200),
    RGBColor(230, 140, 40),
    RGBColor(200, 60, 60),
    RGBColor(120, 80, 170),
    RGBColor(60, 160, 90),
    RGBColor(20, 60, 140),
    RGBColor(90, 130, 200),
    RGBColor(60, 170, 170),
];

/// Writes the plot to `path`.
pub fn write(path: &Path, matrix: &Matrix, builds: Option<&BuildResults>) -> Result<()> {
    let groups = groups(matrix, builds);
    let top = groups
        .iter()
        .flat_map(|(_, bars)| bars.iter().map(|b| b.1))
        .filter(|r| r.is_finite())
        .fold(2.0f64, f64::max)
        * 2.0;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    let err = |e: &dyn std::fmt::Debug| anyhow!("drawing {}: {e:?}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Time per operation relative to no tracer (log scale; 1 = bare)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..groups.len() as f64, (0.5f64..top).log_scale())
        .map_err(|e| err(&e))?;
    let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            let centre = (x - x.floor() - 0.5).abs() < 0.01;
            if centre {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("× bare")
        .draw()
        .map_err(|e| err(&e))?;
    draw_bars(&mut chart, &groups)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<
        plotters::coord::types::RangedCoordf64,
        plotters::coord::combinators::LogCoord<f64>,
    >,
>;

fn draw_bars(chart: &mut Chart<'_, '_>, groups: &[Group]) -> Result<()> {
    let mut legend_done = Vec::new();
    for (g, (_, bars)) in groups.iter().enumerate() {
        let width = 0.8 / bars.len() as f64;
        for (i, (name, ratio)) in bars.iter().enumerate() {
            let colour_index = match BUILD_BARS.iter().position(|b| b == name) {
                Some(b) if g >= WORKLOADS.len() => BARS.len() + b,
                _ => i,
            };
            let colour = COLOURS[colour_index % COLOURS.len()];
            let x0 = g as f64 + 0.1 + i as f64 * width;
            let value = if ratio.is_finite() {
                ratio.max(0.5)
            } else {
                0.5
            };
            let series = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.5), (x0 + width * 0.9, value)],
                    colour.filled(),
                )))
                .map_err(|e| anyhow!("drawing a bar: {e:?}"))?;
            if !legend_done.contains(name) {
                legend_done.push(*name);
                series.label(*name).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled())
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::bench::{SETUPS, WorkerReport};

    /// A matrix where every setup takes `1000 + 100 * index` ns per op.
    pub fn fake_matrix() -> Matrix {
        let mut matrix = Matrix::new();
        for setup in SETUPS {
            for workload in WORKLOADS {
                let ns = 1000.0 + 100.0 * setup.index() as f64;
                let report = WorkerReport {
                    opens: 10,
                    elapsed_ns: 0,
                    ns_per_pair: ns,
                };
                let cell = matrix.get_mut(setup, workload);
                cell.ns_per_op.push(report.ns_per_pair);
                cell.ops.push(report.opens);
            }
        }
        matrix
    }

    #[test]
    fn the_plot_has_its_labels_as_svg_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.svg");
        write(&path, &fake_matrix(), None).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        for text in [
            "same file",
            "distinct files",
            "connect",
            "strace",
            "monitor, inside",
            "× bare",
        ] {
            assert!(svg.contains(text), "no {text:?} in the SVG");
        }
    }
}
