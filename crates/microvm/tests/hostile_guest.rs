//! Property tests: a hostile guest drives every device the monitor
//! emulates with arbitrary input, and the monitor neither panics, nor
//! grows, nor touches memory outside guest RAM.
//!
//! - virtio-net TX and RX over arbitrary descriptor tables and rings
//!   (any address, length, flags, chaining, indices);
//! - the virtio-mmio transport with the real virtio-net device behind it,
//!   under arbitrary register reads and writes, then arbitrary rings;
//! - virtio-blk over arbitrary descriptor tables and rings, on read-only
//!   and writable disks;
//! - the marker device, COM1 and the i8042 under arbitrary port I/O.
//!
//! How the properties are checked: guest RAM comes from the monitor's own
//! allocator, which keeps `PROT_NONE` guard pages around it, so any access
//! past guest RAM faults and fails the test; every byte of guest RAM the
//! device may not write is compared before and after; a counting global
//! allocator (per thread) measures the peak heap growth of each call.
//!
//! Case counts keep the whole file within a few seconds in debug builds;
//! `PROPTEST_CASES` raises them for a longer hunt.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use isolab_microvm::devices::bus::{BusDevice, DeviceEvent};
use isolab_microvm::devices::i8042::I8042;
use isolab_microvm::devices::marker::{MarkerDevice, MarkerLog, MAX_OUTPUT, MAX_UNKNOWN_EVENTS};
use isolab_microvm::devices::serial::{CappedWriter, SerialDevice};
use isolab_microvm::devices::virtio::mmio::{reg, status, MAGIC, VIRTIO_F_VERSION_1};
use isolab_microvm::devices::virtio::net::{
    deliver_rx, process_tx, MAX_FRAME, MAX_TX_CHAIN, NET_HDR_LEN,
};
use isolab_microvm::devices::virtio::{MmioTransport, NetDevice};
use isolab_microvm::vstate::memory::{create_guest_memory, GuestMemoryMmap, HugePages};
use proptest::prelude::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

// --- Per-thread heap accounting -------------------------------------------

struct Counting;

thread_local! {
    // Const-initialised and without destructors: usable from the allocator.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let v = live.get() + delta;
        live.set(v);
        let _ = PEAK.try_with(|p| p.set(p.get().max(v)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// bookkeeping only touches plain thread-local counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on unchanged.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as above.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns its result with the peak heap growth it caused on
/// this thread.
fn peak_growth<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    (r, (PEAK.with(Cell::get) - base).max(0) as usize)
}

// --- Arbitrary rings -------------------------------------------------------

const RAM: u64 = 256 << 10;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x1000;
const USED_RING: u64 = 0x2000;
/// Heap a device call may use besides its fixed buffers (virtio-queue's
/// iterators, small vectors): far below anything a guest length could ask.
const SLACK: usize = 64 << 10;

#[derive(Debug, Clone)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// Addresses that matter: inside RAM, at its edges, just past it, wild.
fn guest_addr() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0x3000u64..RAM,
        1 => Just(RAM - 1),
        1 => RAM..RAM + 0x2000,
        1 => any::<u64>(),
        1 => Just(u64::MAX - 8),
    ]
}

fn desc_len() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0u32..4096,
        1 => Just(u32::MAX),
        1 => Just(MAX_TX_CHAIN as u32),
        1 => Just(NET_HDR_LEN as u32),
        1 => any::<u32>(),
    ]
}

fn desc() -> impl Strategy<Value = Desc> {
    (guest_addr(), desc_len(), any::<u16>(), any::<u16>()).prop_map(|(addr, len, flags, next)| {
        Desc {
            addr,
            len,
            flags: flags & 0x7, // NEXT, WRITE, INDIRECT
            next,
        }
    })
}

#[derive(Debug, Clone)]
struct Ring {
    /// log2 of the queue size (1..=256).
    size_log2: u32,
    descs: Vec<Desc>,
    avail_idx: u16,
    avail: Vec<u16>,
    used_idx: u16,
}

