//! The image's runtime configuration as a typed struct, and what every
//! mode needs to start its command: [`RunSpec`] (argv, environment,
//! working directory, numeric user and groups, exposed ports).
//!
//! Semantics follow `docker run` / `podman run`: `-- ARGS` replace `Cmd`
//! and keep `Entrypoint`; `PATH` defaults to the usual list when the image
//! sets none; `HOME` comes from the user's passwd entry (or `/`); `User`
//! may be `name`, `uid`, `name:group`, `uid:gid` and mixes, resolved in
//! the image's own `/etc/passwd` and `/etc/group`.

use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::error::ImageError;
use crate::rootpath::read_in_root;

/// `PATH` when the image sets none (what docker and podman use).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A port the image declares (`ExposedPorts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExposedPort {
    pub port: u16,
    pub protocol: Protocol,
}

/// Transport of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl ExposedPort {
    /// Parses `80`, `80/tcp`, `53/udp`; anything else is `None`.
    pub fn parse(s: &str) -> Option<ExposedPort> {
        let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return None,
        };
        Some(ExposedPort {
            port: port.parse().ok()?,
            protocol,
        })
    }
}

/// The image config's runtime part (`config` in the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries, in order.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// Sorted by port.
    pub exposed_ports: Vec<ExposedPort>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// The typed view of an OCI image configuration.
    pub fn from_oci(c: &ImageConfiguration) -> ImageConfig {
        let Some(cfg) = c.config() else {
            return ImageConfig::default();
        };
        let mut exposed_ports: Vec<ExposedPort> = cfg
            .exposed_ports()
            .iter()
            .flatten()
            .filter_map(|p| ExposedPort::parse(p))
            .collect();
        exposed_ports.sort();
        exposed_ports.dedup();
        ImageConfig {
            entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
            cmd: cfg.cmd().clone().unwrap_or_default(),
            env: cfg.env().clone().unwrap_or_default(),
            working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
            stop_signal: cfg.stop_signal().clone(),
        }
    }

    /// Entrypoint followed by `args` when given (they replace Cmd), else
    /// by Cmd.
    pub fn command(&self, args: Option<&[String]>) -> Result<Vec<String>, ImageError> {
        let mut argv = self.entrypoint.clone();
        match args {
            Some(a) if !a.is_empty() => argv.extend(a.iter().cloned()),
            _ => argv.extend(self.cmd.iter().cloned()),
        }
        if argv.first().is_none_or(|p| p.is_empty()) {
            return Err(ImageError::NoCommand);
        }
        Ok(argv)
    }

    /// The first TCP port the image exposes: the default readiness probe.
    pub fn first_tcp_port(&self) -> Option<u16> {
        self.exposed_ports
            .iter()
            .find(|p| p.protocol == Protocol::Tcp)
            .map(|p| p.port)
    }
}

/// The numeric identity the command runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` when `User` names no group).
    pub additional_gids: Vec<u32>,
    /// From the passwd entry; `/` when there is none.
    pub home: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: "/root".into(),
        }
    }
}

struct Passwd {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

fn passwd_entries(text: &str) -> Vec<Passwd> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(Passwd {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

/// (name, gid, members)
fn group_entries(text: &str) -> Vec<(String, u32, Vec<String>)> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// Resolves `user` (the image's `User`) in the image rooted at `rootfs`.
/// Files are read with symlinks resolved inside the root, never on the
/// host.
pub fn resolve_user(rootfs: &Path, user: Option<&str>) -> Result<Identity, ImageError> {
    let passwd = read_in_root(rootfs, "etc/passwd").unwrap_or_default();
    let group = read_in_root(rootfs, "etc/group").unwrap_or_default();
    let passwd = passwd_entries(&String::from_utf8_lossy(&passwd));
    let groups = group_entries(&String::from_utf8_lossy(&group));
    let Some(spec) = user.filter(|u| !u.is_empty()) else {
        let root = passwd.iter().find(|p| p.uid == 0);
        return Ok(Identity {
            home: root.map_or("/root".into(), |p| p.home.clone()),
            ..Identity::default()
        });
    };
    let bad = |reason: String| ImageError::BadUser {
        user: spec.to_string(),
        reason,
    };
    let (u, g) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, entry) = match u.parse::<u32>() {
        Ok(uid) => (uid, passwd.iter().find(|p| p.uid == uid)),
        Err(_) => {
            let p = passwd
                .iter()
                .find(|p| p.name == u)
                .ok_or_else(|| bad(format!("no user {u:?} in the image's /etc/passwd")))?;
            (p.uid, Some(p))
        }
    };
    let (gid, additional_gids) = match g {
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => groups
                    .iter()
                    .find(|(name, _, _)| name == g)
                    .map(|(_, gid, _)| *gid)
                    .ok_or_else(|| bad(format!("no group {g:?} in the image's /etc/group")))?,
            };
            (gid, Vec::new())
        }
        None => {
            let gid = entry.map_or(0, |p| p.gid);
            let name = entry.map(|p| p.name.as_str());
            let mut extra: Vec<u32> = groups
                .iter()
                .filter(|(_, g, members)| {
                    *g != gid && name.is_some_and(|n| members.iter().any(|m| m == n))
                })
                .map(|(_, g, _)| *g)
                .collect();
            extra.sort_unstable();
            extra.dedup();
            (gid, extra)
        }
    };
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: entry.map_or("/".into(), |p| p.home.clone()),
    })
}

