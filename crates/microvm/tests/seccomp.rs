//! Confinement without KVM: the VMM thread's filter stops a file open and
//! the monitor reports it; a confined virtio-net worker, activated, kicked
//! and reset from a thread under the vCPU filter, still moves frames both
//! ways. Each case runs in a child process (this test binary again),
//! because a seccomp filter cannot be removed. (The vCPU filter, with a
//! real VM, is in vm_lifecycle.rs.)

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use isolab_microvm::devices::virtio::{Interrupt, NetDevice, VirtioDevice};
use isolab_microvm::seccomp::{self, ThreadKind, EXIT_FORBIDDEN_SYSCALL};
use isolab_microvm::vstate::memory::{create_guest_memory, HugePages};
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const ROLE: &str = "ISOLAB_CONFINE_CHILD";

fn in_child(test: &str) -> std::process::Output {
    std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, "1")
        .output()
        .expect("spawn the test binary")
}

fn is_child() -> bool {
    std::env::var_os(ROLE).is_some()
}

#[test]
fn a_file_open_on_the_confined_vmm_thread_ends_the_monitor_with_a_report() {
    const TEST: &str = "a_file_open_on_the_confined_vmm_thread_ends_the_monitor_with_a_report";
    if is_child() {
        seccomp::confine_current_thread(ThreadKind::Vmm).expect("confine");
        let _ = std::fs::File::open("/etc/hostname");
        // Not reached: the filter traps the openat above.
        std::process::exit(0);
    }
    let out = in_child(TEST);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN_SYSCALL), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "seccomp stopped the vmm thread at a forbidden syscall {} (openat)",
            libc::SYS_openat
        )),
        "{stderr}"
    );
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(Descriptor::new(addr, len, flags as u16, 0))
}

#[test]
fn a_confined_net_worker_still_moves_frames_both_ways() {
    const TEST: &str = "a_confined_net_worker_still_moves_frames_both_ways";
    if !is_child() {
        let out = in_child(TEST);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("frames moved confined"));
        return;
    }
    seccomp::enable();
    let m = create_guest_memory(1 << 20, HugePages::Host).unwrap();
    let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
    rxq.build_desc_chain(&[desc(0x10000, 2048, VRING_DESC_F_WRITE)])
        .unwrap();
    m.write_slice(&[0u8; 12], GuestAddress(0x20000)).unwrap();
    m.write_slice(b"from-guest", GuestAddress(0x2000c)).unwrap();
    txq.build_desc_chain(&[desc(0x20000, 22, 0)]).unwrap();
    let (tap_end, wire) = UnixDatagram::pair().unwrap();
    wire.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let irq = EventFd::new(0).unwrap();
    let irq_seen = irq.try_clone().unwrap();
    // The far end of the wire (and the interrupt controller) runs on its
    // own, unconfined thread.
    let (go, went) = std::sync::mpsc::channel::<()>();
    let (rx_done, rx_seen) = std::sync::mpsc::channel::<u64>();
    let far_end = std::thread::spawn(move || {
        went.recv().unwrap();
        wire.send(b"to-guest").unwrap();
        rx_done.send(irq_seen.read().unwrap()).unwrap();
        let mut buf = [0u8; 64];
        let n = wire.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    let mut dev = NetDevice::new(OwnedFd::from(tap_end), [2, 0, 0, 0, 0, 1]).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    let queues = vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()];
    // From here this thread plays a confined vCPU: the transport activates,
    // notifies and resets the device from vCPU threads.
    seccomp::confine_current_thread(ThreadKind::Vcpu).expect("confine as a vCPU");
    dev.activate(m.clone(), dev.features(), queues, interrupt)
        .expect("the worker confines itself and serves");
    go.send(()).unwrap();
    assert!(rx_seen.recv().unwrap() >= 1, "RX interrupt");
    let mut got = [0u8; 20];
    m.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
    assert_eq!(&got[12..], b"to-guest");
    dev.queue_notify(1);
    assert_eq!(far_end.join().unwrap(), b"from-guest");
    dev.reset();
    drop(dev);
    println!("frames moved confined");
    std::process::exit(0);
}

#[test]
fn a_block_device_activates_and_resets_from_a_confined_vcpu_thread() {
    const TEST: &str = "a_block_device_activates_and_resets_from_a_confined_vcpu_thread";
    if !is_child() {
        let out = in_child(TEST);
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("block served confined"));
        return;
    }
    use isolab_microvm::devices::virtio::block::{BlockDevice, Disk};
    seccomp::enable();
    let m = create_guest_memory(1 << 20, HugePages::Host).unwrap();
    let q = MockSplitQueue::create(&m, GuestAddress(0), 16);
    let image = tempfile_with_sectors(8);
    let disk = Disk::new(image, true, "confined").unwrap();
    // The worker thread starts here, before confinement.
    let mut dev = BlockDevice::new(disk).unwrap();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    let queues = vec![q.create_queue().unwrap()];
    seccomp::confine_current_thread(ThreadKind::Vcpu).expect("confine as a vCPU");
    // Activation, a notify and a reset create no thread: the confined
    // vCPU thread survives them, and the worker confines itself.
    dev.activate(m.clone(), dev.features(), queues, interrupt)
        .expect("the worker confines itself and serves");
    dev.queue_notify(0);
    dev.reset();
    drop(dev);
    println!("block served confined");
    std::process::exit(0);
}

/// A read-only disk image of `n` sectors, unlinked at once.
fn tempfile_with_sectors(n: usize) -> std::fs::File {
    let dir = std::env::temp_dir().join(format!("isolab-confined-blk-{}", std::process::id()));
    std::fs::write(&dir, vec![0x5au8; n * 512]).unwrap();
    let f = std::fs::File::open(&dir).unwrap();
    let _ = std::fs::remove_file(&dir);
    f
}
