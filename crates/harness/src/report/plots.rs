//! SVG plots for `--out DIR`: startup distribution per mode, memory per
//! instance, launch phases (stacked), and the density curves.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::compare::CompareReport;
use crate::HarnessError;

const W: u32 = 800;
const H: u32 = 450;

fn err(what: &str, e: impl std::fmt::Display) -> HarnessError {
    HarnessError::io(format!("draw {what}"), std::io::Error::other(e.to_string()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A chart with one column per name (`x` = 0, 1, ... labelled with the
/// names) and `0..ymax` up the side, its mesh drawn.
fn columns<'a, 'b>(
    root: &'a Area<'b>,
    what: &str,
    title: &str,
    names: &[String],
    ymax: f64,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, HarnessError> {
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..(names.len() as f64 - 0.5), 0.0..ymax.max(1.0))
        .map_err(|e| err(what, e))?;
    chart
        .configure_mesh()
        .x_labels(names.len())
        .x_label_formatter(&|x| {
            let i = x.round() as usize;
            if (x - i as f64).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(|e| err(what, e))?;
    Ok(chart)
}

/// Startup samples as a strip plot: one column per mode, every raw sample a dot,
/// the median a bar.
fn startup(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let modes: Vec<_> = r
        .modes
        .iter()
        .filter(|m| !m.raw_ready_ms.is_empty())
        .collect();
    if modes.is_empty() {
        return Ok(false);
    }
    let ymax = modes
        .iter()
        .flat_map(|m| m.raw_ready_ms.iter().chain(m.raw_first_response_ms.iter()))
        .fold(0.0f64, |a, b| a.max(*b))
        * 1.1;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("startup", e))?;
    let title = match &r.environment.label {
        Some(l) => format!("launch -> ready (ms) — {l}"),
        None => "launch -> ready (ms)".into(),
    };
    let names: Vec<String> = modes.iter().map(|m| m.mode.name().to_string()).collect();
    let mut chart = columns(&root, "startup", &title, &names, ymax, "ms")?;
    for (i, m) in modes.iter().enumerate() {
        let n = m.raw_ready_ms.len().max(1) as f64;
        chart
            .draw_series(m.raw_ready_ms.iter().enumerate().map(|(k, v)| {
                let jitter = (k as f64 / n - 0.5) * 0.3;
                Circle::new((i as f64 + jitter, *v), 3, BLUE.mix(0.6).filled())
            }))
            .map_err(|e| err("startup", e))?;
        chart
            .draw_series(m.raw_first_response_ms.iter().enumerate().map(|(k, v)| {
                let jitter = (k as f64 / n - 0.5) * 0.3;
                Cross::new((i as f64 + jitter, *v), 3, RED.mix(0.6))
            }))
            .map_err(|e| err("startup", e))?;
        if let Some(s) = &m.ready_ms {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(i as f64 - 0.25, s.p50), (i as f64 + 0.25, s.p50)],
                    BLACK.stroke_width(2),
                )))
                .map_err(|e| err("startup", e))?;
        }
    }
    root.present().map_err(|e| err("startup", e))?;
    Ok(true)
}

/// PSS per instance per mode, as bars.
fn memory(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let rows: Vec<(String, f64)> = r
        .modes
        .iter()
        .filter_map(|m| {
            m.memory
                .pss
                .as_ref()
                .map(|s| (m.mode.name().to_string(), s.p50 / 1048576.0))
        })
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let ymax = rows.iter().map(|r| r.1).fold(0.0f64, f64::max) * 1.2;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("memory", e))?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = columns(
        &root,
        "memory",
        "memory per instance: PSS of host processes (MiB, median)",
        &names,
        ymax,
        "MiB",
    )?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, *v)],
                BLUE.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err("memory", e))?;
    root.present().map_err(|e| err("memory", e))?;
    Ok(true)
}

