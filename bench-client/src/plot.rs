//! Latency-by-percentile SVG plot, drawn the way HdrHistogram's plotter draws `.hgrm` files:
//! the x axis is `log10(1/(1-p))`, so 90%, 99%, 99.9%, ... are equally spaced and the tail
//! gets as much room as the body. One line per target (open loop: a solid line for the
//! intended-time latency and a dashed one for the service time).

use hdrhistogram::Histogram;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// A line to draw: label and histogram (ns).
pub struct PlotLine<'a> {
    /// Legend label.
    pub label: String,
    /// Histogram in nanoseconds.
    pub histogram: &'a Histogram<u64>,
    /// Draw dashed (service time).
    pub dashed: bool,
    /// Colour index (same target, same colour).
    pub color: usize,
}

/// `log10(1/(1-q))`, capped at `cap` (q = 1 maps to the cap).
pub fn percentile_x(q: f64, cap: f64) -> f64 {
    if q >= 1.0 {
        return cap;
    }
    (1.0 / (1.0 - q)).log10().min(cap)
}

/// Axis label for x: `0%`, `90%`, `99%`, `99.9%`, ...
pub fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    if (x - x.round()).abs() < 1e-9 && x >= 0.0 {
        match x.round() as usize {
            0 => "0%".into(),
            1 => "90%".into(),
            2 => "99%".into(),
            k => format!("99.{}%", "9".repeat(k - 2)),
        }
    } else if p >= 99.0 {
        format!("{p:.3}%")
    } else {
        format!("{p:.0}%")
    }
}

/// The (x, µs) points of one histogram.
pub fn points(h: &Histogram<u64>, cap: f64) -> Vec<(f64, f64)> {
    h.iter_quantiles(5)
        .map(|v| {
            (
                percentile_x(v.quantile_iterated_to(), cap),
                v.value_iterated_to() as f64 / 1000.0,
            )
        })
        .collect()
}

/// Draw `lines` as an SVG document.
pub fn render_svg(title: &str, lines: &[PlotLine<'_>]) -> anyhow::Result<String> {
    let max_count = lines
        .iter()
        .map(|l| l.histogram.len())
        .max()
        .unwrap_or(1)
        .max(1);
    // Show as many nines as the sample count supports (at least 99.9%, at most 99.9999%).
    let cap = ((max_count as f64).log10().ceil()).clamp(3.0, 6.0);
    let y_max = lines
        .iter()
        .map(|l| l.histogram.max() as f64 / 1000.0)
        .fold(1.0f64, f64::max)
        * 1.05;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1000, 620)).into_drawing_area();
        let draw = || -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(20)
                .margin_right(60)
                .x_label_area_size(45)
                .y_label_area_size(80)
                .build_cartesian_2d(0f64..cap, 0f64..y_max)?;
            chart
                .configure_mesh()
                .x_desc("Percentile")
                .y_desc("Latency (µs)")
                .x_labels(cap as usize + 1)
                .x_label_formatter(&|x| percentile_label(*x))
                .y_label_formatter(&|y| {
                    if y_max < 100.0 {
                        format!("{y:.1}")
                    } else {
                        format!("{y:.0}")
                    }
                })
                .draw()?;
            for line in lines {
                let color = Palette99::pick(line.color).to_rgba();
                let pts = points(line.histogram, cap);
                let style = ShapeStyle {
                    color,
                    filled: false,
                    stroke_width: 2,
                };
                let series = if line.dashed {
                    chart.draw_series(DashedLineSeries::new(pts, 6, 4, style))?
                } else {
                    chart.draw_series(LineSeries::new(pts, style))?
                };
                let (dash, gap) = if line.dashed { (5, 3) } else { (24, 0) };
                series.label(line.label.clone()).legend(move |(x, y)| {
                    DashedPathElement::new(
                        vec![(x, y), (x + 24, y)],
                        dash,
                        gap,
                        ShapeStyle {
                            color,
                            filled: false,
                            stroke_width: 2,
                        },
                    )
                });
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
        draw().map_err(|e| anyhow::anyhow!("cannot draw the plot: {e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(percentile_x(0.0, 6.0), 0.0);
        assert!((percentile_x(0.9, 6.0) - 1.0).abs() < 1e-9);
        assert!((percentile_x(0.999, 6.0) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_x(1.0, 5.0), 5.0);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }

    #[test]
    fn writes_an_svg_with_one_line_per_target() {
        let mut a = crate::record::new_histogram();
        let mut b = crate::record::new_histogram();
        for i in 1..10_000u64 {
            a.record(i * 100).unwrap();
            b.record(i * 150).unwrap();
        }
        let lines = [
            PlotLine {
                label: "alpha".into(),
                histogram: &a,
                dashed: false,
                color: 0,
            },
            PlotLine {
                label: "beta".into(),
                histogram: &b,
                dashed: false,
                color: 1,
            },
        ];
        let svg = render_svg("test", &lines).unwrap();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("alpha") && svg.contains("beta"));
        assert!(svg.contains("99.9%"));
        assert_eq!(
            svg.matches("stroke-width=\"2\" points=").count(),
            4,
            "two lines plus two legend marks"
        );
    }
}
