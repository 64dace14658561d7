//! virtio-blk (device ID 2) over a disk image file, in the manner of
//! Firecracker's block device: one request queue served by a worker
//! thread, reads and writes straight between the file and guest memory
//! (no bounce buffer), read-only unless asked otherwise.
//!
//! Offered: VERSION_1, SEG_MAX (so Linux sends up to [`SEG_MAX`] data
//! segments per request instead of one), FLUSH, and RO for a read-only
//! disk. Handled requests: IN (read), OUT (write; IOERR on a read-only
//! disk), FLUSH (`fdatasync` when writable), GET_ID (up to 20 bytes of
//! the device's id); anything else is UNSUPP.
//!
//! Bounded against a hostile driver, whatever the chain says:
//! - a chain of more than [`MAX_DESCRIPTORS`] descriptors (indirect tables
//!   included) is refused without being walked further;
//! - every segment is checked to lie in guest RAM before any byte moves;
//! - `sector * 512 + length` must fit in the disk (overflow-checked), and
//!   data lengths must be whole sectors;
//! - memory use is fixed: the descriptor list is capped, the header is 16
//!   bytes, data moves by `read(2)`/`write(2)` into and out of guest RAM.
//!
//! Every chain popped is returned to the used ring (with IOERR when it is
//! malformed), so a bad request never stalls the queue.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, Permissions};

use super::device::{read_config_bytes, Interrupt, VirtioDevice, INT_VRING};
use super::mmio::VIRTIO_F_VERSION_1;
use super::worker::{Serve, Wakeups, Worker, WorkerError};
use crate::seccomp::ThreadKind;
use crate::vstate::memory::GuestMemoryMmap;

/// virtio device ID of a block device.
pub const DEVICE_ID_BLOCK: u32 = 2;
/// Feature bit 2: `seg_max` in the config space is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
/// Feature bit 5: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
/// Feature bit 9: the device handles FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

/// Request types (virtio 1.x, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// Status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// The unit of `sector` and of the capacity.
pub const SECTOR_SIZE: u64 = 512;
/// `struct virtio_blk_outhdr`: type, reserved (ioprio), sector.
pub const REQUEST_HEADER_LEN: usize = 16;
/// Bytes of a GET_ID answer.
pub const ID_LEN: usize = 20;
/// Descriptors in the request queue (a power of two; Firecracker's value).
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request the driver is told it may use.
pub const SEG_MAX: u32 = 126;
/// Longest chain served: header + [`SEG_MAX`] data + status.
pub const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;

/// Failures setting up the device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The disk image cannot be opened.
    #[error("Cannot open the disk image {path:?}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Its size cannot be read.
    #[error("Cannot read the size of the disk image")]
    Size(#[source] io::Error),
    /// Smaller than one sector.
    #[error("The disk image is {bytes} bytes, smaller than one {SECTOR_SIZE}-byte sector")]
    TooSmall { bytes: u64 },
    /// Giving the I/O thread its own handle on the disk failed.
    #[error("Could not start the virtio-blk thread")]
    Spawn(#[source] io::Error),
    /// Starting the I/O thread failed.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// The disk behind the device: what requests are checked against.
#[derive(Debug)]
pub struct Disk {
    file: File,
    /// Whole sectors; a trailing partial sector is not exposed.
    sectors: u64,
    read_only: bool,
    id: [u8; ID_LEN],
}

impl Disk {
    /// A disk over `file`; `id` (truncated to 20 bytes) answers GET_ID,
    /// and the guest sees it in `/sys/block/vda/serial`.
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Disk, BlockError> {
        let bytes = file.metadata().map_err(BlockError::Size)?.len();
        if bytes < SECTOR_SIZE {
            return Err(BlockError::TooSmall { bytes });
        }
        let mut idb = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Disk {
            file,
            sectors: bytes / SECTOR_SIZE,
            read_only,
            id: idb,
        })
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    fn try_clone(&self) -> io::Result<Disk> {
        Ok(Disk {
            file: self.file.try_clone()?,
            ..*self
        })
    }

    /// Whether `len` bytes at `sector` lie inside the disk.
    fn in_bounds(&self, sector: u64, len: u64) -> Option<u64> {
        let start = sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len)?;
        (end <= self.sectors * SECTOR_SIZE).then_some(start)
    }
}

/// What the worker serves between DRIVER_OK and a reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<Interrupt>,
}

