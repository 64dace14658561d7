//! virtio-net (device ID 1) backed by a TAP file descriptor.
//!
//! One RX and one TX queue, no offloads: the device offers VERSION_1 and
//! MAC only, so every frame carries a 12-byte `virtio_net_hdr_v1` of
//! zeroes (num_buffers = 1 on RX) and the TAP is opened without
//! IFF_VNET_HDR. A worker thread polls the TAP (RX, only while the guest
//! has posted buffers) and a kick eventfd (QueueNotify on either queue:
//! TX is drained, RX retried), and raises the interrupt through the
//! slot's irqfd after using buffers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemory};

use super::device::{read_config_bytes, Interrupt, VirtioDevice, INT_VRING};
use super::mmio::VIRTIO_F_VERSION_1;
use super::worker::{Serve, Wakeups, Worker, WorkerError};
use crate::seccomp::ThreadKind;
use crate::vstate::memory::GuestMemoryMmap;

/// virtio device ID of a network card.
pub const DEVICE_ID_NET: u32 = 1;
/// Feature bit 5: the device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `virtio_net_hdr_v1` (flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers): the header before every frame with VERSION_1.
pub const NET_HDR_LEN: usize = 12;
/// Descriptors per queue (a power of two, Firecracker's value).
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame either way: without GSO (not negotiated) a frame is at
/// most the largest MTU a virtio-net driver accepts (65535) plus the
/// Ethernet header and a VLAN tag.
pub const MAX_FRAME: usize = 65_535 + 14 + 4;

/// Failures setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Making the TAP non-blocking failed.
    #[error("Could not make the TAP file descriptor non-blocking")]
    Nonblocking(#[source] nix::Error),
    /// Starting the I/O thread failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// What the worker serves between DRIVER_OK and a reset.
struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// What the device's I/O thread does once activated: owns both queues
/// until the device is reset.
struct Server {
    tap: File,
    frame: Vec<u8>,
    /// Scratch buffer of one TX chain (never above [`MAX_TX_CHAIN`]).
    tx_frame: Vec<u8>,
    /// Length of a frame read from the TAP but not yet delivered.
    pending: Option<usize>,
    /// Whether the guest may have posted RX buffers since we last ran out.
    rx_room: bool,
}

impl Serve for Server {
    type Active = Active;
    const KIND: ThreadKind = ThreadKind::NetWorker;

    /// Serves the queues until the stop eventfd fires.
    fn serve(&mut self, a: &mut Active, wake: &Wakeups) {
        self.pending = None;
        self.rx_room = true;
        loop {
            // The TAP is polled only while the guest has posted buffers.
            let tap = self.rx_room.then(|| self.tap.as_fd());
            let Some(ready) = wake.next(tap) else {
                return;
            };
            if ready.kick {
                self.rx_room = true;
                if process_tx(&mut a.tx, &a.mem, &mut self.tap, &mut self.tx_frame) {
                    a.interrupt.signal(INT_VRING);
                }
            }
            if self.rx_room
                && (ready.extra || ready.kick || self.pending.is_some())
                && self.receive(a)
            {
                a.interrupt.signal(INT_VRING);
            }
        }
    }
}

/// The network device; the transport activates it.
///
/// Its I/O thread ([`super::worker`]) is started with the device, before
/// the guest runs, and waits for activation: no thread is ever created
/// while the guest runs, so a confined vCPU thread (which activates the
/// device) needs no `clone`. The worker confines itself
/// ([`crate::seccomp`]) before it serves its first queue.
#[derive(Debug)]
pub struct NetDevice {
    worker: Worker<Active>,
    mac: [u8; 6],
}

impl NetDevice {
    /// A device with MAC `mac` sending and receiving frames on `tap` (a TAP
    /// fd opened without IFF_VNET_HDR); starts its (idle) I/O thread.
    pub fn new(tap: OwnedFd, mac: [u8; 6]) -> Result<NetDevice, NetError> {
        let flags = fcntl(&tap, FcntlArg::F_GETFL).map_err(NetError::Nonblocking)?;
        fcntl(
            &tap,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )
        .map_err(NetError::Nonblocking)?;
        let server = Server {
            tap: File::from(tap),
            frame: vec![0; MAX_FRAME],
            tx_frame: Vec::with_capacity(MAX_TX_CHAIN),
            pending: None,
            rx_room: true,
        };
        Ok(NetDevice {
            worker: Worker::spawn(server)?,
            mac,
        })
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID_NET
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // struct virtio_net_config: mac[6] first; the rest (status, MTU...)
        // belongs to features not offered and reads as zero.
        read_config_bytes(&self.mac, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        self.worker.stop_serving();
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err("virtio-net needs an RX and a TX queue".into());
        };
        let active = Active {
            mem,
            rx,
            tx,
            interrupt,
        };
        self.worker.start(active)
    }

    fn queue_notify(&mut self, _queue: u32) {
        self.worker.kick();
    }

    fn reset(&mut self) {
        self.worker.stop_serving();
    }
}

impl Server {
    /// Moves frames from the TAP into RX buffers until either runs out;
    /// returns whether any buffer was used.
    fn receive(&mut self, a: &mut Active) -> bool {
        let mut used = false;
        loop {
            let len = match self.pending {
                Some(n) => n,
                None => match self.tap.read(&mut self.frame) {
                    Ok(n) => n,
                    Err(_) => return used, // EAGAIN: nothing more for now
                },
            };
            self.pending = Some(len);
            match deliver_rx(&mut a.rx, &a.mem, &self.frame[..len]) {
                Some(_) => {
                    used = true;
                    self.pending = None;
                }
                None => {
                    self.rx_room = false;
                    return used;
                }
            }
        }
    }
}

/// Most bytes one TX chain may carry: the header plus the largest frame a
/// driver without GSO can send (a 65535-byte MTU plus Ethernet and VLAN
/// headers). A longer chain is malformed and dropped, never buffered.
pub const MAX_TX_CHAIN: usize = NET_HDR_LEN + MAX_FRAME;

/// Sends every available TX chain to `tap` (header stripped); returns
/// whether any chain was used. `frame` is the caller's scratch buffer: it
/// never grows past [`MAX_TX_CHAIN`], whatever lengths the guest writes in
/// its descriptors. A chain that cannot be read (an address outside guest
/// RAM, a length past the limit) is still returned to the guest (used
/// length 0), so the ring never stalls, and nothing of it is sent.
pub fn process_tx<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    tap: &mut impl Write,
    frame: &mut Vec<u8>,
) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        frame.clear();
        let mut ok = true;
        for desc in chain {
            if desc.is_write_only() {
                continue;
            }
            // The length is the guest's: check it before it sizes anything.
            let start = frame.len();
            let Some(end) = start
                .checked_add(desc.len() as usize)
                .filter(|&end| end <= MAX_TX_CHAIN)
            else {
                ok = false;
                break;
            };
            frame.resize(end, 0);
            if mem.read_slice(&mut frame[start..end], desc.addr()).is_err() {
                ok = false;
                break;
            }
        }
        if ok && frame.len() > NET_HDR_LEN {
            // A TAP write is one frame; a full TAP queue drops it, as a
            // wire would.
            let _ = tap.write(&frame[NET_HDR_LEN..]);
        }
        let _ = queue.add_used(mem, head, 0);
        used = true;
    }
    used
}

