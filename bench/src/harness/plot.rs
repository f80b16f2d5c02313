//! The report's plots, as plain SVG: throughput bars and latency
//! percentile curves per scenario.

use std::fmt::Write;

use super::{
    report::{Figure, Report},
    scenario::Scenario,
};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 380.0;
const MARGIN: f64 = 56.0;

fn colour(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Direct => "#4c72b0",
        Scenario::Relay => "#dd8452",
        Scenario::Mtls => "#55a868",
        Scenario::MtlsPerConnection => "#c44e52",
        Scenario::MtlsFullHandshake => "#8172b3",
        Scenario::MtlsAccelerated => "#937860",
        Scenario::MtlsHbone => "#64b5cd",
        Scenario::DirectSameNode => "#da8bc3",
        Scenario::MtlsSameNode => "#8c8c8c",
        Scenario::MtlsSameNodeAccelerated => "#ccb974",
    }
}

fn open(title: &str) -> String {
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{title}</text>",
        WIDTH / 2.0
    );
    svg
}

fn legend(svg: &mut String, x: f64, y: f64) {
    for (i, scenario) in Scenario::MAIN.iter().enumerate() {
        let y = y + i as f64 * 16.0;
        let _ = writeln!(
            svg,
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 9.0,
            colour(*scenario),
            x + 14.0,
            y,
            scenario.name()
        );
    }
}

/// Bars of the median throughput per scenario, 1 and 4 streams, with the
/// range of the runs as whiskers.
pub fn throughput(report: &Report) -> String {
    let mut svg = open("iperf3 throughput between pods on two nodes (Gbit/s)");
    let groups = [(1, "1 stream"), (4, "4 streams")];
    let top = groups
        .iter()
        .flat_map(|(streams, _)| {
            Scenario::MAIN
                .iter()
                .filter_map(move |s| report.summary(&Figure::throughput(*streams), *s))
        })
        .map(|s| s.max)
        .fold(1.0_f64, f64::max)
        * 1.1;
    let (plot_h, base) = (HEIGHT - 2.0 * MARGIN, HEIGHT - MARGIN);
    let y = |v: f64| base - v / top * plot_h;
    axis_y(&mut svg, 0.0, top, &y, false);
    let group_w = (WIDTH - 2.0 * MARGIN) / groups.len() as f64;
    let bar_w = group_w / 5.0;
    for (g, (streams, label)) in groups.iter().enumerate() {
        let x0 = MARGIN + g as f64 * group_w + bar_w;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
            x0 + 1.5 * bar_w,
            base + 18.0
        );
        for (i, scenario) in Scenario::MAIN.iter().enumerate() {
            let Some(s) = report.summary(&Figure::throughput(*streams), *scenario) else {
                continue;
            };
            let x = x0 + i as f64 * bar_w;
            let mid = x + bar_w * 0.45;
            let _ = writeln!(
                svg,
                "<rect x=\"{x}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>\
                 <line x1=\"{mid}\" x2=\"{mid}\" y1=\"{}\" y2=\"{}\" stroke=\"black\"/>\
                 <text x=\"{mid}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{:.1}</text>",
                y(s.median),
                bar_w * 0.9,
                base - y(s.median),
                colour(*scenario),
                y(s.min),
                y(s.max),
                y(s.max) - 4.0,
                s.median
            );
        }
    }
    legend(&mut svg, WIDTH - MARGIN - 60.0, MARGIN);
    svg.push_str("</svg>\n");
    svg
}

/// Latency percentiles (median over the runs) per scenario, at 16 and 64
/// connections, on a log scale; the x axis counts nines (p50, p90, p99 ...).
pub fn latency(report: &Report) -> String {
    let rate = report.settings.rate;
    let mut svg = open(&format!(
        "latency at {rate} requests/s, 1 KiB each way (ms, log scale)"
    ));
    let percentiles: Vec<f64> = Figure::PERCENTILES
        .iter()
        .copied()
        .filter(|p| *p < 100.0)
        .collect();
    let curve = |connections: usize, scenario: Scenario| -> Vec<(f64, f64)> {
        percentiles
            .iter()
            .filter_map(|p| {
                let s = report.summary(&Figure::latency(connections, *p), scenario)?;
                (s.median > 0.0).then_some((*p, s.median))
            })
            .collect()
    };
    let values: Vec<f64> = [16, 64]
        .iter()
        .flat_map(|c| Scenario::MAIN.iter().flat_map(move |s| curve(*c, *s)))
        .map(|(_, v)| v)
        .collect();
    let (low, high) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    if values.is_empty() {
        svg.push_str("</svg>\n");
        return svg;
    }
    let (low, high) = (
        low.log10().floor(),
        high.log10().ceil().max(low.log10().floor() + 1.0),
    );
    let (plot_h, base) = (HEIGHT - 2.0 * MARGIN, HEIGHT - MARGIN);
    let y = |v: f64| base - (v.log10() - low) / (high - low) * plot_h;
    const GAP: f64 = 48.0;
    let panel_w = (WIDTH - 2.0 * MARGIN - GAP) / 2.0;
    let nines = |p: f64| -(1.0 - p / 100.0).log10();
    let max_nines = nines(*percentiles.last().unwrap_or(&99.9));
    for (panel, connections) in [16, 64].iter().enumerate() {
        let x0 = MARGIN + panel as f64 * (panel_w + GAP);
        let x = |p: f64| x0 + (nines(p) - nines(50.0)) / (max_nines - nines(50.0)) * panel_w;
        if panel == 0 {
            axis_y(&mut svg, 10f64.powf(low), 10f64.powf(high), &|v| y(v), true);
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{connections} connections</text>\
             <line x1=\"{x0}\" x2=\"{}\" y1=\"{base}\" y2=\"{base}\" stroke=\"#999\"/>",
            x0 + panel_w / 2.0,
            MARGIN - 8.0,
            x0 + panel_w
        );
        // Every other percentile is labelled: their ticks are close.
        for p in percentiles
            .iter()
            .filter(|p| [50.0, 90.0, 99.0, 99.9, 99.99].contains(*p))
        {
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">p{p}</text>",
                x(*p),
                base + 14.0
            );
        }
        for scenario in Scenario::MAIN {
            let points: Vec<String> = curve(*connections, scenario)
                .iter()
                .map(|(p, v)| format!("{:.1},{:.1}", x(*p), y(*v)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>",
                points.join(" "),
                colour(scenario)
            );
        }
    }
    legend(&mut svg, MARGIN + 10.0, MARGIN + 10.0);
    svg.push_str("</svg>\n");
    svg
}

/// A vertical axis from `low` to `high` with a few labelled ticks (decades
/// on a log scale).
fn axis_y(svg: &mut String, low: f64, high: f64, y: &dyn Fn(f64) -> f64, log: bool) {
    let ticks: Vec<f64> = if log {
        let (a, b) = (low.log10().round() as i32, high.log10().round() as i32);
        (a..=b).map(|e| 10f64.powi(e)).collect()
    } else {
        let step = nice_step(high / 5.0);
        (0..=((high / step) as usize))
            .map(|i| i as f64 * step)
            .collect()
    };
    for tick in ticks {
        let at = y(tick);
        let _ = writeln!(
            svg,
            "<line x1=\"{MARGIN}\" x2=\"{}\" y1=\"{at}\" y2=\"{at}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\" font-size=\"10\">{tick}</text>",
            WIDTH - MARGIN,
            MARGIN - 4.0,
            at + 3.0,
        );
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * power)
}