fn ring() -> impl Strategy<Value = Ring> {
    (0u32..=8).prop_flat_map(|size_log2| {
        let n = 1usize << size_log2;
        (
            Just(size_log2),
            prop::collection::vec(desc(), n),
            prop_oneof![3 => 0u16..=(n as u16 * 2), 1 => any::<u16>()],
            prop::collection::vec(any::<u16>(), n),
            any::<u16>(),
        )
            .prop_map(|(size_log2, descs, avail_idx, avail, used_idx)| Ring {
                size_log2,
                descs,
                avail_idx,
                avail,
                used_idx,
            })
    })
}

/// Guest RAM with `r` written at the fixed ring addresses and `fill` as
/// the data pattern everywhere else.
fn guest_with(r: &Ring, fill: u8) -> (GuestMemoryMmap, Queue) {
    let mem = create_guest_memory(RAM, HugePages::Host).unwrap();
    mem.write_slice(&vec![fill; RAM as usize], GuestAddress(0))
        .unwrap();
    for (i, d) in r.descs.iter().enumerate() {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&d.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&d.len.to_le_bytes());
        raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&d.next.to_le_bytes());
        mem.write_slice(&raw, GuestAddress(DESC_TABLE + 16 * i as u64))
            .unwrap();
    }
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).unwrap();
    mem.write_obj(r.avail_idx, GuestAddress(AVAIL_RING + 2))
        .unwrap();
    for (i, a) in r.avail.iter().enumerate() {
        mem.write_obj(*a, GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(0u16, GuestAddress(USED_RING)).unwrap();
    mem.write_obj(r.used_idx, GuestAddress(USED_RING + 2))
        .unwrap();
    let size = 1u16 << r.size_log2;
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_ready(true);
    assert!(q.is_valid(&mem), "the fixed layout is a valid queue");
    (mem, q)
}

fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut v = vec![0u8; RAM as usize];
    mem.read_slice(&mut v, GuestAddress(0)).unwrap();
    v
}

/// The byte ranges of the used ring for a queue of `size`.
fn used_ring_range(size: u16) -> std::ops::Range<usize> {
    USED_RING as usize..USED_RING as usize + 4 + 8 * size as usize + 2
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Failures are reported with their minimal input; no files written.
        failure_persistence: None,
        ..ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(256),
        )
    }
}