/// Writes `frame` behind a zeroed `virtio_net_hdr_v1` (num_buffers = 1)
/// into the next RX chain; returns the bytes written, or `None` when the
/// guest has posted no buffer. A frame larger than the chain is truncated;
/// a descriptor outside guest RAM ends the copy there. Nothing is
/// allocated: the bytes go straight from `frame` into guest memory.
pub fn deliver_rx<M: GuestMemory>(queue: &mut Queue, mem: &M, frame: &[u8]) -> Option<u32> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    let mut hdr = [0u8; NET_HDR_LEN];
    hdr[10] = 1; // num_buffers, little endian
    let parts: [&[u8]; 2] = [&hdr, frame];
    let total = NET_HDR_LEN + frame.len();
    let mut written = 0usize;
    'chain: for desc in chain {
        if !desc.is_write_only() {
            continue;
        }
        if written >= total {
            break;
        }
        let n = (desc.len() as usize).min(total - written);
        let mut done = 0usize;
        while done < n {
            // The piece of header or frame at offset `written + done`.
            let at = written + done;
            let (part, off) = if at < NET_HDR_LEN {
                (parts[0], at)
            } else {
                (parts[1], at - NET_HDR_LEN)
            };
            let piece = &part[off..part.len().min(off + (n - done))];
            let Some(addr) = desc.addr().checked_add(done as u64) else {
                break 'chain;
            };
            if mem.write_slice(piece, addr).is_err() {
                break 'chain;
            }
            done += piece.len();
        }
        written += n;
    }
    let _ = queue.add_used(mem, head, written as u32);
    Some(written as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    fn mem() -> GuestMemoryMmap {
        crate::vstate::memory::create_guest_memory(1 << 20, Default::default()).unwrap()
    }

    fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
    }

    #[test]
    fn tx_strips_the_header_and_writes_one_frame_per_chain() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        // Header and frame split over two descriptors, as Linux may do.
        m.write_slice(&[0xaa; NET_HDR_LEN], GuestAddress(0x10000))
            .unwrap();
        m.write_slice(b"frame-bytes", GuestAddress(0x20000))
            .unwrap();
        vq.build_desc_chain(&[desc(0x10000, NET_HDR_LEN as u32, 0), desc(0x20000, 11, 0)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut tap = Vec::new();
        let mut scratch = Vec::new();
        assert!(process_tx(&mut q, &m, &mut tap, &mut scratch));
        assert_eq!(tap, b"frame-bytes");
        assert_eq!(
            vq.used().idx().load(),
            1,
            "the chain went back to the guest"
        );
        assert!(
            !process_tx(&mut q, &m, &mut tap, &mut scratch),
            "nothing more to send"
        );
    }

    /// The reproduction from issue 12: one descriptor claiming 4 GiB once
    /// made the monitor allocate 4097 MiB. Now the chain is dropped unread.
    #[test]
    fn a_huge_tx_descriptor_is_dropped_without_allocating() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[desc(0x10000, u32::MAX, 0)]).unwrap();
        // Two legal-looking descriptors that together pass the limit.
        vq.build_desc_chain(&[desc(0x10000, MAX_TX_CHAIN as u32, 0), desc(0x10000, 1, 0)])
            .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut tap = Vec::new();
        let mut scratch = Vec::new();
        assert!(process_tx(&mut q, &m, &mut tap, &mut scratch));
        assert!(tap.is_empty(), "nothing of a malformed chain is sent");
        assert!(scratch.capacity() <= MAX_TX_CHAIN, "{}", scratch.capacity());
        assert_eq!(vq.used().idx().load(), 2, "both chains went back");
    }

    #[test]
    fn rx_prepends_a_v1_header_and_spans_descriptors() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&[
            desc(0x10000, 8, VRING_DESC_F_WRITE),
            desc(0x20000, 100, VRING_DESC_F_WRITE),
        ])
        .unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let frame: Vec<u8> = (1..=20).collect();
        assert_eq!(deliver_rx(&mut q, &m, &frame), Some(32));
        let mut first = [0u8; 8];
        m.read_slice(&mut first, GuestAddress(0x10000)).unwrap();
        assert_eq!(first, [0; 8]);
        let mut rest = [0u8; 24];
        m.read_slice(&mut rest, GuestAddress(0x20000)).unwrap();
        assert_eq!(&rest[..4], &[0, 0, 1, 0], "csum_offset 0, num_buffers 1");
        assert_eq!(&rest[4..], &frame[..]);
        assert_eq!(vq.used().idx().load(), 1);
        let used = vq.used().ring().ref_at(0).unwrap().load();
        assert_eq!(used.len(), 32);
        assert_eq!(deliver_rx(&mut q, &m, &frame), None, "no buffer left");
    }

    /// The whole device without KVM: a datagram socketpair stands in for
    /// the TAP (one datagram = one frame), mock rings for the guest.
    #[test]
    fn worker_moves_frames_both_ways_and_interrupts() {
        use std::os::unix::net::UnixDatagram;
        let m = mem();
        let rxq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        let txq = MockSplitQueue::create(&m, GuestAddress(0x8000), 16);
        rxq.build_desc_chain(&[desc(0x10000, 2048, VRING_DESC_F_WRITE)])
            .unwrap();
        m.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x20000))
            .unwrap();
        m.write_slice(b"from-guest", GuestAddress(0x20000 + NET_HDR_LEN as u64))
            .unwrap();
        txq.build_desc_chain(&[desc(0x20000, NET_HDR_LEN as u32 + 10, 0)])
            .unwrap();
        let (tap_end, wire) = UnixDatagram::pair().unwrap();
        wire.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut dev = NetDevice::new(OwnedFd::from(tap_end), [2, 0, 0, 0, 0, 1]).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        dev.activate(
            m.clone(),
            dev.features(),
            vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
            interrupt.clone(),
        )
        .unwrap();

        // Host -> guest: the frame lands in the posted RX buffer.
        wire.send(b"to-guest").unwrap();
        assert!(irq.read().unwrap() >= 1, "RX raised the interrupt");
        assert_eq!(rxq.used().idx().load(), 1);
        let mut got = [0u8; NET_HDR_LEN + 8];
        m.read_slice(&mut got, GuestAddress(0x10000)).unwrap();
        assert_eq!(&got[NET_HDR_LEN..], b"to-guest");
        assert_eq!(interrupt.status() & INT_VRING, INT_VRING);

        // Guest -> host: sent on the queue notify, header stripped.
        dev.queue_notify(1);
        let mut buf = [0u8; 64];
        let n = wire.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"from-guest");
        dev.reset();
        assert_eq!(txq.used().idx().load(), 1, "the TX chain was returned");
    }

    #[test]
    fn config_space_holds_the_mac() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let dev = NetDevice::new(OwnedFd::from(a), [2, 0x49, 10, 203, 0, 2]).unwrap();
        let mut mac = [0u8; 6];
        dev.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0x49, 10, 203, 0, 2]);
        let mut beyond = [0xffu8; 2];
        dev.read_config(6, &mut beyond);
        assert_eq!(beyond, [0, 0]);
        assert_eq!(dev.features(), VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC);
    }
}