/// What the device's I/O thread does once activated: serves the queue
/// from its own handle on the disk until the device is reset.
struct Server {
    disk: Disk,
}

impl Serve for Server {
    type Active = Active;
    const KIND: ThreadKind = ThreadKind::BlockWorker;

    fn serve(&mut self, a: &mut Active, wake: &Wakeups) {
        while let Some(ready) = wake.next(None) {
            if ready.kick && process_queue(&mut a.queue, &a.mem, &self.disk) {
                a.interrupt.signal(INT_VRING);
            }
        }
    }
}

/// The block device; the transport activates it.
///
/// Its I/O thread ([`super::worker`]) starts with the device, before the
/// guest runs, and confines itself ([`crate::seccomp`]) before it serves
/// the queue: no thread is created while the guest runs.
#[derive(Debug)]
pub struct BlockDevice {
    worker: Worker<Active>,
    disk: Disk,
}

impl BlockDevice {
    /// Opens `path` (read-only unless `read_only` is false) as the disk.
    pub fn open(path: &Path, read_only: bool, id: &str) -> Result<BlockDevice, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| BlockError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        BlockDevice::new(Disk::new(file, read_only, id)?)
    }

    /// A device serving `disk`; starts its (idle) I/O thread.
    pub fn new(disk: Disk) -> Result<BlockDevice, BlockError> {
        let server = Server {
            disk: disk.try_clone().map_err(BlockError::Spawn)?,
        };
        Ok(BlockDevice {
            worker: Worker::spawn(server)?,
            disk,
        })
    }

    /// The disk it serves.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }
}

/// `struct virtio_blk_config` as far as the offered features reach:
/// capacity (le64), size_max (le32, not offered: 0), seg_max (le32).
fn config_space(sectors: u64) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..8].copy_from_slice(&sectors.to_le_bytes());
    c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    c
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        DEVICE_ID_BLOCK
    }

    fn features(&self) -> u64 {
        let ro = if self.disk.read_only {
            VIRTIO_BLK_F_RO
        } else {
            0
        };
        VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_FLUSH | ro
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&config_space(self.disk.sectors), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _features: u64,
        queues: Vec<Queue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        self.worker.stop_serving();
        let Some(queue) = queues.into_iter().next() else {
            return Err("virtio-blk needs one request queue".into());
        };
        self.worker.start(Active {
            mem,
            queue,
            interrupt,
        })
    }

    fn queue_notify(&mut self, _queue: u32) {
        self.worker.kick();
    }

    fn reset(&mut self) {
        self.worker.stop_serving();
    }
}

/// One guest buffer.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// A request's descriptors, sorted by direction, or why it is malformed.
struct Parsed {
    readable: Vec<Segment>,
    writable: Vec<Segment>,
    /// A device-readable descriptor after a device-writable one.
    out_of_order: bool,
    /// More than [`MAX_DESCRIPTORS`] descriptors.
    too_long: bool,
}

fn parse_chain<M: GuestMemory>(chain: virtio_queue::DescriptorChain<&M>) -> Parsed {
    let mut p = Parsed {
        readable: Vec::with_capacity(4),
        writable: Vec::with_capacity(4),
        out_of_order: false,
        too_long: false,
    };
    for (n, desc) in chain.enumerate() {
        if n >= MAX_DESCRIPTORS {
            p.too_long = true;
            break;
        }
        let seg = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() {
            p.writable.push(seg);
        } else {
            if !p.writable.is_empty() {
                p.out_of_order = true;
            }
            p.readable.push(seg);
        }
    }
    p
}

