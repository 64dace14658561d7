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
use serde::{Deserialize, Serialize};

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

/// What a report says about a user's image (the `image` object of
/// compare's JSON config): what was named, its cache key, the command as
/// it ran and as whom, and its ready rule. Its environment and the local
/// path of its unpacked rootfs stay out of reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSummary {
    pub label: String,
    /// `sha256-<hex>` of its manifest; `None` for a bundle.
    pub key: Option<String>,
    pub command: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// `--ready` as given or defaulted (`http:80/`, `tcp:6379`, `exit`,
    /// `log:TEXT`).
    pub ready: String,
}

impl From<&ImageWorkload> for ImageSummary {
    fn from(i: &ImageWorkload) -> Self {
        ImageSummary {
            label: i.label.clone(),
            key: i.key.clone(),
            command: i.run.args.clone(),
            uid: i.run.uid,
            gid: i.run.gid,
            cwd: i.run.cwd.clone(),
            ready: i.ready.to_string(),
        }
    }
}

impl ImageSummary {
    /// The image as a report read back from JSON knows it: no rootfs, no
    /// environment (it is for showing, not for running).
    pub fn into_workload(self) -> Result<ImageWorkload, BadReadyRule> {
        Ok(ImageWorkload {
            ready: self.ready.parse()?,
            label: self.label,
            key: self.key,
            run: RunSpec {
                rootfs: Default::default(),
                args: self.command,
                env: vec![],
                cwd: self.cwd,
                uid: self.uid,
                gid: self.gid,
                additional_gids: vec![],
                exposed_ports: vec![],
            },
        })
    }
}

/// Serde for `Option<Arc<ImageWorkload>>` fields as an [`ImageSummary`]
/// (`#[serde(with = "crate::image::summary")]`).
pub mod summary {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ImageSummary, ImageWorkload};

    pub fn serialize<S: Serializer>(
        v: &Option<Arc<ImageWorkload>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        v.as_deref().map(ImageSummary::from).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<ImageWorkload>>, D::Error> {
        Option::<ImageSummary>::deserialize(d)?
            .map(|s| {
                s.into_workload()
                    .map(Arc::new)
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
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
    fn a_report_names_the_image_its_command_and_rule_but_not_its_env() {
        let i = std::sync::Arc::new(ImageWorkload::for_tests("http:8080/health"));
        #[derive(Serialize, Deserialize)]
        struct Doc {
            #[serde(with = "summary")]
            image: Option<std::sync::Arc<ImageWorkload>>,
        }
        let text = serde_json::to_string(&Doc {
            image: Some(std::sync::Arc::clone(&i)),
        })
        .unwrap();
        assert_eq!(
            text,
            r#"{"image":{"label":"/images/httpd-oci.tar","key":"sha256-00","command":["httpd","-f"],"uid":0,"gid":0,"cwd":"/","ready":"http:8080/health"}}"#
        );
        let back: Doc = serde_json::from_str(&text).unwrap();
        let back = back.image.unwrap();
        assert_eq!((back.short_name(), &back.ready), (i.short_name(), &i.ready));
        assert!(back.run.env.is_empty());
        assert!(serde_json::from_str::<Doc>(r#"{"image":{"label":"x","key":null,"command":[],"uid":0,"gid":0,"cwd":"/","ready":"udp:1"}}"#).is_err());
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
