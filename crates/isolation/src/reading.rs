//! The short reading at the end of a compare report, generated from the
//! measured numbers only: for each axis, which mode led, by how much over
//! the next, which came last, and which were not measured (and why). No
//! verdict is written in advance: change the numbers and the sentences
//! change.
//!
//! Two modes are "level" when their 95% intervals overlap (where both have
//! one) or, without intervals, when they are within [`LEVEL_WITHIN`] of
//! each other.

use serde::{Deserialize, Serialize};

/// Relative difference under which two values without intervals are level.
pub const LEVEL_WITHIN: f64 = 0.05;

/// Which direction is better on an axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Lower,
    Higher,
}

/// One mode's figure on an axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Figure {
    Measured { value: f64, ci95: Option<[f64; 2]> },
    NotMeasured { reason: String },
}

/// One axis of the comparison (startup, PSS, interference ratio under a
/// cpu neighbour, distinct host syscalls...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    /// Shown as the sentence's subject, e.g. `startup (p50 ready)`.
    pub name: String,
    /// Unit after values (`ms`, `MiB`, `x`, `calls`); may be empty.
    pub unit: String,
    pub better: Better,
    /// (mode, figure), in the report's column order.
    pub figures: Vec<(String, Figure)>,
}

fn fmt(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == a.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn with_unit(v: f64, unit: &str) -> String {
    if unit.is_empty() {
        fmt(v)
    } else if unit == "x" {
        format!("{}x", fmt(v))
    } else {
        format!("{} {unit}", fmt(v))
    }
}

fn level(a: (f64, Option<[f64; 2]>), b: (f64, Option<[f64; 2]>)) -> bool {
    match (a.1, b.1) {
        (Some(x), Some(y)) => x[0] <= y[1] && y[0] <= x[1],
        _ => {
            let big = a.0.abs().max(b.0.abs());
            big == 0.0 || (a.0 - b.0).abs() / big < LEVEL_WITHIN
        }
    }
}

/// The sentences for one axis (one, or two when some modes were not
/// measured).
pub fn axis_reading(axis: &Axis) -> Vec<String> {
    let mut measured: Vec<(&str, f64, Option<[f64; 2]>)> = axis
        .figures
        .iter()
        .filter_map(|(m, f)| match f {
            Figure::Measured { value, ci95 } if value.is_finite() => {
                Some((m.as_str(), *value, *ci95))
            }
            _ => None,
        })
        .collect();
    let missing: Vec<String> = axis
        .figures
        .iter()
        .filter_map(|(m, f)| match f {
            Figure::NotMeasured { reason } => Some(format!("{m} ({reason})")),
            Figure::Measured { value, .. } if !value.is_finite() => Some(format!("{m} (no value)")),
            Figure::Measured { .. } => None,
        })
        .collect();
    match axis.better {
        Better::Lower => measured.sort_by(|a, b| a.1.total_cmp(&b.1)),
        Better::Higher => measured.sort_by(|a, b| b.1.total_cmp(&a.1)),
    }
    let mut out = Vec::new();
    let u = &axis.unit;
    match measured.as_slice() {
        [] => {}
        [(m, v, _)] => out.push(format!(
            "{}: only {m} was measured ({}).",
            axis.name,
            with_unit(*v, u)
        )),
        [first, rest @ ..] => {
            let ties: Vec<&str> = rest
                .iter()
                .take_while(|o| level((first.1, first.2), (o.1, o.2)))
                .map(|o| o.0)
                .collect();
            let mut s = if ties.is_empty() {
                let second = rest[0];
                let factor = match axis.better {
                    Better::Lower => second.1 / first.1,
                    Better::Higher => first.1 / second.1,
                };
                let by = if factor.is_finite() {
                    format!("{}x", fmt(factor))
                } else {
                    "far".to_owned()
                };
                format!(
                    "{}: {} led ({}), {by} better than {} ({})",
                    axis.name,
                    first.0,
                    with_unit(first.1, u),
                    second.0,
                    with_unit(second.1, u)
                )
            } else {
                let mut names = vec![first.0];
                names.extend(&ties);
                format!(
                    "{}: {} were level ({} to {})",
                    axis.name,
                    names.join(" and "),
                    with_unit(first.1, u),
                    with_unit(rest[ties.len() - 1].1, u)
                )
            };
            let last = measured.last().expect("at least two");
            if measured.len() > 2 && !ties.contains(&last.0) && last.0 != rest[0].0 {
                s.push_str(&format!("; {} was last ({})", last.0, with_unit(last.1, u)));
            }
            s.push('.');
            out.push(s);
        }
    }
    if !missing.is_empty() {
        out.push(format!(
            "{}: not measured for {}.",
            axis.name,
            missing.join(", ")
        ));
    }
    out
}

/// The reading of a whole report: every axis's sentences, in order.
pub fn reading(axes: &[Axis]) -> Vec<String> {
    axes.iter().flat_map(axis_reading).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(value: f64) -> Figure {
        Figure::Measured { value, ci95: None }
    }

    fn axis(name: &str, unit: &str, better: Better, figs: Vec<(&str, Figure)>) -> Axis {
        Axis {
            name: name.into(),
            unit: unit.into(),
            better,
            figures: figs.into_iter().map(|(k, f)| (k.to_owned(), f)).collect(),
        }
    }

    #[test]
    fn the_leader_the_margin_and_the_last_come_from_the_numbers() {
        let a = axis(
            "startup (p50 ready)",
            "ms",
            Better::Lower,
            vec![
                ("process", m(0.4)),
                ("container", m(2.0)),
                ("microvm", m(120.0)),
                ("gvisor", m(150.0)),
            ],
        );
        assert_eq!(
            axis_reading(&a),
            ["startup (p50 ready): process led (0.40 ms), 5x better than container (2 ms); gvisor was last (150 ms)."]
        );
        // Other numbers, other sentence: nothing is written in advance.
        let b = axis(
            "interference ratio, cpu neighbour (p99 with/alone)",
            "x",
            Better::Lower,
            vec![
                ("process", m(3.1)),
                ("container", m(1.6)),
                ("microvm", m(1.1)),
            ],
        );
        assert_eq!(
            axis_reading(&b),
            ["interference ratio, cpu neighbour (p99 with/alone): microvm led (1.10x), 1.45x better than container (1.60x); process was last (3.10x)."]
        );
    }

    #[test]
    fn overlapping_intervals_or_close_values_are_level() {
        let ci = |v: f64, lo: f64, hi: f64| Figure::Measured {
            value: v,
            ci95: Some([lo, hi]),
        };
        let a = axis(
            "requests/s",
            "",
            Better::Higher,
            vec![
                ("process", ci(1000.0, 950.0, 1050.0)),
                ("container", ci(980.0, 940.0, 1010.0)),
                ("microvm", ci(600.0, 580.0, 620.0)),
            ],
        );
        assert_eq!(
            axis_reading(&a),
            ["requests/s: process and container were level (1000 to 980); microvm was last (600)."]
        );
        let b = axis(
            "PSS",
            "MiB",
            Better::Lower,
            vec![("runc", m(4.1)), ("container", m(4.0))],
        );
        assert_eq!(
            axis_reading(&b),
            ["PSS: container and runc were level (4 MiB to 4.10 MiB)."]
        );
    }

    #[test]
    fn unmeasured_modes_are_named_with_their_reason() {
        let a = axis(
            "distinct host kernel functions",
            "",
            Better::Lower,
            vec![
                ("container", m(5200.0)),
                (
                    "microvm",
                    Figure::NotMeasured {
                        reason: "host kernel has no ftrace".into(),
                    },
                ),
            ],
        );
        assert_eq!(
            reading(&[a]),
            [
                "distinct host kernel functions: only container was measured (5200).",
                "distinct host kernel functions: not measured for microvm (host kernel has no ftrace)."
            ]
        );
        let zero = axis(
            "errors",
            "",
            Better::Lower,
            vec![("a", m(0.0)), ("b", m(3.0))],
        );
        assert_eq!(
            axis_reading(&zero),
            ["errors: a led (0), far better than b (3)."]
        );
    }
}