proptest! {
    #![proptest_config(config())]

    /// TX: whatever the ring says, at most one legal frame is buffered per
    /// chain, at most one frame is written to the TAP per chain, and the
    /// only guest memory the device writes is the used ring.
    #[test]
    fn tx_over_arbitrary_rings_is_bounded_and_writes_only_the_used_ring(r in ring()) {
        let (mem, mut q) = guest_with(&r, 0x5a);
        let before = snapshot(&mem);
        let mut tap: Vec<Vec<u8>> = Vec::new();
        struct Frames<'a>(&'a mut Vec<Vec<u8>>);
        impl std::io::Write for Frames<'_> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
        }
        let mut scratch = Vec::with_capacity(MAX_TX_CHAIN);
        let (_, grew) = peak_growth(|| {
            // The frames the fake TAP keeps are the test's, not the device's.
            let mut sink = Frames(&mut tap);
            process_tx(&mut q, &mem, &mut sink, &mut scratch)
        });
        let kept: usize = tap.iter().map(|f| f.len() + 24).sum();
        prop_assert!(grew <= kept + SLACK, "heap grew {grew} bytes");
        prop_assert!(scratch.capacity() <= MAX_TX_CHAIN);
        prop_assert!(tap.iter().all(|f| f.len() <= MAX_FRAME));
        prop_assert!(tap.len() <= 1 << r.size_log2, "one frame per chain at most");
        let after = snapshot(&mem);
        let used = used_ring_range(1 << r.size_log2);
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            prop_assert!(a == b || used.contains(&i), "TX wrote guest byte {i:#x}");
        }
    }

    /// RX: an arbitrary frame into arbitrary rings writes no more than the
    /// header and the frame, only into device-writable descriptors and the
    /// used ring, and allocates nothing.
    #[test]
    fn rx_over_arbitrary_rings_writes_only_writable_buffers(
        mut r in ring(),
        frame_len in prop_oneof![0usize..2048, Just(MAX_FRAME)],
    ) {
        // Indirect tables are followed by virtio-queue itself; keep this
        // property about the direct descriptors it can state exactly.
        for d in &mut r.descs {
            d.flags &= 0x3;
        }
        let (mem, mut q) = guest_with(&r, 0xa5);
        let before = snapshot(&mem);
        let frame = vec![0x77u8; frame_len];
        let (written, grew) = peak_growth(|| deliver_rx(&mut q, &mem, &frame));
        prop_assert!(grew <= SLACK, "heap grew {grew} bytes");
        if let Some(n) = written {
            prop_assert!(n as usize <= NET_HDR_LEN + frame_len);
        }
        let after = snapshot(&mem);
        let used = used_ring_range(1 << r.size_log2);
        let writable = |i: usize| {
            r.descs.iter().any(|d| {
                d.flags & 0x2 != 0
                    && (d.addr..d.addr.saturating_add(u64::from(d.len))).contains(&(i as u64))
            })
        };
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            prop_assert!(
                a == b || used.contains(&i) || writable(i),
                "RX wrote guest byte {i:#x} outside the writable buffers"
            );
        }
    }

    /// virtio-blk over arbitrary rings (any descriptor table, chaining,
    /// indices; request headers all zeroes, so reads of sector 0 of
    /// whatever length the chain names, or all 0x5a, an unknown type):
    /// the disk never changes size, guest memory changes only in writable
    /// descriptors and the used ring, every chain popped comes back, and
    /// the heap stays bounded by the capped descriptor list.
    #[test]
    fn blk_over_arbitrary_rings_writes_only_writable_buffers(
        mut r in ring(),
        fill in prop_oneof![Just(0u8), Just(0x5au8)],
        read_only in any::<bool>(),
    ) {
        use isolab_microvm::devices::virtio::block::{process_queue, Disk, SECTOR_SIZE};
        use std::io::Write as _;
        // Indirect tables are followed by virtio-queue itself (and bounded
        // by the device's descriptor cap); state the property exactly for
        // direct descriptors.
        for d in &mut r.descs {
            d.flags &= 0x3;
        }
        let (mem, mut q) = guest_with(&r, fill);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let content: Vec<u8> = (0..16 * SECTOR_SIZE).map(|i| (i % 253) as u8).collect();
        f.write_all(&content).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(f.path())
            .unwrap();
        let disk = Disk::new(file, read_only, "hostile").unwrap();
        let before = snapshot(&mem);
        let (_, grew) = peak_growth(|| process_queue(&mut q, &mem, &disk));
        prop_assert!(grew <= SLACK, "heap grew {grew} bytes");
        let on_disk = std::fs::read(f.path()).unwrap();
        prop_assert_eq!(on_disk.len(), content.len(), "the disk never changes size");
        if read_only {
            prop_assert!(on_disk == content, "a read-only disk changed");
        }
        let after = snapshot(&mem);
        let used = used_ring_range(1 << r.size_log2);
        let writable = |i: usize| {
            r.descs.iter().any(|d| {
                d.flags & 0x2 != 0
                    && (d.addr..d.addr.saturating_add(u64::from(d.len))).contains(&(i as u64))
            })
        };
        for (i, (a, b)) in before.iter().zip(&after).enumerate() {
            prop_assert!(
                a == b || used.contains(&i) || writable(i),
                "virtio-blk wrote guest byte {i:#x} outside the writable buffers"
            );
        }
    }

    /// The marker device under any port writes: the logs stay capped and
    /// the ready hook fires at most once.
    #[test]
    fn marker_port_floods_stay_bounded(
        writes in prop::collection::vec((0u64..4, any::<u8>()), 0..4000),
    ) {
        let log = Arc::new(Mutex::new(MarkerLog::default()));
        let fired = Arc::new(Mutex::new(0u32));
        let f = fired.clone();
        let mut dev = MarkerDevice::new(log.clone(), Some(Box::new(move || *f.lock().unwrap() += 1)));
        for (off, v) in &writes {
            // Only the workload-exited event asks anything of the VM: to stop.
            let expected = if (*off, *v) == (0, 3) {
                DeviceEvent::WorkloadExited
            } else {
                DeviceEvent::None
            };
            prop_assert_eq!(dev.write(*off, &[*v]), expected);
        }
        let l = log.lock().unwrap();
        prop_assert!(l.unknown_events.len() <= MAX_UNKNOWN_EVENTS);
        prop_assert!(l.output.len() <= MAX_OUTPUT);
        let readies = writes.iter().filter(|(o, v)| *o == 0 && *v == 2).count();
        prop_assert_eq!(*fired.lock().unwrap(), u32::from(readies > 0));
        let unknown = writes
            .iter()
            .filter(|(o, v)| *o == 0 && ![123, 1, 2, 3].contains(v))
            .count() as u64;
        prop_assert_eq!(l.unknown_events.len() as u64 + l.unknown_events_dropped, unknown);
    }

    /// COM1 under any register I/O (any offset, any width): no panic, and
    /// the console sink never takes more than its cap plus one notice.
    #[test]
    fn serial_port_io_is_total_and_output_capped(
        ops in prop::collection::vec(
            (any::<bool>(), prop_oneof![4 => 0u64..8, 1 => any::<u64>()], prop::collection::vec(any::<u8>(), 0..9)),
            0..2000,
        ),
    ) {
        struct NoIrq;
        impl vm_superio::Trigger for NoIrq {
            type E = std::io::Error;
            fn trigger(&self) -> std::io::Result<()> { Ok(()) }
        }
        const CAP: u64 = 256;
        let mut s = SerialDevice::new(NoIrq, CappedWriter::new(Vec::new(), CAP));
        for (write, off, data) in &ops {
            if *write {
                prop_assert_eq!(s.write(*off, data), DeviceEvent::None);
            } else {
                let mut buf = data.clone();
                s.read(*off, &mut buf);
            }
        }
        prop_assert!(s.output().get_ref().len() as u64 <= CAP + 80);
    }

    /// The i8042 ends the VM exactly on 0xFE to the command port, whatever
    /// else the guest writes or reads (an offset past the device is not
    /// the command port, however it truncates).
    #[test]
    fn i8042_resets_only_on_the_reset_command(
        ops in prop::collection::vec(
            (any::<bool>(), prop_oneof![4 => 0u64..5, 1 => any::<u64>()], prop_oneof![1 => Just(0xfeu8), 3 => any::<u8>()]),
            0..500,
        ),
    ) {
        let mut k = I8042::new();
        for (write, off, v) in &ops {
            if *write {
                let e = k.write(*off, &[*v]);
                prop_assert_eq!(e == DeviceEvent::Reset, *off == 4 && *v == 0xfe, "offset {} value {:#x}", off, v);
            } else {
                let mut b = [0u8; 1];
                k.read(*off, &mut b);
            }
        }
    }
}

