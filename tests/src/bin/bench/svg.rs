//! The picture beside the JSON: left, flush rows/s against flusher count × flags, beside the raw
//! COPY limits; right, end-to-end latency p50/p99 against the offered load.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Result;

/// What the picture shows.
#[derive(Default, Debug)]
pub struct Plot {
    /// (short name, rows/s) of each flush row, in run order.
    pub flush: Vec<(String, f64)>,
    /// rows/s: raw one-COPY median, 100-row transactions, 1000-row transactions.
    pub raw_copy: [f64; 3],
    /// (name, offered events/s, p50 ms, p99 ms) of each end-to-end row.
    pub e2e: Vec<(String, f64, f64, f64)>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

pub fn draw(plot: &Plot, path: &Path, quick: bool) -> Result<()> {
    let root = SVGBackend::new(path, (1300, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = if quick {
        "EventTracker bench (QUICK smoke run: figures mean nothing)"
    } else {
        "EventTracker bench"
    };
    let root = root.titled(title, ("sans-serif", 24))?;
    let (left, right) = root.split_horizontally(650);
    flush_panel(plot, &left)?;
    latency_panel(plot, &right)?;
    root.present()?;
    Ok(())
}

fn flush_panel(plot: &Plot, area: &Area) -> Result<()> {
    let n = plot.flush.len().max(1);
    let top = plot
        .flush
        .iter()
        .map(|f| f.1)
        .chain(plot.raw_copy)
        .fold(1.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Flush: rows/s by flushers x flags (def = defaults)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..top)?;
    let names: Vec<String> = plot.flush.iter().map(|f| f.0.clone()).collect();
    let label = move |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            names.get(i as usize).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&label)
        .x_desc("flushers, flags")
        .y_desc("rows/s")
        .y_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .label_style(("sans-serif", 14))
        .draw()?;
    let lines = [
        ("raw one COPY (median of 3)", plot.raw_copy[0], RED),
        ("raw COPY, 1000-row txns", plot.raw_copy[2], MAGENTA),
        ("raw COPY, 100-row txns", plot.raw_copy[1], BLUE),
    ];
    for (name, y, color) in lines {
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(vec![(-0.5, y), (n as f64 - 0.5, y)], style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    let points = plot.flush.iter().enumerate().map(|(i, f)| (i as f64, f.1));
    chart
        .draw_series(points.map(|p| Circle::new(p, 6, BLACK.filled())))?
        .label("pipeline (flushers)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLACK.filled()));
    for (i, f) in plot.flush.iter().enumerate() {
        let text = format!("{:.1}k", f.1 / 1000.0);
        let at = (i as f64 + 0.08, f.1 + top * 0.03);
        chart.draw_series(std::iter::once(Text::new(text, at, ("sans-serif", 13))))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

fn latency_panel(plot: &Plot, area: &Area) -> Result<()> {
    let mut pts = plot.e2e.clone();
    pts.sort_by(|a, b| a.1.total_cmp(&b.1));
    let right = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let top = pts.iter().map(|p| p.3).fold(10.0, f64::max) * 2.0;
    let floor = 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "End to end: 200 -> row visible (2 flushers, defaults)",
            ("sans-serif", 18),
        )
        .margin(15)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..right, (floor..top).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("offered load, events/s")
        .y_desc("latency, ms (log)")
        .x_label_formatter(&|v| format!("{:.0}k", v / 1000.0))
        .y_label_formatter(&|v| format!("{v}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    for (name, idx, color) in [("p50", 2, GREEN), ("p99", 3, RED)] {
        let series: Vec<(f64, f64)> = pts
            .iter()
            .map(|p| (p.1, if idx == 2 { p.2 } else { p.3 }.max(floor)))
            .collect();
        let style = color.stroke_width(2);
        chart
            .draw_series(LineSeries::new(series.clone(), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart.draw_series(series.iter().map(|&p| Circle::new(p, 5, color.filled())))?;
    }
    for p in &pts {
        let at = (p.1 + right * 0.015, p.3.max(floor) * 1.25);
        chart.draw_series(std::iter::once(Text::new(
            p.0.clone(),
            at,
            ("sans-serif", 14),
        )))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}