/// Reads `buf.len()` bytes starting at offset `skip` of the concatenated
/// segments; `None` if they are shorter or outside RAM.
fn gather<M: GuestMemory>(mem: &M, segs: &[Segment], buf: &mut [u8]) -> Option<()> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], s.addr).ok()?;
        done += n;
    }
    (done == buf.len()).then_some(())
}

/// The segments' byte ranges, minus the first `skip` bytes and the last
/// `trim` bytes, as (address, length) pieces.
fn window(segs: &[Segment], mut skip: u64, trim: u64) -> Vec<Segment> {
    let total: u64 = segs.iter().map(|s| u64::from(s.len)).sum();
    let mut keep = total.saturating_sub(skip).saturating_sub(trim);
    let mut out = Vec::with_capacity(segs.len());
    for s in segs {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let take = (len - skip).min(keep);
        if take > 0 {
            out.push(Segment {
                addr: GuestAddress(s.addr.0.wrapping_add(skip)),
                len: take as u32,
            });
        }
        keep -= take;
        skip = 0;
    }
    out
}

fn total(segs: &[Segment]) -> u64 {
    segs.iter().map(|s| u64::from(s.len)).sum()
}

/// Whether every segment lies in guest RAM with access `perm`.
fn all_in_ram<M: GuestMemory>(mem: &M, segs: &[Segment], perm: Permissions) -> bool {
    segs.iter().all(|s| {
        s.addr.0.checked_add(u64::from(s.len)).is_some()
            && mem.check_range(s.addr, s.len as usize, perm)
    })
}

