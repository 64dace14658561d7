//! pivot_root with the same-directory trick (no put_old directory needed):
//! with the cwd at the new root, `pivot_root(".", ".")` stacks the old root
//! on top of the new one; it is then lazily unmounted, which leaves the new
//! root. The detach does not propagate to the host: every mount of this
//! namespace was made slave before the overlay was mounted
//! ([`crate::rootfs::mount_all`], step 1), so runc's second recursive
//! `MS_SLAVE` here (it allows a shared rootfs propagation, we do not) would
//! only walk the whole copied mount tree again.

use std::path::Path;

use nix::mount::MntFlags;

use crate::error::ChildStep;
use crate::rootfs::{Step, StepResult};
use crate::syscall::Syscall;

pub(crate) fn pivot_into_cwd(sys: &dyn Syscall) -> StepResult {
    let dot = Path::new(".");
    sys.pivot_root(dot, dot).step(ChildStep::PivotRoot)?;
    sys.umount2(dot, MntFlags::MNT_DETACH)
        .step(ChildStep::DetachOldRoot)?;
    sys.chdir(Path::new("/")).step(ChildStep::DetachOldRoot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::recording::RecordingSyscall;

    #[test]
    fn the_old_root_is_detached_after_the_pivot() {
        let sys = RecordingSyscall::default();
        pivot_into_cwd(&sys).unwrap();
        assert_eq!(sys.calls(), vec!["pivot_root . .", "umount2 .", "chdir /"]);
    }

    #[test]
    fn a_refused_pivot_names_the_step() {
        let sys = RecordingSyscall {
            fail_on: Some(("pivot_root", nix::Error::EINVAL)),
            ..Default::default()
        };
        assert_eq!(
            pivot_into_cwd(&sys),
            Err((ChildStep::PivotRoot, nix::Error::EINVAL))
        );
    }
}
