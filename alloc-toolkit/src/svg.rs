//! A plot of a monitor's time series as SVG text: one line per figure, time
//! on x, bytes on y, with axis labels and a legend. No plotting crate.

use std::fmt::Write as _;

use alloc_host::format_bytes;

use crate::monitor::{Metric, Sample};

const W: f64 = 800.0; // plot width, px
const H: f64 = 360.0; // plot height, px
const LEFT: f64 = 80.0; // room for y labels, px
const TOP: f64 = 30.0; // room for the title, px
const BOTTOM: f64 = 40.0; // room for x labels, px

const SERIES: [(Metric, &str, &str); 4] = [
    (Metric::Rss, "RSS", "#7f7f7f"),
    (Metric::HostLive, "tracked host", "#1f77b4"),
    (Metric::DeviceReserved, "device reserved", "#ff7f0e"),
    (Metric::DeviceAllocated, "device allocated", "#2ca02c"),
];

/// The series as an SVG document titled `title`. Figures that stay at zero are
/// left out; an empty series gives a plot with only the axes.
pub fn plot_svg(series: &[Sample], title: &str) -> String {
    // The x-axis runs from the first sample shown to the last: a monitor
    // keeps only its latest samples, so time since start would leave the
    // chart empty on the left.
    let t_min = series.first().map_or(0.0, |s| s.t.as_secs_f64());
    let t_max = series.last().map_or(0.0, |s| s.t.as_secs_f64());
    let span = (t_max - t_min).max(1e-9);
    let y_max = series
        .iter()
        .flat_map(|s| SERIES.iter().map(move |m| m.0.of(s)))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| LEFT + (t - t_min) / span * W;
    let y = |v: f64| TOP + H - v / y_max * H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="12">"#,
        LEFT + W + 20.0,
        TOP + H + BOTTOM
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="18" font-size="14">{}</text>"#,
        xml(title)
    );
    let _ = writeln!(
        out,
        r#"<path d="M{LEFT},{TOP} V{} H{}" stroke="black" fill="none"/>"#,
        TOP + H,
        LEFT + W
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            LEFT - 6.0,
            y(f * y_max) + 4.0,
            format_bytes((f * y_max) as u64),
            x(t_min + f * span),
            TOP + H + 18.0,
            seconds(t_min + f * span, span)
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" text-anchor="end" fill="#666">time since the monitor started</text>"##,
        LEFT + W,
        TOP + H + 36.0
    );
    let mut legend = 0.0;
    for (metric, label, color) in SERIES {
        if series.iter().all(|s| metric.of(s) == 0) {
            continue;
        }
        out.push_str(r#"<polyline fill="none" stroke-width="1.5" stroke=""#);
        out.push_str(color);
        out.push_str(r#"" points=""#);
        for s in series {
            let _ = write!(
                out,
                "{:.1},{:.1} ",
                x(s.t.as_secs_f64()),
                y(metric.of(s) as f64)
            );
        }
        out.push_str("\"/>\n");
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" fill="{color}">{label}</text>"#,
            LEFT + 10.0 + legend,
            TOP + 14.0
        );
        legend += 130.0;
    }
    out.push_str("</svg>\n");
    out
}

/// A time label with its unit, as precise as the chart's span needs.
fn seconds(t: f64, span: f64) -> String {
    if span >= 20.0 {
        format!("{t:.0} s")
    } else if span >= 2.0 {
        format!("{t:.1} s")
    } else {
        format!("{t:.2} s")
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn plots_each_nonzero_series() {
        let series: Vec<Sample> = (0..5)
            .map(|i| Sample {
                t: Duration::from_millis(10 * i),
                host_live: 1000 * i,
                rss: 5000,
                ..Sample::default()
            })
            .collect();
        let svg = plot_svg(&series, "a <test>");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;test&gt;"));
        // the largest value sits on the top edge
        assert!(svg.contains(&format!("{:.1},{:.1}", LEFT, TOP)), "{svg}");
        assert_eq!(plot_svg(&[], "empty").matches("<polyline").count(), 0);
    }

    /// The x coordinates of each polyline's points.
    fn polyline_xs(svg: &str) -> Vec<Vec<f64>> {
        svg.split("points=\"")
            .skip(1)
            .map(|rest| {
                rest[..rest.find('"').unwrap()]
                    .split_whitespace()
                    .map(|p| p.split(',').next().unwrap().parse().unwrap())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_x_axis_covers_the_samples_not_the_time_since_start() {
        // A monitor keeping its last minute, nine minutes in: t = 540..600 s.
        let series: Vec<Sample> = (0..=60)
            .map(|i| Sample {
                t: Duration::from_secs(540 + i),
                rss: 1 << 20,
                host_live: (1 + i % 7) << 16,
                ..Sample::default()
            })
            .collect();
        let svg = plot_svg(&series, "late");
        let lines = polyline_xs(&svg);
        assert_eq!(lines.len(), 2, "{svg}");
        for xs in lines {
            let (first, last) = (xs[0], *xs.last().unwrap());
            assert!(
                (first - LEFT).abs() < 0.5 && (last - (LEFT + W)).abs() < 0.5,
                "the line spans x = {first}..{last}, the chart {LEFT}..{}",
                LEFT + W
            );
        }
        // The axis is labelled from the first sample shown, with its unit.
        assert!(svg.contains(">540 s<") && svg.contains(">600 s<"), "{svg}");
        assert!(!svg.contains(">0.00 s<"), "{svg}");
        // One sample: a point at the left edge, not a division by zero.
        let one = plot_svg(&series[..1], "one");
        assert!(polyline_xs(&one).iter().all(|xs| xs == &[LEFT]), "{one}");
    }
}