// --- The transport with the real device behind it ---------------------------

#[derive(Debug, Clone)]
enum Op {
    Read {
        offset: u64,
        width: usize,
    },
    Write {
        offset: u64,
        value: u64,
        width: usize,
    },
}

/// Register offsets a driver uses, values it writes, and anything else.
fn op() -> impl Strategy<Value = Op> {
    let known = prop::sample::select(vec![
        reg::DEVICE_FEATURES_SEL,
        reg::DRIVER_FEATURES,
        reg::DRIVER_FEATURES_SEL,
        reg::QUEUE_SEL,
        reg::QUEUE_NUM,
        reg::QUEUE_READY,
        reg::QUEUE_NOTIFY,
        reg::INTERRUPT_ACK,
        reg::STATUS,
        reg::QUEUE_DESC_LOW,
        reg::QUEUE_DESC_HIGH,
        reg::QUEUE_DRIVER_LOW,
        reg::QUEUE_DRIVER_HIGH,
        reg::QUEUE_DEVICE_LOW,
        reg::QUEUE_DEVICE_HIGH,
    ]);
    let offset = prop_oneof![6 => known, 1 => 0u64..0x1000, 1 => any::<u64>()];
    let value = prop_oneof![
        4 => prop::sample::select(vec![0u64, 1, 2, 3, 7, 11, 15, 16, 256, 0x1000, 0x2000, 0x4000]),
        1 => Just(VIRTIO_F_VERSION_1 >> 32),
        2 => any::<u64>(),
    ];
    let width = prop::sample::select(vec![4usize, 4, 4, 1, 2, 8]);
    prop_oneof![
        4 => (offset.clone(), value, width.clone()).prop_map(|(offset, value, width)| Op::Write { offset, value, width }),
        1 => (offset, width).prop_map(|(offset, width)| Op::Read { offset, width }),
    ]
}

