//! A user's own workload: an OCI image or runtime bundle (unpacked by
//! `isolab_image`) with the rule that says when it is ready. A program
//! from an image knows nothing of our ready pipe, so its readiness is
//! observed from outside: an HTTP answer, a TCP accept, its exit, or a
//! line in its output.
//!
//! An [`ImageWorkload`] rides in [`crate::modes::InstanceSpec::image`];
//! a mode that can run it takes its [`RunSpec`] (rootfs, argv, env, user,
//! working directory) instead of the built-in workload binary.

use std::fmt;
use std::str::FromStr;

use isolab_image::{Protocol, RunSpec};

/// When an image's program counts as ready (`--ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyRule {
    /// `http:PORT/PATH`: the first HTTP response (any status) to `GET PATH`.
    Http { port: u16, path: String },
    /// `tcp:PORT`: the first accepted TCP connection.
    Tcp { port: u16 },
    /// `exit`: the program ran to completion (time to completion).
    Exit,
    /// `log:TEXT`: TEXT appeared in its stdout or stderr.
    Log(String),
}

/// A `--ready` value that does not parse, with what it should look like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Bad --ready {value:?}: {why} (use http:PORT/PATH, tcp:PORT, exit or log:TEXT)")]
pub struct BadReadyRule {
    pub value: String,
    pub why: &'static str,
}

fn port(value: &str, s: &str) -> Result<u16, BadReadyRule> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(BadReadyRule {
            value: value.to_owned(),
            why: "the port must be a number from 1 to 65535",
        }),
    }
}

impl FromStr for ReadyRule {
    type Err = BadReadyRule;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |why| BadReadyRule {
            value: value.to_owned(),
            why,
        };
        let (kind, rest) = value.split_once(':').unwrap_or((value, ""));
        match kind {
            "exit" if rest.is_empty() && !value.contains(':') => Ok(ReadyRule::Exit),
            "http" => {
                let (p, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, "/"),
                };
                Ok(ReadyRule::Http {
                    port: port(value, p)?,
                    path: path.to_owned(),
                })
            }
            "tcp" => Ok(ReadyRule::Tcp {
                port: port(value, rest)?,
            }),
            "log" if !rest.is_empty() => Ok(ReadyRule::Log(rest.to_owned())),
            "log" => Err(bad("log needs the text to wait for")),
            _ => Err(bad("unknown kind")),
        }
    }
}

impl fmt::Display for ReadyRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadyRule::Http { port, path } => write!(f, "http:{port}{path}"),
            ReadyRule::Tcp { port } => write!(f, "tcp:{port}"),
            ReadyRule::Exit => f.write_str("exit"),
            ReadyRule::Log(t) => write!(f, "log:{t}"),
        }
    }
}

impl ReadyRule {
    /// The default for an image: HTTP on its lowest exposed TCP port (a
    /// reviewer's service is most often a web service; `--ready tcp:PORT`
    /// says otherwise), else its exit.
    pub fn default_for(spec: &RunSpec) -> ReadyRule {
        spec.exposed_ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
            .min()
            .map_or(ReadyRule::Exit, |port| ReadyRule::Http {
                port,
                path: "/".into(),
            })
    }

    /// The TCP port the rule probes, if any.
    pub fn port(&self) -> Option<u16> {
        match self {
            ReadyRule::Http { port, .. } | ReadyRule::Tcp { port } => Some(*port),
            _ => None,
        }
    }
}

/// An image's program as every mode runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageWorkload {
    /// What the user named (`--image REF` or `--bundle DIR`), for reports.
    pub label: String,
    /// The unpacked image's cache key (`sha256-<hex>`), or `None` for a
    /// bundle (its rootfs is the user's own directory).
    pub key: Option<String>,
    /// Rootfs, argv, env, user, working directory, exposed ports.
    pub run: RunSpec,
    pub ready: ReadyRule,
}

impl ImageWorkload {
    /// A small image for unit tests: `httpd -f` from `/img`, ready by
    /// `rule`.
    #[cfg(test)]
    pub(crate) fn for_tests(rule: &str) -> Self {
        ImageWorkload {
            label: "/images/httpd-oci.tar".into(),
            key: Some("sha256-00".into()),
            run: RunSpec {
                rootfs: "/img".into(),
                args: vec!["httpd".into(), "-f".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                exposed_ports: vec![],
            },
            ready: rule.parse().expect("a valid rule"),
        }
    }

    /// A name for columns and file names: the last path component of the
    /// label.
    pub fn short_name(&self) -> &str {
        let l = self.label.trim_end_matches('/');
        l.rsplit('/').next().unwrap_or(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isolab_image::ExposedPort;

    #[test]
    fn rules_parse_and_print_back() {
        for s in [
            "http:80/",
            "http:8080/health",
            "tcp:6379",
            "exit",
            "log:ready to serve",
        ] {
            assert_eq!(s.parse::<ReadyRule>().unwrap().to_string(), s);
        }
        assert_eq!(
            "http:80".parse::<ReadyRule>().unwrap(),
            ReadyRule::Http {
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(
            "log:a:b".parse::<ReadyRule>().unwrap(),
            ReadyRule::Log("a:b".into())
        );
    }

    #[test]
    fn bad_rules_say_what_to_write() {
        for s in [
            "",
            "http:",
            "http:0/",
            "tcp:x",
            "tcp:70000",
            "log:",
            "exit:1",
            "udp:53",
        ] {
            let e = s.parse::<ReadyRule>().unwrap_err().to_string();
            assert!(e.contains("use http:PORT/PATH"), "{s}: {e}");
        }
    }

    fn spec(ports: &[&str]) -> RunSpec {
        RunSpec {
            rootfs: "/".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            exposed_ports: ports.iter().filter_map(|p| ExposedPort::parse(p)).collect(),
        }
    }

    #[test]
    fn default_is_http_on_the_lowest_tcp_port_else_exit() {
        assert_eq!(
            ReadyRule::default_for(&spec(&["8080/tcp", "53/udp", "80"])),
            ReadyRule::Http {
                port: 80,
                path: "/".into()
            }
        );
        assert_eq!(ReadyRule::default_for(&spec(&["53/udp"])), ReadyRule::Exit);
        assert_eq!(ReadyRule::default_for(&spec(&[])), ReadyRule::Exit);
    }
}
