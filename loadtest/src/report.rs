//! Results: per-run metrics, medians over runs, ratios to the baselines, the table, JSON
//! and the SVG plot.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::targets::System;

#[derive(Clone, Debug, Serialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub higher_is_better: bool,
}

impl Metric {
    pub fn hi(name: &str, unit: &str, value: f64) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            value,
            higher_is_better: true,
        }
    }
    pub fn lo(name: &str, unit: &str, value: f64) -> Metric {
        Metric {
            name: name.into(),
            unit: unit.into(),
            value,
            higher_is_better: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub system: String,
    #[serde(skip)]
    pub sys: Option<System>,
    pub run: usize,
    pub ok: bool,
    pub errors: Vec<String>,
    pub metrics: Vec<Metric>,
    /// (seconds, rate) — GB/s for byte streams, messages or channels per second otherwise.
    pub series: Vec<(f64, f64)>,
}

impl RunResult {
    pub fn new(
        sys: System,
        metrics: Vec<Metric>,
        series: Vec<(f64, f64)>,
        errors: Vec<String>,
    ) -> RunResult {
        // "n/a" notes are not failures.
        let ok = errors.iter().all(|e| e.starts_with("n/a"));
        RunResult {
            system: sys.name().into(),
            sys: Some(sys),
            run: 0,
            ok,
            errors,
            metrics,
            series,
        }
    }
    pub fn failed(sys: System, err: String) -> RunResult {
        let mut r = RunResult::new(sys, Vec::new(), Vec::new(), vec![err]);
        r.ok = false;
        r
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

fn stat(v: &mut Vec<f64>) -> Option<Stat> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Stat {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct SummaryRow {
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    /// system name → median/min/max over the successful runs
    pub systems: BTreeMap<String, Stat>,
    /// chanrelay median ÷ copy-proxy median
    pub ratio_vs_copy_proxy: Option<f64>,
    /// chanrelay median ÷ direct median
    pub ratio_vs_direct: Option<f64>,
}

pub fn summarize(runs: &[RunResult], systems: &[System]) -> Vec<SummaryRow> {
    let mut order: Vec<(String, String, bool)> = Vec::new();
    for r in runs {
        for m in &r.metrics {
            if !order.iter().any(|(n, _, _)| *n == m.name) {
                order.push((m.name.clone(), m.unit.clone(), m.higher_is_better));
            }
        }
    }
    let mut rows = Vec::new();
    for (name, unit, hib) in order {
        let mut stats = BTreeMap::new();
        for s in systems {
            let mut v: Vec<f64> = runs
                .iter()
                .filter(|r| r.ok && r.sys == Some(*s))
                .flat_map(|r| r.metrics.iter().filter(|m| m.name == name).map(|m| m.value))
                .collect();
            if let Some(st) = stat(&mut v) {
                stats.insert(s.name().to_string(), st);
            }
        }
        let ratio = |other: &str| -> Option<f64> {
            let a = stats.get("chanrelay")?.median;
            let b = stats.get(other)?.median;
            (b != 0.0).then_some(a / b)
        };
        let (rc, rd) = (ratio("copy-proxy"), ratio("direct"));
        rows.push(SummaryRow {
            metric: name,
            unit,
            higher_is_better: hib,
            systems: stats,
            ratio_vs_copy_proxy: rc,
            ratio_vs_direct: rd,
        });
    }
    rows
}

pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        "-".into()
    } else if a >= 100_000.0 {
        format!("{:.0}", x)
    } else if a >= 100.0 {
        format!("{:.1}", x)
    } else if a >= 10.0 {
        format!("{:.2}", x)
    } else {
        format!("{:.3}", x)
    }
}

pub fn print_table(title: &str, rows: &[SummaryRow], systems: &[System], runs: &[RunResult]) {
    println!();
    println!("== {title}");
    let mut header = vec!["metric".to_string()];
    for s in systems {
        header.push(format!("{} (median [min–max])", s.name()));
    }
    header.push("÷ copy-proxy".into());
    header.push("÷ direct".into());
    let mut table: Vec<Vec<String>> = vec![header];
    for r in rows {
        let mut line = vec![format!("{} ({})", r.metric, r.unit)];
        for s in systems {
            line.push(match r.systems.get(s.name()) {
                Some(st) if st.n > 1 => format!(
                    "{} [{}–{}] n={}",
                    fmt_num(st.median),
                    fmt_num(st.min),
                    fmt_num(st.max),
                    st.n
                ),
                Some(st) => fmt_num(st.median),
                None => "n/a".into(),
            });
        }
        line.push(
            r.ratio_vs_copy_proxy
                .map(|x| format!("{x:.3}×"))
                .unwrap_or("-".into()),
        );
        line.push(
            r.ratio_vs_direct
                .map(|x| format!("{x:.3}×"))
                .unwrap_or("-".into()),
        );
        table.push(line);
    }
    let cols = table[0].len();
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, l) in table.iter().enumerate() {
        let cells: Vec<String> = l
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        println!("  {}", cells.join("  ").trim_end());
        if i == 0 {
            println!(
                "  {}",
                "-".repeat(widths.iter().sum::<usize>() + 2 * (cols - 1))
            );
        }
    }
    let mut shown = 0;
    for r in runs {
        for e in &r.errors {
            if shown < 30 {
                let tag = if e.starts_with("n/a") {
                    "note"
                } else {
                    "ERROR"
                };
                println!("  {tag}: {} run {}: {e}", r.system, r.run + 1);
                shown += 1;
            }
        }
    }
}

/// Throughput (or rate) over time, one line per system and run.
pub fn plot(path: &str, title: &str, y_label: &str, runs: &[RunResult]) -> Result<(), String> {
    use plotters::prelude::*;
    let series: Vec<&RunResult> = runs.iter().filter(|r| !r.series.is_empty()).collect();
    if series.is_empty() {
        return Err("no time series in this scenario".into());
    }
    let xmax = series
        .iter()
        .flat_map(|r| r.series.iter().map(|p| p.0))
        .fold(0.1f64, f64::max);
    let ymax = series
        .iter()
        .flat_map(|r| r.series.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        * 1.1
        + 1e-9;
    let root = SVGBackend::new(path, (1000, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_desc("seconds since start of run")
        .y_desc(y_label)
        .draw()
        .map_err(|e| e.to_string())?;
    let color = |name: &str| match name {
        "chanrelay" => RGBColor(200, 40, 40),
        "copy-proxy" => RGBColor(40, 90, 200),
        _ => RGBColor(40, 150, 60),
    };
    let mut labelled = std::collections::HashSet::new();
    for r in series {
        let c = color(&r.system);
        let s = chart
            .draw_series(LineSeries::new(r.series.iter().copied(), c.stroke_width(2)))
            .map_err(|e| e.to_string())?;
        if labelled.insert(r.system.clone()) {
            s.label(r.system.clone()).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
            });
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
