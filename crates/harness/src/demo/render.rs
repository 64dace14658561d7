//! Presentation of demo reports: an aligned text table for the terminal and
//! a Markdown handout for the classroom (tables, findings, explanations,
//! knowledge-check questions with answers).

use std::fmt::Write;

use super::passes;
use super::session::DemoReport;
use super::session::ModeRun;

/// Widest cell in the text table; longer values are shortened with `…`.
const MAX_CELL: usize = 40;
/// Text width of wrapped paragraphs in the terminal.
const WRAP: usize = 78;
/// Heading of a pass demo's generated sentences.
pub const CONCLUSION: &str = "Conclusion (generated from the numbers above)";

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn wrap(text: &str, width: usize, indent: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            let _ = writeln!(out, "{indent}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{indent}{line}");
    }
    out
}

/// One line per column that did not run or carries a caveat.
fn column_notes(r: &DemoReport) -> Vec<String> {
    let mut v = Vec::new();
    for c in &r.columns {
        match &c.run {
            ModeRun::Unavailable { reason } => {
                v.push(format!("{}: not run here: {reason}", c.label()))
            }
            ModeRun::Ran(rec) => {
                if let Some(l) = &rec.label {
                    v.push(format!("{}: {l}", c.label()));
                }
            }
            ModeRun::Measured(run) => v.extend(passes::notes(c, run)),
        }
    }
    v
}

fn host_check_line(r: &DemoReport) -> String {
    let names: Vec<&str> = r.host_settings.iter().map(|s| s.name.as_str()).collect();
    format!(
        "Host unchanged: {} read before and after this demo, all equal.",
        names.join(", ")
    )
}