/// The tenant's p99 ratio (with / alone) per mode: one bar per neighbour
/// kind and load pattern, its 95% interval as a whisker, a line at 1 (no
/// interference).
fn interference(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let modes: Vec<_> = r
        .neighbours
        .iter()
        .filter(|m| m.neighbours.iter().any(|n| !n.interference.is_empty()))
        .collect();
    if modes.is_empty() {
        return Ok(false);
    }
    // (kind/pattern) series in first-seen order.
    let mut series: Vec<String> = vec![];
    for m in &modes {
        for n in &m.neighbours {
            for i in &n.interference {
                let k = format!("{}/{}", n.kind, i.pattern);
                if !series.contains(&k) {
                    series.push(k);
                }
            }
        }
    }
    let ymax = modes
        .iter()
        .flat_map(|m| m.neighbours.iter().flat_map(|n| n.interference.iter()))
        .map(|i| i.p99_ratio.ci95[1].max(i.p99_ratio.ratio))
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("interference", e))?;
    let names: Vec<String> = modes.iter().map(|m| m.mode.name().to_string()).collect();
    let title = match &r.environment.label {
        Some(l) => format!("tenant p99 with / alone per neighbour (95% CI) — {l}"),
        None => "tenant p99 with / alone per neighbour (95% CI)".into(),
    };
    let mut chart = columns(&root, "interference", &title, &names, ymax, "ratio")?;
    let width = 0.8 / series.len() as f64;
    for (si, key) in series.iter().enumerate() {
        let colour = Palette99::pick(si).mix(0.7);
        let mut bars = vec![];
        let mut whiskers = vec![];
        for (mi, m) in modes.iter().enumerate() {
            for n in &m.neighbours {
                for i in &n.interference {
                    if &format!("{}/{}", n.kind, i.pattern) != key || !i.p99_ratio.ratio.is_finite()
                    {
                        continue;
                    }
                    let x0 = mi as f64 - 0.4 + si as f64 * width;
                    bars.push(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.9, i.p99_ratio.ratio)],
                        colour.filled(),
                    ));
                    let xc = x0 + width * 0.45;
                    whiskers.push(PathElement::new(
                        vec![(xc, i.p99_ratio.ci95[0]), (xc, i.p99_ratio.ci95[1])],
                        BLACK,
                    ));
                }
            }
        }
        chart
            .draw_series(bars)
            .map_err(|e| err("interference", e))?
            .label(key.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        chart
            .draw_series(whiskers)
            .map_err(|e| err("interference", e))?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, 1.0), (names.len() as f64 - 0.5, 1.0)],
            RED,
        )))
        .map_err(|e| err("interference", e))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| err("interference", e))?;
    root.present().map_err(|e| err("interference", e))?;
    Ok(true)
}

/// Distinct host system calls serving each traced mode's request run.
fn syscalls(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let rows: Vec<(String, f64)> = r
        .surface
        .iter()
        .filter(|m| matches!(m.status, crate::isolation::noisy::ScenarioStatus::Measured))
        .map(|m| (m.mode.name().to_string(), m.distinct() as f64))
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let ymax = rows.iter().map(|r| r.1).fold(0.0f64, f64::max) * 1.2;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("syscalls", e))?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let title = match &r.environment.label {
        Some(l) => format!("distinct host system calls serving a request run — {l}"),
        None => "distinct host system calls serving a request run".into(),
    };
    let mut chart = columns(&root, "syscalls", &title, &names, ymax, "system calls")?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, *v)],
                GREEN.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err("syscalls", e))?;
    root.present().map_err(|e| err("syscalls", e))?;
    Ok(true)
}

/// Distinct host kernel functions (ftrace, HAP) serving each measured
/// mode's request run; none where the kernel was not ours.
fn kernel_functions(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let rows: Vec<(String, f64)> = r
        .kernel_functions
        .iter()
        .filter(|m| matches!(m.status, crate::isolation::noisy::ScenarioStatus::Measured))
        .map(|m| (m.mode.name().to_string(), m.distinct as f64))
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let ymax = rows.iter().map(|r| r.1).fold(0.0f64, f64::max) * 1.2;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("kernel functions", e))?;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let what = "distinct host kernel functions serving a request run (ftrace)";
    let title = match &r.environment.label {
        Some(l) => format!("{what} — {l}"),
        None => what.into(),
    };
    let mut chart = columns(&root, "kernel functions", &title, &names, ymax, "functions")?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (_, v))| {
            Rectangle::new(
                [(i as f64 - 0.3, 0.0), (i as f64 + 0.3, *v)],
                BLUE.mix(0.5).filled(),
            )
        }))
        .map_err(|e| err("kernel functions", e))?;
    root.present().map_err(|e| err("kernel functions", e))?;
    Ok(true)
}

