//! The `isolab.*` parameters of the kernel command line (docs/contracts.md).
//!
//! Init reads `/proc/cmdline` itself because the kernel never passes dotted
//! parameters to init as arguments or environment.

use std::net::Ipv4Addr;

/// Hostname when `isolab.hostname=` is absent.
pub const DEFAULT_HOSTNAME: &str = "isolab-vm";
/// File system of the root disk when `isolab.rootfstype=` is absent.
pub const DEFAULT_ROOTFSTYPE: &str = "erofs";

/// Errors in the `isolab.*` parameters.
#[derive(Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// `isolab.workload=` is required (unless `isolab.root=` is given).
    MissingWorkload,
    /// `isolab.root=` is not a device path.
    BadRoot(String),
    /// `isolab.ip=` is not `<IPv4>/<prefix 0..=32>`.
    BadIp(String),
    /// `isolab.gw=` is not an IPv4 address.
    BadGateway(String),
    /// `isolab.gw=` without `isolab.ip=`.
    GatewayWithoutIp,
    /// `isolab.console=` is not 0 or 1.
    BadConsole(String),
}

impl std::fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MissingWorkload => {
                write!(f, "no isolab.workload=<name> (or isolab.root=<device>) on the kernel command line")
            }
            Self::BadRoot(v) => write!(f, "isolab.root={v:?} is not a /dev/ path"),
            Self::BadIp(v) => write!(
                f,
                "isolab.ip={v:?} is not <IPv4>/<prefix>, e.g. 172.16.0.2/30"
            ),
            Self::BadGateway(v) => write!(f, "isolab.gw={v:?} is not an IPv4 address"),
            Self::GatewayWithoutIp => write!(f, "isolab.gw= needs isolab.ip= as well"),
            Self::BadConsole(v) => write!(f, "isolab.console={v:?} must be 0 or 1"),
        }
    }
}

impl std::error::Error for CmdlineError {}

/// eth0's address and optional default gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
}

impl NetConfig {
    /// The netmask for the prefix length.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }
}

/// The image root disk (`isolab.root=`, `isolab.rootfstype=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDisk {
    pub device: String,
    pub fstype: String,
}

/// What init was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// First argument to `/workload` (ignored when `root` is set: the
    /// guest spec names the command).
    pub workload: String,
    /// Run the guest spec's command from this disk instead of `/workload`.
    pub root: Option<RootDisk>,
    /// Further arguments, in order.
    pub args: Vec<String>,
    pub hostname: String,
    pub net: Option<NetConfig>,
    /// Copy the workload's output and init's progress to the console.
    pub console: bool,
}