/// The demo as an aligned text table with its findings and explanation.
pub fn render_table(r: &DemoReport) -> String {
    let mut out = String::new();
    let d = r.demo;
    let _ = writeln!(out, "== {}: {} ==", d.name, d.title);
    let _ = writeln!(
        out,
        "   corrects the misconception \"{}\"\n",
        d.misconception
    );
    let header: Vec<String> = r.columns.iter().map(|c| c.label()).collect();
    let label_w = r
        .rows
        .iter()
        .map(|row| row.label.chars().count())
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            r.rows
                .iter()
                .map(|row| shorten(&row.cells[i], MAX_CELL).chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |label: &str, cells: &[String]| {
        let mut s = format!("  {label:<label_w$}");
        for (c, w) in cells.iter().zip(&widths) {
            let c = shorten(c, MAX_CELL);
            let pad = w.saturating_sub(c.chars().count());
            let _ = write!(s, " | {c}{}", " ".repeat(pad));
        }
        s.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line("", &header));
    let _ = writeln!(
        out,
        "  {}",
        "-".repeat(label_w + widths.iter().map(|w| w + 3).sum::<usize>())
    );
    for row in &r.rows {
        let _ = writeln!(out, "{}", line(&row.label, &row.cells));
    }
    out.push('\n');
    for n in column_notes(r) {
        out.push_str(&wrap(&n, WRAP, "  "));
    }
    if !r.method.is_empty() {
        let _ = writeln!(out, "\n  How it was measured:");
        for m in &r.method {
            out.push_str(&wrap(&format!("- {m}"), WRAP - 4, "    "));
        }
    }
    if !r.findings.is_empty() {
        let _ = writeln!(out, "\n  What the runs showed:");
        for f in &r.findings {
            let mark = if f.holds { "[yes]" } else { "[NOT OBSERVED]" };
            out.push_str(&wrap(&format!("{mark} {}", f.text), WRAP - 4, "    "));
        }
    }
    if !r.conclusion.is_empty() {
        let _ = writeln!(out, "\n  {CONCLUSION}:");
        for c in &r.conclusion {
            out.push_str(&wrap(&format!("- {c}"), WRAP - 4, "    "));
        }
    }
    out.push('\n');
    out.push_str(&wrap(d.explanation, WRAP, "  "));
    out.push('\n');
    out.push_str(&wrap(&host_check_line(r), WRAP, "  "));
    out
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// Markdown section of one demo, numbered `n`.
fn markdown_section(out: &mut String, n: usize, r: &DemoReport) {
    let d = r.demo;
    let _ = writeln!(out, "## {n}. {} (`bench demo {}`)\n", d.title, d.name);
    let _ = writeln!(
        out,
        "*Misconception it corrects:* \"{}\".\n",
        d.misconception
    );
    let _ = writeln!(out, "*What ran:* {}.\n", d.summary);
    let _ = write!(out, "| |");
    for c in &r.columns {
        let _ = write!(out, " {} |", c.label());
    }
    let _ = write!(out, "\n|---|");
    for _ in &r.columns {
        let _ = write!(out, "---|");
    }
    out.push('\n');
    for row in &r.rows {
        let _ = write!(out, "| {} |", md_cell(&row.label));
        for c in &row.cells {
            let _ = write!(out, " {} |", md_cell(c));
        }
        out.push('\n');
    }
    out.push('\n');
    for note in column_notes(r) {
        let _ = writeln!(out, "> {note}\n");
    }
    if !r.method.is_empty() {
        let _ = writeln!(out, "**How it was measured**\n");
        for m in &r.method {
            let _ = writeln!(out, "- {m}");
        }
        out.push('\n');
    }
    if !r.findings.is_empty() {
        let _ = writeln!(out, "**What the runs showed**\n");
        for f in &r.findings {
            let mark = if f.holds { "✔" } else { "✘ not observed:" };
            let _ = writeln!(out, "- {mark} {}", f.text);
        }
        out.push('\n');
    }
    if !r.conclusion.is_empty() {
        let _ = writeln!(out, "**{CONCLUSION}**\n");
        for c in &r.conclusion {
            let _ = writeln!(out, "- {c}");
        }
        out.push('\n');
    }
    let _ = writeln!(
        out,
        "**Why.** {}\n",
        d.explanation
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(out, "*{}*\n", host_check_line(r));
    let _ = writeln!(out, "### Knowledge check\n");
    for (i, q) in d.questions.iter().enumerate() {
        let _ = writeln!(out, "{}. {}", i + 1, q.question);
        let _ = writeln!(out, "   *Answer:* {}\n", q.answer);
    }
}

/// A civil UTC date (YYYY-MM-DD) from seconds since the epoch.
fn utc_date(secs: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The teacher's handout: every report's table, findings, explanation and
/// knowledge check, in one Markdown page.
pub fn render_markdown(reports: &[DemoReport]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Process, container, microVM: what really separates them\n"
    );
    let host = reports.first().map(|r| &r.host);
    let release = host
        .and_then(|h| h.kernel_release.clone())
        .unwrap_or_default();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "A classroom handout produced by `bench demo` from real runs on a Linux host \
         (kernel {release}) on {}. Each demo runs the same small program three ways — as a \
         plain process, in a container (namespaces and cgroups on the host kernel) and in a \
         microVM (a guest kernel of its own under KVM) — and shows side by side what it \
         observed. A \"—\" means the column could not run here; the note under the table \
         says why.\n",
        utc_date(secs)
    );
    let _ = writeln!(out, "Contents:\n");
    for (i, r) in reports.iter().enumerate() {
        let _ = writeln!(out, "{}. {} — {}", i + 1, r.demo.title, r.demo.summary);
    }
    out.push('\n');
    for (i, r) in reports.iter().enumerate() {
        markdown_section(&mut out, i + 1, r);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_civil() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_798_502_400), "2026-12-29");
    }

    #[test]
    fn long_cells_are_shortened_and_text_wrapped() {
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
        let w = wrap("one two three four", 9, "> ");
        assert_eq!(w, "> one two\n> three\n> four\n");
    }
}