/// Each mode's phases (p50, in order) as (label, ms): the container's launch
/// phases, the microVM's boot phases; empty for modes without them.
fn phase_stack(m: &crate::compare::ModeReport) -> Vec<(String, f64)> {
    if let Some(p) = &m.launch_phases {
        return crate::compare::launch_phase_names()
            .into_iter()
            .filter_map(|(key, label)| p.get(&key).map(|s| (label.to_string(), s.p50)))
            .collect();
    }
    m.phases
        .as_ref()
        .map(|p| {
            crate::compare::PHASES
                .iter()
                .filter_map(|(key, _)| {
                    p.get(*key)
                        .map(|s| (key.trim_end_matches("_ms").replace('_', " "), s.p50))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Launch phases as stacked bars, one per mode that has them: the
/// container's (from launch) beside the microVM's (from monitor start).
fn phases(r: &CompareReport, out: &mut String) -> Result<bool, HarnessError> {
    let rows: Vec<(String, Vec<(String, f64)>)> = r
        .modes
        .iter()
        .map(|m| (m.mode.name().to_string(), phase_stack(m)))
        .filter(|(_, p)| !p.is_empty())
        .collect();
    if rows.is_empty() {
        return Ok(false);
    }
    let ymax = rows
        .iter()
        .map(|(_, p)| p.iter().map(|x| x.1).sum::<f64>())
        .fold(0.0f64, f64::max)
        * 1.2;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("phases", e))?;
    let title = match &r.environment.label {
        Some(l) => format!("launch phases (ms, p50, stacked) — {l}"),
        None => "launch phases (ms, p50, stacked; microVM from monitor start)".into(),
    };
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    let mut chart = columns(&root, "phases", &title, &names, ymax, "ms")?;
    for (i, (mode, stack)) in rows.iter().enumerate() {
        let mut base = 0.0;
        for (k, (label, v)) in stack.iter().enumerate() {
            let color = Palette99::pick(k + 12 * i).mix(0.8);
            let (lo, hi) = (base, base + v);
            base = hi;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(i as f64 - 0.3, lo), (i as f64 + 0.3, hi)],
                    color.filled(),
                )))
                .map_err(|e| err("phases", e))?
                .label(format!("{mode}: {label} {v:.2}"))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 10))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err("phases", e))?;
    root.present().map_err(|e| err("phases", e))?;
    Ok(true)
}

/// Memory and startup against the number of instances, one line per mode.
fn density(r: &CompareReport, out: &mut String, memory_axis: bool) -> Result<bool, HarnessError> {
    if r.density.iter().all(|d| d.points.is_empty()) {
        return Ok(false);
    }
    let val = |p: &crate::density::DensityPoint| {
        if memory_axis {
            p.memory_bytes as f64 / 1048576.0
        } else {
            p.ready_ms
        }
    };
    let xmax = r
        .density
        .iter()
        .flat_map(|d| d.points.iter().map(|p| p.n))
        .max()
        .unwrap_or(1) as f64;
    let ymax = r
        .density
        .iter()
        .flat_map(|d| d.points.iter().map(val))
        .fold(0.0f64, f64::max)
        * 1.1;
    let root = SVGBackend::with_string(out, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err("density", e))?;
    let cap = if memory_axis {
        "density: memory (MiB) vs instances"
    } else {
        "density: startup (ms) vs instances"
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(cap, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..xmax.max(1.0) + 1.0, 0.0..ymax.max(1.0))
        .map_err(|e| err("density", e))?;
    chart
        .configure_mesh()
        .x_desc("instances")
        .draw()
        .map_err(|e| err("density", e))?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, d) in r.density.iter().enumerate() {
        let color = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(
                d.points.iter().map(|p| (p.n as f64, val(p))),
                color,
            ))
            .map_err(|e| err("density", e))?
            .label(density_legend(d, memory_axis))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .draw()
        .map_err(|e| err("density", e))?;
    root.present().map_err(|e| err("density", e))?;
    Ok(true)
}

/// "container: 1000 measured, stopped by budget", with the projection
/// (labelled so) on the memory plot.
fn density_legend(d: &crate::density::DensityReport, memory_axis: bool) -> String {
    let mut l = format!(
        "{}: {} measured, stopped by {}",
        d.mode.name(),
        d.count,
        d.stop_rule
    );
    if let (true, Some(p)) = (memory_axis, d.projected_count) {
        l.push_str(&format!("; projection ~{p}"));
    }
    l
}

/// Write every plot that has data into `dir`; returns the file names written.
/// Each is drawn in memory, then written with `O_NOFOLLOW`, so a symlink
/// planted in the output directory is refused, never followed.
pub fn write_all(r: &CompareReport, dir: &Path) -> Result<Vec<String>, HarnessError> {
    let mut written = vec![];
    let mut go = |name: &str,
                  f: &dyn Fn(&mut String) -> Result<bool, HarnessError>|
     -> Result<(), HarnessError> {
        let mut svg = String::new();
        if f(&mut svg)? {
            let p: PathBuf = dir.join(name);
            write_nofollow(&p, svg.as_bytes())
                .map_err(|e| HarnessError::io(format!("write {}", p.display()), e))?;
            written.push(name.to_string());
        }
        Ok(())
    };
    go("startup.svg", &|s| startup(r, s))?;
    go("memory.svg", &|s| memory(r, s))?;
    go("phases.svg", &|s| phases(r, s))?;
    go("density-memory.svg", &|s| density(r, s, true))?;
    go("density-startup.svg", &|s| density(r, s, false))?;
    go("interference.svg", &|s| interference(r, s))?;
    go("syscalls.svg", &|s| syscalls(r, s))?;
    go("kernel-functions.svg", &|s| kernel_functions(r, s))?;
    Ok(written)
}

/// Creates or truncates `path` without following a symlink at its last
/// component (`ELOOP`).
fn write_nofollow(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?
        .write_all(data)
}
