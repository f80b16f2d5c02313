//! The scale report's curves, as plain SVG: one value against cluster size
//! (both axes logarithmic), one line per series.

use std::fmt::Write;

use super::{ScaleReport, synthetic::Placement};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 400.0;
const MARGIN: f64 = 64.0;
const COLOURS: [&str; 6] = [
    "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860",
];

/// One line: a name and its points (x, y), both positive.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Decision cost against cluster size, per policy count and placement.
pub fn decision(report: &ScaleReport) -> String {
    let mut series = Vec::new();
    let mut counts: Vec<usize> = report.decisions.iter().map(|r| r.policies).collect();
    counts.sort_unstable();
    counts.dedup();
    for placement in [Placement::Elsewhere, Placement::SameNamespace] {
        for &count in &counts {
            series.push(Series {
                name: format!("{count} policies, {}", placement.name()),
                points: report
                    .decisions
                    .iter()
                    .filter(|r| r.policies == count && r.placement == placement)
                    .map(|r| (r.pods as f64, r.route_ns + r.decide_ns))
                    .collect(),
            });
        }
    }
    lines(
        "Route + policy decision per connection",
        "pods in the cluster",
        "ns per connection",
        &series,
    )
}

/// The daemon's memory and rebuild CPU against cluster size.
pub fn daemon(report: &ScaleReport) -> String {
    let rows = &report.daemon;
    let series = vec![
        Series {
            name: "RSS when ready (MiB)".to_owned(),
            points: rows
                .iter()
                .map(|r| (r.pods as f64, r.rss_ready_mib))
                .collect(),
        },
        Series {
            name: "start to ready (ms)".to_owned(),
            points: rows
                .iter()
                .map(|r| (r.pods as f64, r.start_to_ready_ms))
                .collect(),
        },
        Series {
            name: "CPU per 1,000 pod events (ms)".to_owned(),
            points: rows
                .iter()
                .map(|r| (r.pods as f64, r.cpu_per_1000_events_ms))
                .collect(),
        },
        Series {
            name: "policy change to data path (ms)".to_owned(),
            points: rows
                .iter()
                .map(|r| (r.pods as f64, r.policy_to_data_path_ms))
                .collect(),
        },
    ];
    lines(
        "The node daemon against the API server",
        "pods in the cluster",
        "value",
        &series,
    )
}

fn lines(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let points = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| *x > 0.0 && *y > 0.0)
    };
    let decade = |value: f64, up: bool| {
        let exponent = value.log10();
        10f64.powf(if up {
            exponent.ceil()
        } else {
            exponent.floor()
        })
    };
    let x_min = decade(points().map(|p| p.0).fold(f64::MAX, f64::min), false);
    let x_max = decade(points().map(|p| p.0).fold(1.0, f64::max), true).max(x_min * 10.0);
    let y_min = decade(points().map(|p| p.1).fold(f64::MAX, f64::min), false);
    let y_max = decade(points().map(|p| p.1).fold(1.0, f64::max), true).max(y_min * 10.0);
    let x =
        |v: f64| MARGIN + (v / x_min).log10() / (x_max / x_min).log10() * (WIDTH - 2.0 * MARGIN);
    let y = |v: f64| {
        HEIGHT - MARGIN - (v / y_min).log10() / (y_max / y_min).log10() * (HEIGHT - 2.0 * MARGIN)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>\n",
        WIDTH / 2.0
    );
    // Decades on both axes.
    let mut tick = x_min;
    while tick <= x_max * 1.001 {
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"#ddd\"/>\
             <text x=\"{0}\" y=\"{3}\" text-anchor=\"middle\">{tick}</text>",
            x(tick),
            MARGIN,
            HEIGHT - MARGIN,
            HEIGHT - MARGIN + 16.0
        );
        tick *= 10.0;
    }
    let mut tick = y_min;
    while tick <= y_max * 1.001 {
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#ddd\"/>\
             <text x=\"{3}\" y=\"{4}\" text-anchor=\"end\">{tick}</text>",
            MARGIN,
            y(tick),
            WIDTH - MARGIN,
            MARGIN - 6.0,
            y(tick) + 4.0
        );
        tick *= 10.0;
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\
         <text x=\"14\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {})\">{y_label}</text>",
        WIDTH / 2.0,
        HEIGHT - 18.0,
        HEIGHT / 2.0,
        HEIGHT / 2.0
    );
    for (i, line) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = line
            .points
            .iter()
            .filter(|(px, py)| *px > 0.0 && *py > 0.0)
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(*py)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.join(" ")
        );
        for point in &path {
            let (px, py) = point.split_once(',').unwrap_or_default();
            let _ = writeln!(
                svg,
                "<circle cx=\"{px}\" cy=\"{py}\" r=\"3\" fill=\"{colour}\"/>"
            );
        }
        let legend_y = MARGIN + 4.0 + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            MARGIN + 10.0,
            legend_y - 9.0,
            MARGIN + 24.0,
            legend_y,
            line.name
        );
    }
    svg.push_str("</svg>\n");
    svg
}
