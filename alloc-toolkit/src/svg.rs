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
    let t_max = series.last().map_or(0.0, |s| s.t.as_secs_f64()).max(1e-9);
    let y_max = series
        .iter()
        .flat_map(|s| SERIES.iter().map(move |m| m.0.of(s)))
        .max()
        .unwrap_or(0)
        .max(1) as f64;
    let x = |t: f64| LEFT + t / t_max * W;
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
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><text x="{}" y="{}" text-anchor="middle">{:.2} s</text>"#,
            LEFT - 6.0,
            y(f * y_max) + 4.0,
            format_bytes((f * y_max) as u64),
            x(f * t_max),
            TOP + H + 18.0,
            f * t_max
        );
    }
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
}
