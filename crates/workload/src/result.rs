//! The result line: exactly one JSON object on one line on stdout, printed
//! when the workload ends (docs/contracts.md). Everything else goes to
//! stderr so the launcher can read stdout as the result channel.

use std::io::Write;

use serde_json::{Map, Value};

/// Builds a result object that starts with `workload` and `ok`.
pub fn object(workload: &str, ok: bool) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("workload".into(), Value::from(workload));
    m.insert("ok".into(), Value::from(ok));
    m
}

/// Renders the object as one line (no newline inside: serde_json's compact
/// form escapes control characters in strings).
pub fn render(obj: &Map<String, Value>) -> String {
    Value::Object(obj.clone()).to_string()
}

/// Prints the result line and flushes stdout.
pub fn emit(obj: &Map<String, Value>) {
    let mut out = std::io::stdout().lock();
    // A closed stdout leaves nobody to tell; the exit status still speaks.
    let _ = writeln!(out, "{}", render(obj));
    let _ = out.flush();
}

/// The result line in a workload's stdout: the last line that parses as a
/// JSON object (anything the workload or a console printed before it is
/// skipped). The one reader of the result channel; every launcher uses it.
pub fn parse(stdout: &str) -> Option<Map<String, Value>> {
    stdout
        .lines()
        .rev()
        .find_map(|l| match serde_json::from_str::<Value>(l.trim()) {
            Ok(Value::Object(m)) => Some(m),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_result_is_the_last_object_line() {
        let m = parse("{\"a\":1}\nnot json\n{\"b\":2}\n[1]\n").unwrap();
        assert_eq!(m["b"], 2);
        assert!(parse("nothing here").is_none());
        assert!(parse("").is_none());
    }

    #[test]
    fn one_line_with_name_and_ok() {
        let mut o = object("api", true);
        o.insert("note".into(), Value::from("a\nb"));
        let line = render(&o);
        assert!(!line.contains('\n'));
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["workload"], "api");
        assert_eq!(back["ok"], true);
        assert_eq!(back["note"], "a\nb");
    }
}
