//! The container's security profile: what the default container gets (the
//! defaults people run, Docker's) and what `privileged` gives on purpose.
//!
//! | | default | privileged |
//! |---|---|---|
//! | capabilities | Docker's 14 (bounding, permitted, effective); inheritable empty (CVE-2022-24769); ambient cleared | all of host root's |
//! | seccomp | Docker's default profile ([`crate::seccomp`]) | none |
//! | devices | cgroup: deny all but the standard nodes | unrestricted |
//! | no_new_privs | off unless asked (as in Docker) | off unless asked |
//!
//! Masked and read-only `/proc` and `/sys` paths apply to both, as with
//! `docker run --privileged` they would not; here `/proc/sys` stays
//! read-only so the host's settings are never writable from a container.
//!
//! The profile is resolved and its BPF compiled in the launcher, before the
//! clone; the child applies it with plain syscalls ([`crate::syscall`]).

use std::sync::{Arc, OnceLock};

use isolab_cgroups::DevicePolicy;
use seccompiler::BpfProgram;
use serde::Serialize;

use crate::caps::CapSet;
use crate::seccomp::{SeccompError, SeccompProfile};

/// The resolved profile of one container.
#[derive(Debug, Clone)]
pub struct SecurityProfile {
    /// `default` or `privileged`.
    pub name: &'static str,
    /// Capabilities kept; `None` keeps whatever the launcher has.
    pub caps: Option<CapSet>,
    /// The seccomp profile; `None`: no filter.
    pub seccomp: Option<SeccompProfile>,
    pub no_new_privileges: bool,
    pub devices: DevicePolicy,
}

/// What a report prints about the profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileSummary {
    pub name: &'static str,
    /// One line: capabilities, seccomp, devices, no_new_privs.
    pub description: String,
    pub capabilities: Option<u32>,
    /// Syscalls the filter allows (some under argument conditions).
    pub seccomp_allowed_syscalls: Option<usize>,
    pub devices_restricted: bool,
    pub no_new_privileges: bool,
}

impl SecurityProfile {
    /// The profile for the config's `privileged` and `no_new_privileges`.
    pub fn new(privileged: bool, no_new_privileges: bool) -> Self {
        if privileged {
            Self {
                name: "privileged",
                caps: None,
                seccomp: None,
                no_new_privileges,
                devices: DevicePolicy::Unrestricted,
            }
        } else {
            Self {
                name: "default",
                caps: Some(CapSet::DOCKER_DEFAULT),
                seccomp: Some(SeccompProfile::docker_default(CapSet::DOCKER_DEFAULT)),
                no_new_privileges,
                devices: DevicePolicy::standard(),
            }
        }
    }

    pub fn summary(&self) -> ProfileSummary {
        let caps = match self.caps {
            Some(c) => format!("{} capabilities (Docker's default set)", c.count()),
            None => "all capabilities".to_string(),
        };
        let seccomp = match &self.seccomp {
            Some(s) => format!(
                "seccomp: Docker's default profile ({} syscalls allowed, EPERM otherwise)",
                s.allowed_syscalls()
            ),
            None => "no seccomp filter".to_string(),
        };
        let devices = match self.devices {
            DevicePolicy::Unrestricted => "all devices",
            DevicePolicy::AllowOnly(_) => "devices cgroup: standard nodes only",
        };
        let nnp = if self.no_new_privileges {
            "no_new_privs on"
        } else {
            "no_new_privs off"
        };
        ProfileSummary {
            name: self.name,
            description: format!("{}: {caps}; {seccomp}; {devices}; {nnp}", self.name),
            capabilities: self.caps.map(CapSet::count),
            seccomp_allowed_syscalls: self.seccomp.as_ref().map(SeccompProfile::allowed_syscalls),
            devices_restricted: self.devices != DevicePolicy::Unrestricted,
            no_new_privileges: self.no_new_privileges,
        }
    }

    /// The compiled filters (empty without seccomp). The default profile
    /// compiles once per process: it is the same for every launch.
    pub fn filters(&self) -> Result<Arc<Vec<BpfProgram>>, SeccompError> {
        static DEFAULT: OnceLock<Arc<Vec<BpfProgram>>> = OnceLock::new();
        let Some(profile) = &self.seccomp else {
            return Ok(Arc::new(Vec::new()));
        };
        if self.caps == Some(CapSet::DOCKER_DEFAULT) {
            if let Some(p) = DEFAULT.get() {
                return Ok(Arc::clone(p));
            }
            let compiled = Arc::new(profile.compile()?);
            return Ok(Arc::clone(DEFAULT.get_or_init(|| compiled)));
        }
        Ok(Arc::new(profile.compile()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_and_privileged_differ_in_every_layer() {
        let d = SecurityProfile::new(false, false).summary();
        assert_eq!(d.capabilities, Some(14));
        assert!(d.seccomp_allowed_syscalls.is_some());
        assert!(d.devices_restricted && !d.no_new_privileges);
        assert!(
            d.description.starts_with("default: 14 capabilities"),
            "{}",
            d.description
        );
        let p = SecurityProfile::new(true, true).summary();
        assert_eq!(p.capabilities, None);
        assert_eq!(p.seccomp_allowed_syscalls, None);
        assert!(!p.devices_restricted && p.no_new_privileges);
        assert!(SecurityProfile::new(true, false)
            .filters()
            .unwrap()
            .is_empty());
        let f = SecurityProfile::new(false, false).filters().unwrap();
        assert_eq!(f.len(), 1, "one program");
        assert!(Arc::ptr_eq(
            &f,
            &SecurityProfile::new(false, true).filters().unwrap()
        ));
    }
}
