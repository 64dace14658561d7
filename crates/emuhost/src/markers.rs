//! Reading the emulated host's serial console: boot noise until `/init`
//! says `ISOLAB-EMUHOST-BEGIN <nonce>`, then the command's output, the
//! `RUN` marker when the command starts and `EXIT <nonce> <status>` when it
//! ends. Pure, so it is unit-tested on hand-made lines.

use crate::image::{MARK_BEGIN, MARK_EXIT, MARK_RUN};

/// What one console line means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Firmware and kernel output before `/init` started.
    Noise(String),
    /// `/init` started.
    Begin,
    /// The command is about to start.
    Run,
    /// Output of `/init` or of the command, to show the caller.
    Output(String),
    /// The command ended with this status (shell convention).
    Exit(i32),
}

/// Turns raw console bytes into text: drops `\r` and ANSI escape
/// sequences (SeaBIOS clears the screen) and invalid UTF-8.
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // CSI: parameters and intermediates, then one final byte.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' | '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// The console state machine of one run.
#[derive(Debug)]
pub struct MarkerParser {
    nonce: String,
    begun: bool,
}

impl MarkerParser {
    pub fn new(nonce: &str) -> Self {
        Self {
            nonce: nonce.to_string(),
            begun: false,
        }
    }

    /// Classifies one cleaned line.
    pub fn feed(&mut self, line: &str) -> Event {
        let marker = |name: &str| -> Option<String> {
            // A marker may follow kernel output on the same console line.
            let at = line.find(&format!("{name} {}", self.nonce))?;
            Some(
                line[at + name.len() + 1 + self.nonce.len()..]
                    .trim()
                    .to_string(),
            )
        };
        if !self.begun {
            if marker(MARK_BEGIN).is_some() {
                self.begun = true;
                return Event::Begin;
            }
            return Event::Noise(line.to_string());
        }
        if marker(MARK_RUN).is_some_and(|rest| rest.is_empty()) {
            return Event::Run;
        }
        if let Some(rest) = marker(MARK_EXIT) {
            if let Ok(status) = rest.parse::<i32>() {
                return Event::Exit(status);
            }
        }
        Event::Output(line.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_carriage_returns_are_dropped() {
        assert_eq!(clean_line(b"\x1bc\x1b[?7l\x1b[2JSeaBIOS\r\n"), "SeaBIOS");
        assert_eq!(clean_line(b"plain text\r\n"), "plain text");
    }

    #[test]
    fn a_run_goes_noise_begin_output_run_exit() {
        let mut p = MarkerParser::new("abc");
        assert_eq!(
            p.feed("Booting from ROM.."),
            Event::Noise("Booting from ROM..".into())
        );
        // Output before BEGIN is noise even if it looks like a marker.
        assert_eq!(
            p.feed("ISOLAB-EMUHOST-EXIT abc 0"),
            Event::Noise("ISOLAB-EMUHOST-EXIT abc 0".into())
        );
        assert_eq!(p.feed("ISOLAB-EMUHOST-BEGIN abc"), Event::Begin);
        assert_eq!(
            p.feed("isolab-emuhost: insmod tun failed"),
            Event::Output("isolab-emuhost: insmod tun failed".into())
        );
        assert_eq!(p.feed("ISOLAB-EMUHOST-RUN abc"), Event::Run);
        assert_eq!(p.feed("hello"), Event::Output("hello".into()));
        assert_eq!(
            p.feed("[  7.3] x ISOLAB-EMUHOST-EXIT abc 130"),
            Event::Exit(130)
        );
    }

    #[test]
    fn a_forged_marker_without_the_nonce_is_output() {
        let mut p = MarkerParser::new("n1");
        p.feed("ISOLAB-EMUHOST-BEGIN n1");
        assert_eq!(
            p.feed("ISOLAB-EMUHOST-EXIT guess 0"),
            Event::Output("ISOLAB-EMUHOST-EXIT guess 0".into())
        );
        assert_eq!(
            p.feed("ISOLAB-EMUHOST-EXIT n1 zero"),
            Event::Output("ISOLAB-EMUHOST-EXIT n1 zero".into())
        );
    }
}