/// A driver's setup, with arbitrary queue sizes and ring addresses (most of
/// them inside guest RAM), so that many cases reach DRIVER_OK and the
/// worker then serves rings made of guest noise.
fn setup() -> impl Strategy<Value = Vec<Op>> {
    let size = prop::sample::select(vec![1u64, 2, 4, 16, 64, 256, 0, 3, 512]);
    let addr = prop_oneof![4 => (0u64..RAM / 16).prop_map(|a| a * 16), 1 => any::<u32>().prop_map(u64::from)];
    let queue = (size, addr.clone(), addr.clone(), addr);
    (queue.clone(), queue, any::<bool>()).prop_map(|(q0, q1, mac)| {
        let w = |offset, value| Op::Write {
            offset,
            value,
            width: 4,
        };
        let mut ops = vec![
            w(reg::STATUS, 1),
            w(reg::STATUS, 3),
            w(reg::DRIVER_FEATURES_SEL, 1),
            w(reg::DRIVER_FEATURES, 1),
            w(reg::DRIVER_FEATURES_SEL, 0),
            w(reg::DRIVER_FEATURES, if mac { 1 << 5 } else { 0 }),
            w(reg::STATUS, 0xb),
        ];
        for (i, (size, desc, avail, used)) in [q0, q1].into_iter().enumerate() {
            ops.extend([
                w(reg::QUEUE_SEL, i as u64),
                w(reg::QUEUE_NUM, size),
                w(reg::QUEUE_DESC_LOW, desc),
                w(reg::QUEUE_DRIVER_LOW, avail),
                w(reg::QUEUE_DEVICE_LOW, used),
                w(reg::QUEUE_READY, 1),
            ]);
        }
        ops.push(w(reg::STATUS, 0xf));
        ops
    })
}

/// Guest RAM full of noise from `seed` (xorshift).
fn noise(mem: &GuestMemoryMmap, mut seed: u64) {
    seed |= 1;
    let bytes: Vec<u8> = (0..RAM)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    mem.write_slice(&bytes, GuestAddress(0)).unwrap();
}

fn read32(t: &mut MmioTransport<NetDevice>, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(offset, &mut b);
    u32::from_le_bytes(b)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..config() })]

    /// Arbitrary register traffic against the virtio-mmio transport and the
    /// real virtio-net device (its worker serving whatever queues got
    /// activated, over arbitrary guest memory): identification never
    /// changes, activation only follows a valid negotiation, and a reset
    /// always returns the device to zero.
    #[test]
    fn mmio_transport_survives_arbitrary_register_traffic(
        setup in setup(),
        tail in prop::collection::vec(op(), 0..150),
        seed in any::<u64>(),
    ) {
        let mem = create_guest_memory(RAM, HugePages::Host).unwrap();
        noise(&mem, seed);
        let ops: Vec<Op> = setup.into_iter().chain(tail).collect();
        let (tap, _wire) = UnixDatagram::pair().unwrap();
        let dev = NetDevice::new(OwnedFd::from(tap), [2, 0, 0, 0, 0, 1]).unwrap();
        let mut t = MmioTransport::new(dev, mem, EventFd::new(libc::EFD_NONBLOCK).unwrap());
        for op in &ops {
            match op {
                Op::Read { offset, width } => {
                    let mut buf = vec![0xccu8; *width];
                    t.read(*offset, &mut buf);
                    if *offset < reg::CONFIG && *width != 4 {
                        prop_assert!(buf.iter().all(|&b| b == 0));
                    }
                }
                Op::Write { offset, value, width } => {
                    let bytes = value.to_le_bytes();
                    prop_assert_eq!(t.write(*offset, &bytes[..*width]), DeviceEvent::None);
                }
            }
            prop_assert_eq!(read32(&mut t, reg::MAGIC_VALUE), MAGIC);
            prop_assert_eq!(read32(&mut t, reg::VERSION), 2);
            prop_assert_eq!(read32(&mut t, reg::DEVICE_ID), 1);
            if t.is_activated() {
                prop_assert!(t.status() & status::FEATURES_OK != 0);
                prop_assert!(t.acked_features() & VIRTIO_F_VERSION_1 != 0);
            }
        }
        t.write(reg::STATUS, &0u32.to_le_bytes());
        prop_assert_eq!(t.status(), 0);
        prop_assert!(!t.is_activated());
    }
}