/// Everything a mode needs to start the image's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root filesystem (read-only lower layer for the container
    /// overlay; the root-disk source for the microVM; the chroot of the
    /// process mode).
    pub rootfs: PathBuf,
    /// argv; `args[0]` is looked up in the image's `PATH` when it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE`, `PATH` and `HOME` always present.
    pub env: Vec<String>,
    /// Absolute working directory (created when missing, as docker does).
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub exposed_ports: Vec<ExposedPort>,
}

impl RunSpec {
    /// The spec for an image config over `rootfs`; `args` replace Cmd.
    pub fn from_image(
        rootfs: &Path,
        config: &ImageConfig,
        args: Option<&[String]>,
    ) -> Result<RunSpec, ImageError> {
        let argv = config.command(args)?;
        let id = resolve_user(rootfs, config.user.as_deref())?;
        let mut env = config.env.clone();
        let has = |env: &[String], k: &str| {
            env.iter()
                .any(|e| e.split_once('=').is_some_and(|(n, _)| n == k))
        };
        if !has(&env, "PATH") {
            env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        if !has(&env, "HOME") {
            env.push(format!("HOME={}", id.home));
        }
        let cwd = config
            .working_dir
            .clone()
            .filter(|w| w.starts_with('/'))
            .unwrap_or_else(|| "/".into());
        Ok(RunSpec {
            rootfs: rootfs.to_path_buf(),
            args: argv,
            env,
            cwd,
            uid: id.uid,
            gid: id.gid,
            additional_gids: id.additional_gids,
            exposed_ports: config.exposed_ports.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_root() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nwww:x:33:33:www:/var/www:/bin/false\nbad line\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("etc/group"),
            "root:x:0:\nwww:x:33:\nweb:x:80:www,other\nlog:x:81:www\n",
        )
        .unwrap();
        d
    }

    #[test]
    fn users_resolve_like_docker() {
        let d = image_root();
        let r = |u: Option<&str>| resolve_user(d.path(), u);
        assert_eq!(r(None).unwrap().uid, 0);
        assert_eq!(r(None).unwrap().home, "/root");
        let www = r(Some("www")).unwrap();
        assert_eq!((www.uid, www.gid), (33, 33));
        assert_eq!(www.additional_gids, [80, 81]);
        assert_eq!(www.home, "/var/www");
        let g = r(Some("www:web")).unwrap();
        assert_eq!((g.uid, g.gid), (33, 80));
        assert!(g.additional_gids.is_empty());
        let n = r(Some("1234:5")).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (1234, 5, "/"));
        assert_eq!(
            r(Some("33")).unwrap().gid,
            33,
            "a uid finds its passwd entry"
        );
        for bad in ["nobody", "www:nogroup"] {
            let e = r(Some(bad)).unwrap_err();
            assert!(
                matches!(e, ImageError::BadUser { .. }) && e.is_usage(),
                "{e}"
            );
        }
    }

    #[test]
    fn command_and_environment_follow_docker_run() {
        let d = image_root();
        let c = ImageConfig {
            entrypoint: vec!["/bin/httpd".into()],
            cmd: vec!["-f".into(), "-p".into(), "80".into()],
            env: vec!["LANG=C".into()],
            user: Some("www".into()),
            working_dir: Some("/srv".into()),
            exposed_ports: vec![ExposedPort::parse("80/tcp").unwrap()],
            ..ImageConfig::default()
        };
        let s = RunSpec::from_image(d.path(), &c, None).unwrap();
        assert_eq!(s.args, ["/bin/httpd", "-f", "-p", "80"]);
        assert_eq!(
            s.env,
            [
                format!("PATH={DEFAULT_PATH}"),
                "LANG=C".into(),
                "HOME=/var/www".into()
            ]
        );
        assert_eq!((s.uid, s.cwd.as_str()), (33, "/srv"));
        let o = RunSpec::from_image(d.path(), &c, Some(&["-h".to_string()])).unwrap();
        assert_eq!(o.args, ["/bin/httpd", "-h"], "arguments replace Cmd only");
        assert_eq!(c.first_tcp_port(), Some(80));
        let e = RunSpec::from_image(d.path(), &ImageConfig::default(), None).unwrap_err();
        assert!(matches!(e, ImageError::NoCommand));
    }

    #[test]
    fn exposed_ports_parse() {
        assert_eq!(
            ExposedPort::parse("53/udp"),
            Some(ExposedPort {
                port: 53,
                protocol: Protocol::Udp
            })
        );
        assert_eq!(ExposedPort::parse("8080").unwrap().protocol, Protocol::Tcp);
        assert_eq!(ExposedPort::parse("x/tcp"), None);
        assert_eq!(ExposedPort::parse("80/quic"), None);
    }
}