fn parse_ip(v: &str) -> Result<(Ipv4Addr, u8), CmdlineError> {
    let bad = || CmdlineError::BadIp(v.to_string());
    let (addr, prefix) = v.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// Parses the whole command line; parameters not starting with `isolab.` are
/// the kernel's and are ignored. Quoting is not supported (the monitor never
/// quotes), values are taken up to the next space.
pub fn parse(cmdline: &str) -> Result<Config, CmdlineError> {
    let mut workload = None;
    let mut args = Vec::new();
    let mut hostname = DEFAULT_HOSTNAME.to_string();
    let mut ip = None;
    let mut gw = None;
    let mut console = false;
    let mut root = None;
    let mut rootfstype = DEFAULT_ROOTFSTYPE.to_string();
    for word in cmdline.split_ascii_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "isolab.workload" => workload = Some(value.to_string()),
            "isolab.arg" => args.push(value.to_string()),
            "isolab.hostname" => hostname = value.to_string(),
            "isolab.root" => {
                if !value.starts_with("/dev/") || value.len() <= 5 {
                    return Err(CmdlineError::BadRoot(value.to_string()));
                }
                root = Some(value.to_string());
            }
            "isolab.rootfstype" if !value.is_empty() => rootfstype = value.to_string(),
            "isolab.ip" => ip = Some(parse_ip(value)?),
            "isolab.gw" => {
                gw = Some(
                    value
                        .parse::<Ipv4Addr>()
                        .map_err(|_| CmdlineError::BadGateway(value.to_string()))?,
                )
            }
            "isolab.console" => {
                console = match value {
                    "1" => true,
                    "0" => false,
                    v => return Err(CmdlineError::BadConsole(v.to_string())),
                }
            }
            _ => {}
        }
    }
    let workload = match (workload.filter(|w| !w.is_empty()), &root) {
        (Some(w), _) => w,
        (None, Some(_)) => String::new(),
        (None, None) => return Err(CmdlineError::MissingWorkload),
    };
    let root = root.map(|device| RootDisk {
        device,
        fstype: rootfstype,
    });
    let net = match (ip, gw) {
        (Some((addr, prefix)), gateway) => Some(NetConfig {
            addr,
            prefix,
            gateway,
        }),
        (None, Some(_)) => return Err(CmdlineError::GatewayWithoutIp),
        (None, None) => None,
    };
    Ok(Config {
        workload,
        root,
        args,
        hostname,
        net,
        console,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line_with_kernel_parameters_mixed_in() {
        let c = parse(
            "reboot=k panic=1 console=ttyS0 isolab.workload=worker isolab.arg=--count \
             isolab.arg=100 isolab.hostname=vm7 isolab.ip=172.16.0.2/30 isolab.gw=172.16.0.1 \
             isolab.console=1\n",
        )
        .unwrap();
        assert_eq!(c.workload, "worker");
        assert_eq!(c.args, ["--count", "100"]);
        assert_eq!(c.hostname, "vm7");
        assert!(c.console);
        let n = c.net.unwrap();
        assert_eq!(n.addr, Ipv4Addr::new(172, 16, 0, 2));
        assert_eq!(n.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(n.gateway, Some(Ipv4Addr::new(172, 16, 0, 1)));
    }

    #[test]
    fn defaults() {
        let c = parse("isolab.workload=noop").unwrap();
        assert_eq!(c.hostname, DEFAULT_HOSTNAME);
        assert!(c.args.is_empty() && c.net.is_none() && !c.console);
    }

    #[test]
    fn image_root_needs_no_workload() {
        let c = parse("isolab.root=/dev/vda").unwrap();
        assert_eq!(
            c.root,
            Some(RootDisk {
                device: "/dev/vda".into(),
                fstype: "erofs".into()
            })
        );
        let c = parse("isolab.workload=noop isolab.root=/dev/vdb isolab.rootfstype=ext4").unwrap();
        assert_eq!(c.root.unwrap().fstype, "ext4");
        assert_eq!(
            parse("isolab.root=vda"),
            Err(CmdlineError::BadRoot("vda".into()))
        );
        assert!(parse("isolab.root=/dev/").is_err());
    }

    #[test]
    fn netmask_edges() {
        let n = |prefix| NetConfig {
            addr: Ipv4Addr::LOCALHOST,
            prefix,
            gateway: None,
        };
        assert_eq!(n(0).netmask(), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(n(24).netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(n(32).netmask(), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(parse("quiet"), Err(CmdlineError::MissingWorkload));
        assert_eq!(
            parse("isolab.workload="),
            Err(CmdlineError::MissingWorkload)
        );
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/24", "10.0.0/24"] {
            let e = parse(&format!("isolab.workload=noop isolab.ip={bad}")).unwrap_err();
            assert_eq!(e, CmdlineError::BadIp(bad.into()));
            assert!(e.to_string().contains(bad));
        }
        assert_eq!(
            parse("isolab.workload=noop isolab.gw=1.2.3.4"),
            Err(CmdlineError::GatewayWithoutIp)
        );
        assert_eq!(
            parse("isolab.workload=noop isolab.ip=1.2.3.4/8 isolab.gw=nope"),
            Err(CmdlineError::BadGateway("nope".into()))
        );
        assert_eq!(
            parse("isolab.workload=noop isolab.console=yes"),
            Err(CmdlineError::BadConsole("yes".into()))
        );
    }
}