/// Performs one request; returns (status, bytes written into the data
/// buffers, not counting the status byte).
fn execute<M: GuestMemory>(mem: &M, disk: &Disk, p: &Parsed) -> (u8, u32) {
    if p.too_long || p.out_of_order {
        return (VIRTIO_BLK_S_IOERR, 0);
    }
    let mut hdr = [0u8; REQUEST_HEADER_LEN];
    if gather(mem, &p.readable, &mut hdr).is_none() {
        return (VIRTIO_BLK_S_IOERR, 0);
    }
    let kind = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
    let sector = u64::from_le_bytes(hdr[8..16].try_into().expect("8 bytes"));
    // The last writable byte is the status; what precedes it is data.
    let data_in = window(&p.writable, 0, 1);
    let data_out = window(&p.readable, REQUEST_HEADER_LEN as u64, 0);
    match kind {
        VIRTIO_BLK_T_IN => {
            let len = total(&data_in);
            // The used length is a u32 (plus the status byte).
            if len % SECTOR_SIZE != 0
                || len >= u64::from(u32::MAX)
                || !all_in_ram(mem, &data_in, Permissions::Write)
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(mut offset) = disk.in_bounds(sector, len) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let mut file = &disk.file;
            for s in &data_in {
                let ok = file.seek(SeekFrom::Start(offset)).is_ok()
                    && mem
                        .read_exact_volatile_from(s.addr, &mut file, s.len as usize)
                        .is_ok();
                if !ok {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                offset += u64::from(s.len);
            }
            (VIRTIO_BLK_S_OK, len as u32)
        }
        VIRTIO_BLK_T_OUT => {
            let len = total(&data_out);
            if disk.read_only
                || len % SECTOR_SIZE != 0
                || !all_in_ram(mem, &data_out, Permissions::Read)
            {
                return (VIRTIO_BLK_S_IOERR, 0);
            }
            let Some(mut offset) = disk.in_bounds(sector, len) else {
                return (VIRTIO_BLK_S_IOERR, 0);
            };
            let mut file = &disk.file;
            for s in &data_out {
                let ok = file.seek(SeekFrom::Start(offset)).is_ok()
                    && mem
                        .write_all_volatile_to(s.addr, &mut file, s.len as usize)
                        .is_ok();
                if !ok {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                offset += u64::from(s.len);
            }
            (VIRTIO_BLK_S_OK, 0)
        }
        VIRTIO_BLK_T_FLUSH => {
            if disk.read_only || disk.file.sync_data().is_ok() {
                (VIRTIO_BLK_S_OK, 0)
            } else {
                (VIRTIO_BLK_S_IOERR, 0)
            }
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = total(&data_in).min(ID_LEN as u64) as usize;
            let mut left = &disk.id[..n];
            for s in &data_in {
                if left.is_empty() {
                    break;
                }
                let k = (s.len as usize).min(left.len());
                if mem.write_slice(&left[..k], s.addr).is_err() {
                    return (VIRTIO_BLK_S_IOERR, 0);
                }
                left = &left[k..];
            }
            (VIRTIO_BLK_S_OK, n as u32)
        }
        _ => (VIRTIO_BLK_S_UNSUPP, 0),
    }
}

/// Serves every available request; returns whether any chain was used.
/// Each chain goes back to the used ring with the bytes written (data
/// plus the status byte), or 0 when not even the status could be written.
pub fn process_queue<M: GuestMemory>(queue: &mut Queue, mem: &M, disk: &Disk) -> bool {
    let mut used = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let parsed = parse_chain(chain);
        let (status, written) = execute(mem, disk, &parsed);
        let status_at = parsed
            .writable
            .last()
            .filter(|s| s.len > 0 && !parsed.too_long)
            .and_then(|s| s.addr.checked_add(u64::from(s.len) - 1));
        let len = match status_at {
            Some(at) if mem.write_obj(status, at).is_ok() => written + 1,
            _ => 0,
        };
        let _ = queue.add_used(mem, head, len);
        used = true;
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vmm_sys_util::eventfd::EventFd;

    const MEM: u64 = 1 << 20;
    const SECTORS: u64 = 16;

    fn mem() -> GuestMemoryMmap {
        crate::vstate::memory::create_guest_memory(MEM, Default::default()).unwrap()
    }

    /// A disk whose byte i is (i * 7 + i / 512) mod 251: every sector differs.
    fn disk_bytes() -> Vec<u8> {
        (0..SECTORS * SECTOR_SIZE)
            .map(|i| ((i * 7 + i / 512) % 251) as u8)
            .collect()
    }

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&disk_bytes()).unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(f.path())
            .unwrap();
        (f, Disk::new(file, read_only, "isolab-test-disk").unwrap())
    }

    fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
        let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn desc_flags(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&kind.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        m.write_slice(&h, GuestAddress(at)).unwrap();
    }

    /// Runs one chain; returns (status byte, used length).
    fn run(m: &GuestMemoryMmap, d: &Disk, chain: &[RawDescriptor], status_at: u64) -> (u8, u32) {
        let vq = MockSplitQueue::new(m, 256);
        vq.build_desc_chain(chain).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        m.write_obj(0xffu8, GuestAddress(status_at)).unwrap();
        assert!(process_queue(&mut q, m, d));
        assert_eq!(vq.used().idx().load(), 1, "the chain went back");
        let len = vq.used().ring().ref_at(0).unwrap().load().len();
        (m.read_obj(GuestAddress(status_at)).unwrap(), len)
    }

    #[test]
    fn reads_sectors_across_segments() {
        let m = mem();
        let (_f, d) = disk(true);
        header(&m, 0x10000, VIRTIO_BLK_T_IN, 3);
        let chain = [
            desc(0x10000, 16, false),
            desc(0x20000, 512, true),
            desc(0x30000, 1024, true),
            desc(0x40000, 1, true),
        ];
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_OK, 1537));
        let want = &disk_bytes()[3 * 512..6 * 512];
        let mut got = vec![0u8; 1536];
        m.read_slice(&mut got[..512], GuestAddress(0x20000))
            .unwrap();
        m.read_slice(&mut got[512..], GuestAddress(0x30000))
            .unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn header_and_status_may_share_descriptors_with_data() {
        // VERSION_1 implies ANY_LAYOUT: one readable, one writable buffer.
        let m = mem();
        let (_f, d) = disk(true);
        header(&m, 0x10000, VIRTIO_BLK_T_IN, 15);
        let chain = [desc(0x10000, 16, false), desc(0x20000, 513, true)];
        assert_eq!(run(&m, &d, &chain, 0x20000 + 512), (VIRTIO_BLK_S_OK, 513));
        let mut got = vec![0u8; 512];
        m.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(got, &disk_bytes()[15 * 512..]);
    }

    #[test]
    fn writes_only_when_writable_and_flushes() {
        let m = mem();
        m.write_slice(&[0xab; 512], GuestAddress(0x20000)).unwrap();
        for read_only in [true, false] {
            let (f, d) = disk(read_only);
            header(&m, 0x10000, VIRTIO_BLK_T_OUT, 2);
            let chain = [
                desc(0x10000, 16, false),
                desc(0x20000, 512, false),
                desc(0x40000, 1, true),
            ];
            let (status, len) = run(&m, &d, &chain, 0x40000);
            let on_disk = std::fs::read(f.path()).unwrap();
            if read_only {
                assert_eq!((status, len), (VIRTIO_BLK_S_IOERR, 1));
                assert_eq!(on_disk, disk_bytes(), "read-only disk unchanged");
            } else {
                assert_eq!((status, len), (VIRTIO_BLK_S_OK, 1));
                assert_eq!(&on_disk[1024..1536], &[0xab; 512][..]);
                assert_eq!(&on_disk[..1024], &disk_bytes()[..1024]);
            }
            header(&m, 0x10000, VIRTIO_BLK_T_FLUSH, 0);
            let flush = [desc(0x10000, 16, false), desc(0x40000, 1, true)];
            assert_eq!(run(&m, &d, &flush, 0x40000), (VIRTIO_BLK_S_OK, 1));
        }
    }

    #[test]
    fn get_id_and_unsupported_types() {
        let m = mem();
        let (_f, d) = disk(true);
        header(&m, 0x10000, VIRTIO_BLK_T_GET_ID, 0);
        let chain = [
            desc(0x10000, 16, false),
            desc(0x20000, 20, true),
            desc(0x40000, 1, true),
        ];
        // All 20 bytes (the id, NUL-padded), then the status.
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_OK, 21));
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x20000)).unwrap();
        assert_eq!(&id[..16], b"isolab-test-disk");
        header(&m, 0x10000, 11, 0); // DISCARD
        let chain = [desc(0x10000, 16, false), desc(0x40000, 1, true)];
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_UNSUPP, 1));
    }

    #[test]
    fn out_of_bounds_requests_fail_without_touching_memory() {
        let m = mem();
        let (_f, d) = disk(true);
        m.write_slice(&[0x55; 1024], GuestAddress(0x20000)).unwrap();
        for (sector, len) in [
            (SECTORS, 512),        // just past the end
            (SECTORS - 1, 1024),   // straddles the end
            (u64::MAX / 512, 512), // offset overflows
            (u64::MAX, 512),       // sector * 512 overflows
            (0, 100),              // not whole sectors
        ] {
            header(&m, 0x10000, VIRTIO_BLK_T_IN, sector);
            let chain = [
                desc(0x10000, 16, false),
                desc(0x20000, len, true),
                desc(0x40000, 1, true),
            ];
            assert_eq!(
                run(&m, &d, &chain, 0x40000),
                (VIRTIO_BLK_S_IOERR, 1),
                "sector {sector} len {len}"
            );
            let mut after = vec![0u8; 1024];
            m.read_slice(&mut after, GuestAddress(0x20000)).unwrap();
            assert!(
                after.iter().all(|&b| b == 0x55),
                "sector {sector}: data untouched"
            );
        }
        // A data buffer partly outside guest RAM: refused before any read.
        header(&m, 0x10000, VIRTIO_BLK_T_IN, 0);
        let chain = [
            desc(0x10000, 16, false),
            desc(0x20000, 512, true),
            desc(MEM - 512, 1024, true),
            desc(0x40000, 1, true),
        ];
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_IOERR, 1));
        let mut after = vec![0u8; 512];
        m.read_slice(&mut after, GuestAddress(0x20000)).unwrap();
        assert!(after.iter().all(|&b| b == 0x55));
    }

    #[test]
    fn malformed_chains_still_come_back() {
        let m = mem();
        let (_f, d) = disk(true);
        // Too many descriptors.
        header(&m, 0x10000, VIRTIO_BLK_T_IN, 0);
        let mut chain = vec![desc(0x10000, 16, false)];
        chain.extend((0..MAX_DESCRIPTORS as u64).map(|i| desc(0x20000 + i * 512, 512, true)));
        chain.push(desc(0x40000, 1, true));
        assert_eq!(
            run(&m, &d, &chain, 0x40000),
            (0xff, 0),
            "refused, status not even written"
        );
        // Header too short, and header outside RAM.
        let chain = [desc(0x10000, 8, false), desc(0x40000, 1, true)];
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_IOERR, 1));
        let chain = [desc(MEM + 4096, 16, false), desc(0x40000, 1, true)];
        assert_eq!(run(&m, &d, &chain, 0x40000), (VIRTIO_BLK_S_IOERR, 1));
        // No writable descriptor: nowhere to put the status.
        let chain = [desc(0x10000, 16, false)];
        let vq = MockSplitQueue::new(&m, 16);
        vq.build_desc_chain(&chain).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        assert!(process_queue(&mut q, &m, &d));
        assert_eq!(vq.used().ring().ref_at(0).unwrap().load().len(), 0);
    }

    #[test]
    fn config_space_and_features() {
        let (_f, d) = disk(true);
        let dev = BlockDevice::new(d).unwrap();
        let mut cap = [0u8; 8];
        dev.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), SECTORS);
        let mut seg = [0u8; 4];
        dev.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        let mut far = [0xffu8; 4];
        dev.read_config(u64::MAX - 1, &mut far);
        assert_eq!(far, [0; 4]);
        assert_ne!(dev.features() & VIRTIO_BLK_F_RO, 0);
        let (_f, w) = disk(false);
        assert_eq!(BlockDevice::new(w).unwrap().features() & VIRTIO_BLK_F_RO, 0);
        let tiny = tempfile::tempfile().unwrap();
        assert!(matches!(
            Disk::new(tiny, true, "x"),
            Err(BlockError::TooSmall { bytes: 0 })
        ));
    }

    /// The whole device without KVM: activate on mock rings, notify, and
    /// the worker thread serves the request and raises the interrupt.
    #[test]
    fn worker_serves_a_notified_request_and_interrupts() {
        let m = mem();
        let (_f, d) = disk(true);
        let vq = MockSplitQueue::create(&m, GuestAddress(0), 16);
        header(&m, 0x10000, VIRTIO_BLK_T_IN, 1);
        vq.build_desc_chain(&[
            desc(0x10000, 16, false),
            desc(0x20000, 512, true),
            desc(0x40000, 1, true),
        ])
        .unwrap();
        let mut dev = BlockDevice::new(d).unwrap();
        let irq = EventFd::new(0).unwrap();
        let interrupt = Interrupt::new(irq.try_clone().unwrap());
        dev.activate(
            m.clone(),
            dev.features(),
            vec![vq.create_queue().unwrap()],
            interrupt.clone(),
        )
        .unwrap();
        dev.queue_notify(0);
        assert!(irq.read().unwrap() >= 1, "the interrupt fired");
        assert_eq!(vq.used().idx().load(), 1);
        assert_eq!(interrupt.status() & INT_VRING, INT_VRING);
        let mut got = vec![0u8; 512];
        m.read_slice(&mut got, GuestAddress(0x20000)).unwrap();
        assert_eq!(got, &disk_bytes()[512..1024]);
        dev.reset();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One descriptor: address (often inside RAM, sometimes past it or
        /// wrapping), length (often small, sometimes huge), flags (device-
        /// writable, and now and then an indirect table the driver never
        /// negotiated).
        fn any_desc() -> impl Strategy<Value = (u64, u32, u16)> {
            (
                prop_oneof![
                    4 => 0x10000u64..MEM,
                    1 => MEM - 4096..MEM + 4096,
                    1 => any::<u64>(),
                ],
                prop_oneof![4 => 0u32..4096, 1 => any::<u32>()],
                prop_oneof![
                    4 => Just(0u16),
                    4 => Just(VRING_DESC_F_WRITE as u16),
                    1 => Just(VRING_DESC_F_INDIRECT as u16),
                ],
            )
        }

        fn any_header() -> impl Strategy<Value = (u32, u64)> {
            (
                prop_oneof![
                    Just(VIRTIO_BLK_T_IN),
                    Just(VIRTIO_BLK_T_OUT),
                    Just(VIRTIO_BLK_T_FLUSH),
                    Just(VIRTIO_BLK_T_GET_ID),
                    any::<u32>(),
                ],
                prop_oneof![0..SECTORS + 2, Just(u64::MAX), any::<u64>()],
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Arbitrary chains: no panic, every chain is returned with a
            /// used length no larger than its writable buffers, guest
            /// memory changes only inside writable buffers (and the used
            /// ring), and a read-only disk never changes.
            #[test]
            fn arbitrary_chains_stay_in_bounds(
                (kind, sector) in any_header(),
                descs in prop::collection::vec(any_desc(), 1..40),
            ) {
                let m = mem();
                let (f, d) = disk(true);
                let vq = MockSplitQueue::create(&m, GuestAddress(0), 64);
                // The header, where the first descriptor points if in RAM.
                let first = descs[0].0;
                if first.checked_add(16).is_some_and(|e| e <= MEM) && first >= 0x10000 {
                    header(&m, first, kind, sector);
                }
                let raw: Vec<RawDescriptor> =
                    descs.iter().map(|&(a, l, f)| desc_flags(a, l, f)).collect();
                vq.build_desc_chain(&raw).unwrap();
                let mut q: Queue = vq.create_queue().unwrap();
                let mut before = vec![0u8; MEM as usize];
                m.read_slice(&mut before, GuestAddress(0)).unwrap();
                prop_assert!(process_queue(&mut q, &m, &d));
                prop_assert_eq!(vq.used().idx().load(), 1);
                let used = vq.used().ring().ref_at(0).unwrap().load().len();
                // An indirect table may add writable buffers of its own
                // (whatever lies in guest memory there); those count too.
                let indirect = descs.iter().any(|x| x.2 & VRING_DESC_F_INDIRECT as u16 != 0);
                let writable: u64 = descs
                    .iter()
                    .filter(|x| x.2 & VRING_DESC_F_WRITE as u16 != 0)
                    .map(|x| u64::from(x.1))
                    .sum();
                prop_assert!(indirect || u64::from(used) <= writable);
                let mut after = vec![0u8; MEM as usize];
                m.read_slice(&mut after, GuestAddress(0)).unwrap();
                // Bytes allowed to change: writable buffers, the used ring.
                let used_ring = vq.used_addr().0..vq.used_addr().0 + 4 + 8 * 64 + 2;
                let changed = before
                    .chunks(4096)
                    .zip(after.chunks(4096))
                    .enumerate()
                    .filter(|(_, (b, a))| b != a)
                    .flat_map(|(c, (b, a))| {
                        b.iter()
                            .zip(a.iter())
                            .enumerate()
                            .filter(|(_, (x, y))| x != y)
                            .map(move |(i, _)| (c * 4096 + i) as u64)
                    });
                for i in changed {
                    let in_writable = descs.iter().any(|&(addr, len, f)| {
                        f & VRING_DESC_F_WRITE as u16 != 0
                            && addr <= i
                            && i < addr.saturating_add(u64::from(len))
                    });
                    prop_assert!(
                        indirect || in_writable || used_ring.contains(&i),
                        "byte {:#x} changed outside any writable buffer", i
                    );
                }
                prop_assert_eq!(std::fs::read(f.path()).unwrap(), disk_bytes());
            }

            /// Writes to a writable disk, with arbitrary sectors, segment
            /// lengths (whole sectors or not) and addresses (in RAM, at its
            /// edge, past it): the disk never grows, a refused write leaves
            /// it unchanged, and an accepted one changes exactly the bytes
            /// it names, with the guest's data.
            #[test]
            fn writes_stay_inside_the_disk_and_the_request(
                sector in prop_oneof![0..SECTORS + 2, Just(u64::MAX / 512), any::<u64>()],
                segs in prop::collection::vec(
                    (
                        prop_oneof![4 => 0x20000u64..0x60000, 1 => MEM - 1024..MEM + 1024],
                        prop_oneof![4 => (1u32..4).prop_map(|n| n * 512), 1 => 0u32..2048],
                    ),
                    1..4,
                ),
            ) {
                let m = mem();
                let (f, d) = disk(false);
                let fill: Vec<u8> = (0..0x60000u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
                m.write_slice(&fill, GuestAddress(0x20000)).unwrap();
                header(&m, 0x10000, VIRTIO_BLK_T_OUT, sector);
                let mut chain = vec![desc(0x10000, 16, false)];
                chain.extend(segs.iter().map(|&(a, l)| desc(a, l, false)));
                chain.push(desc(0x90000, 1, true));
                let (status, len) = run(&m, &d, &chain, 0x90000);
                prop_assert_eq!(len, 1, "the status byte only");
                let on_disk = std::fs::read(f.path()).unwrap();
                prop_assert_eq!(on_disk.len() as u64, SECTORS * SECTOR_SIZE, "the disk never grows");
                let original = disk_bytes();
                if status != VIRTIO_BLK_S_OK {
                    prop_assert_eq!(status, VIRTIO_BLK_S_IOERR);
                    prop_assert!(on_disk == original, "a refused write changed the disk");
                } else {
                    let total: u64 = segs.iter().map(|s| u64::from(s.1)).sum();
                    let start = (sector * SECTOR_SIZE) as usize;
                    let end = start + total as usize;
                    prop_assert!(total % SECTOR_SIZE == 0 && end as u64 <= SECTORS * SECTOR_SIZE);
                    prop_assert_eq!(&on_disk[..start], &original[..start]);
                    prop_assert_eq!(&on_disk[end..], &original[end..]);
                    let mut want = Vec::new();
                    for &(a, l) in &segs {
                        let mut b = vec![0u8; l as usize];
                        m.read_slice(&mut b, GuestAddress(a)).unwrap();
                        want.extend(b);
                    }
                    prop_assert!(on_disk[start..end] == want[..], "the guest's data, in order");
                }
            }

            /// Well-formed reads anywhere on the disk return the disk's bytes.
            #[test]
            fn valid_reads_return_the_disk(
                sector in 0..SECTORS,
                lens in prop::collection::vec(1u32..4, 1..4),
            ) {
                let m = mem();
                let (_f, d) = disk(true);
                let total_sectors: u64 = lens.iter().map(|&l| u64::from(l)).sum();
                header(&m, 0x10000, VIRTIO_BLK_T_IN, sector);
                let mut chain = vec![desc(0x10000, 16, false)];
                let mut addr = 0x20000u64;
                for &l in &lens {
                    chain.push(desc(addr, l * 512, true));
                    addr += 0x1000 * 2;
                }
                chain.push(desc(0x80000, 1, true));
                let (status, len) = run(&m, &d, &chain, 0x80000);
                if sector + total_sectors <= SECTORS {
                    prop_assert_eq!((status, len), (VIRTIO_BLK_S_OK, (total_sectors * 512) as u32 + 1));
                    let mut off = (sector * 512) as usize;
                    let mut addr = 0x20000u64;
                    for &l in &lens {
                        let mut got = vec![0u8; l as usize * 512];
                        m.read_slice(&mut got, GuestAddress(addr)).unwrap();
                        prop_assert_eq!(&got[..], &disk_bytes()[off..off + got.len()]);
                        off += got.len();
                        addr += 0x1000 * 2;
                    }
                } else {
                    prop_assert_eq!((status, len), (VIRTIO_BLK_S_IOERR, 1));
                }
            }
        }
    }
}
