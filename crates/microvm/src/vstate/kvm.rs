//! The `/dev/kvm` system handle: API version, capabilities, limits and the
//! CPUID KVM can offer.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

/// The only stable KVM API version.
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities the boot path relies on.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// Failures talking to `/dev/kvm`.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("Failed to open /dev/kvm")]
    Open(#[source] kvm_ioctls::Error),
    /// Unexpected API version.
    #[error("KVM API version {0} is not the supported version {KVM_API_VERSION}")]
    ApiVersion(i32),
    /// A needed capability is missing.
    #[error("KVM lacks the {0} capability")]
    MissingCap(&'static str),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
}

/// An open, checked KVM handle.
#[derive(Debug)]
pub struct KvmContext {
    kvm: Kvm,
    max_vcpus: usize,
}

impl KvmContext {
    /// Opens `/dev/kvm` and checks the API version (no capability check;
    /// enough to ask for limits).
    pub fn open() -> Result<Self, KvmError> {
        let kvm = Kvm::new().map_err(KvmError::Open)?;
        let version = kvm.get_api_version();
        if version != KVM_API_VERSION {
            return Err(KvmError::ApiVersion(version));
        }
        let max_vcpus = kvm.get_max_vcpus();
        Ok(Self { kvm, max_vcpus })
    }

    /// Checks every capability the Linux boot path needs.
    pub fn check_boot_caps(&self) -> Result<(), KvmError> {
        for (cap, name) in REQUIRED_CAPS {
            if !self.kvm.check_extension(cap) {
                return Err(KvmError::MissingCap(name));
            }
        }
        Ok(())
    }

    /// Most vCPUs one VM may have (`KVM_CAP_MAX_VCPUS`).
    pub fn max_vcpus(&self) -> usize {
        self.max_vcpus
    }

    /// What CPUID KVM can present to a guest.
    pub fn supported_cpuid(&self) -> Result<CpuId, KvmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)
    }

    /// The raw handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }
}
