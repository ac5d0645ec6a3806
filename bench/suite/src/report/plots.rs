//! Throughput plots: messages/s by connections, one line per server, per message size.

use std::path::Path;

use plotters::prelude::*;

use super::over_rounds;
use crate::measure::{CellResult, Results};

/// Writes `throughput-s<size>-t<threads>.svg` for every size with at least two closed-loop
/// cells; returns the file names.
pub fn throughput_plots(r: &Results, out: &Path) -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    let mut groups: Vec<(usize, usize)> = r
        .closed
        .iter()
        .map(|c| (c.cell.size_bytes, c.cell.threads))
        .collect();
    groups.sort();
    groups.dedup();
    for (size, threads) in groups {
        let cells: Vec<&CellResult> = r
            .closed
            .iter()
            .filter(|c| c.cell.size_bytes == size && c.cell.threads == threads)
            .collect();
        if cells.len() < 2 {
            continue;
        }
        let name = format!("throughput-s{size}-t{threads}.svg");
        let path = out.join(&name);
        let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
        for c in &cells {
            for t in &c.targets {
                let med = over_rounds(t, |x| Some(x.msgs_per_s)).median;
                let pt = ((c.cell.connections as f64).log10(), med);
                match series.iter_mut().find(|s| s.0 == t.name) {
                    Some(s) => s.1.push(pt),
                    None => series.push((t.name.clone(), vec![pt])),
                }
            }
        }
        let ymax = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .filter(|y| y.is_finite())
            .fold(0.0, f64::max)
            * 1.15;
        let xmax = cells
            .iter()
            .map(|c| (c.cell.connections as f64).log10())
            .fold(0.0, f64::max)
            + 0.2;
        let root = SVGBackend::new(&path, (800, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!("Closed-loop throughput, {size} B messages, {threads} server thread(s)"),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.2..xmax, 0.0..ymax.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("connections (log scale)")
            .y_desc("messages/s (median over rounds)")
            .x_label_formatter(&|x| format!("{:.0}", 10f64.powf(*x)))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()?;
        root.present()?;
        files.push(name);
    }
    Ok(files)
}
