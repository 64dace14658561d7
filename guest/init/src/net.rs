//! eth0 (and lo) configuration with the classic SIOCSIF*/SIOCADDRT ioctls:
//! the guest has no `ip`, and these need nothing beyond CONFIG_INET.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::cmdline::NetConfig;
use crate::error::InitError;

/// The first virtio-net device.
const ETH0: &str = "eth0";
const LO: &str = "lo";

/// The kernel's `struct rtentry` (include/uapi/linux/route.h); the libc crate
/// does not export it for glibc.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr_in(addr: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain C structs; the
    // kernel reads sockaddr_in back out of it for AF_INET.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl(
    sock: &OwnedFd,
    request: libc::c_ulong,
    arg: *mut libc::c_void,
    step: &'static str,
    iface: &'static str,
) -> Result<(), InitError> {
    // SAFETY: `arg` points to a live ifreq/rtentry of the type the request
    // expects, owned by the caller for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, arg) };
    if rc < 0 {
        return Err(InitError::Net {
            step,
            iface,
            source: nix::Error::last(),
        });
    }
    Ok(())
}

fn set_up(sock: &OwnedFd, iface: &'static str) -> Result<(), InitError> {
    let mut req = ifreq(iface);
    ioctl(
        sock,
        libc::SIOCGIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "read flags",
        iface,
    )?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        sock,
        libc::SIOCSIFFLAGS,
        (&mut req as *mut libc::ifreq).cast(),
        "bring up",
        iface,
    )
}

/// Brings lo up, then gives eth0 its address and netmask, brings it up and
/// adds the default route when a gateway is given.
pub fn configure(cfg: &NetConfig) -> Result<(), InitError> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|source| InitError::Net {
        step: "open a configuration socket",
        iface: ETH0,
        source,
    })?;
    set_up(&sock, LO)?;

    let mut req = ifreq(ETH0);
    req.ifr_ifru.ifru_addr = sockaddr_in(cfg.addr);
    ioctl(
        &sock,
        libc::SIOCSIFADDR,
        (&mut req as *mut libc::ifreq).cast(),
        "set address",
        ETH0,
    )?;
    let mut req = ifreq(ETH0);
    req.ifr_ifru.ifru_netmask = sockaddr_in(cfg.netmask());
    ioctl(
        &sock,
        libc::SIOCSIFNETMASK,
        (&mut req as *mut libc::ifreq).cast(),
        "set netmask",
        ETH0,
    )?;
    set_up(&sock, ETH0)?;

    if let Some(gw) = cfg.gateway {
        let mut dev = *b"eth0\0";
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr_in(gw),
            rt_genmask: sockaddr_in(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        ioctl(
            &sock,
            libc::SIOCADDRT,
            (&mut rt as *mut RtEntry).cast(),
            "add the default route",
            ETH0,
        )?;
    }
    Ok(())
}
