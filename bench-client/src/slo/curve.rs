//! The latency–throughput curve of an `slo` search as SVG: offered rate on x, latency (log
//! scale, µs) on y, one colour per target with p50 dotted, p99 solid and p99.9 dashed, the SLO
//! as a black dashed horizontal line, and each target's lower bound as a vertical line. A point
//! is the median, over the valid trials at one offered rate, of each percentile; invalid trials
//! (client-bound) are left out, since they measured the client.

use plotters::element::DashedPathElement;
use plotters::prelude::*;

use super::report::{SloJson, SloTrial};
use super::search::Verdict;
use crate::compare::median;

/// Latency percentiles (µs) at one offered rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Offered rate, messages/s.
    pub rate: f64,
    /// Median over trials of p50, µs.
    pub p50_us: f64,
    /// Median over trials of p99, µs.
    pub p99_us: f64,
    /// Median over trials of p99.9, µs.
    pub p999_us: f64,
}

/// The points of one target's valid trials, by increasing rate.
pub fn curve_points(trials: &[SloTrial]) -> Vec<CurvePoint> {
    let mut valid: Vec<&SloTrial> = trials
        .iter()
        .filter(|t| t.verdict != Verdict::Invalid && t.messages > 0)
        .collect();
    valid.sort_by(|a, b| a.offered_rate.total_cmp(&b.offered_rate));
    let mut points = Vec::new();
    for group in valid.chunk_by(|a, b| a.offered_rate == b.offered_rate) {
        let m = |f: fn(&SloTrial) -> f64| median(&group.iter().map(|t| f(t)).collect::<Vec<_>>());
        points.push(CurvePoint {
            rate: group[0].offered_rate,
            p50_us: m(|t| t.p50_us),
            p99_us: m(|t| t.p99_us),
            p999_us: m(|t| t.p999_us),
        });
    }
    points
}

/// Draw the curve of every target of `slo`.
pub fn render_svg(title: &str, slo: &SloJson) -> anyhow::Result<String> {
    let curves: Vec<(&str, Vec<CurvePoint>, Option<f64>)> = slo
        .targets
        .iter()
        .map(|t| {
            (
                t.info.name.as_str(),
                curve_points(&t.trials),
                t.max_rate_lower,
            )
        })
        .collect();
    let all = curves.iter().flat_map(|c| c.1.iter());
    let x_max = all.clone().map(|p| p.rate).fold(1.0f64, f64::max) * 1.05;
    let ys = all
        .flat_map(|p| [p.p50_us, p.p99_us, p.p999_us])
        .chain([slo.max_latency_us])
        .filter(|y| y.is_finite() && *y > 0.0);
    let y_min = ys.clone().fold(f64::INFINITY, f64::min).max(0.1) / 1.5;
    let y_max = ys.fold(1.0f64, f64::max) * 1.5;
    let slo_label = format!(
        "SLO: {}",
        super::report::slo_text(slo.quantile, slo.max_latency_us)
    );

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 620)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 20))
                .margin(20)
                .margin_right(40)
                .x_label_area_size(45)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..x_max, (y_min..y_max).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("Offered rate (messages/s)")
                .y_desc("Latency from the intended send time (µs, log scale)")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| {
                    if *y >= 10.0 {
                        format!("{y:.0}")
                    } else {
                        format!("{y:.1}")
                    }
                })
                .draw()?;
            let slo_color = BLACK.to_rgba();
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, slo.max_latency_us), (x_max, slo.max_latency_us)],
                    8,
                    5,
                    slo_color.stroke_width(2),
                ))?
                .label(slo_label.clone())
                .legend(move |(x, y)| {
                    DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        5,
                        3,
                        slo_color.stroke_width(2),
                    )
                });
            for (i, (name, points, lower)) in curves.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let style = color.stroke_width(2);
                let line = |f: fn(&CurvePoint) -> f64| -> Vec<(f64, f64)> {
                    points.iter().map(|p| (p.rate, f(p))).collect()
                };
                chart
                    .draw_series(LineSeries::new(line(|p| p.p99_us), style))?
                    .label(format!("{name} p99"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], style));
                chart
                    .draw_series(DashedLineSeries::new(line(|p| p.p999_us), 6, 4, style))?
                    .label(format!("{name} p99.9"))
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 24, y)], 6, 4, style)
                    });
                chart
                    .draw_series(DashedLineSeries::new(line(|p| p.p50_us), 2, 3, style))?
                    .label(format!("{name} p50"))
                    .legend(move |(x, y)| {
                        DashedPathElement::new(vec![(x, y), (x + 24, y)], 2, 3, style)
                    });
                chart.draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((p.rate, p.p99_us), 3, color.filled())),
                )?;
                if let Some(lo) = lower {
                    chart.draw_series(DashedLineSeries::new(
                        [(*lo, y_min), (*lo, y_max)],
                        3,
                        6,
                        color.stroke_width(1),
                    ))?;
                }
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| anyhow::anyhow!("cannot draw the latency-throughput curve: {e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bottleneck::ClientCheck;

    fn trial(rate: f64, p99: f64, verdict: Verdict) -> SloTrial {
        SloTrial {
            trial: 1,
            offered_rate: rate,
            achieved_rate: rate,
            completed_rate: rate,
            measure_start: String::new(),
            duration_s: 1.0,
            messages: 100,
            overdue: 0,
            p50_us: p99 / 2.0,
            p99_us: p99,
            p999_us: p99 * 2.0,
            quantile_us: p99,
            over_slo: 0,
            verdict,
            reason: String::new(),
            client: ClientCheck::default(),
        }
    }

    #[test]
    fn points_are_medians_of_valid_trials_by_rate() {
        let trials = [
            trial(2000.0, 300.0, Verdict::Fail),
            trial(1000.0, 100.0, Verdict::Pass),
            trial(1000.0, 120.0, Verdict::Pass),
            trial(1000.0, 9e9, Verdict::Invalid),
            trial(2000.0, 500.0, Verdict::Fail),
        ];
        let p = curve_points(&trials);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].rate, p[0].p99_us), (1000.0, 110.0));
        assert_eq!((p[1].rate, p[1].p99_us), (2000.0, 400.0));
    }
}
