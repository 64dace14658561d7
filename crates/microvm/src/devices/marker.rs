//! The boot-marker device: how the guest init tells the monitor where the
//! boot is (see the Marker ABI in docs/contracts.md).
//!
//! | port | value | meaning |
//! |---|---|---|
//! | 0x3f0 | 123 | init reached |
//! | 0x3f0 | 0x01 | workload started |
//! | 0x3f0 | 0x02 | workload ready |
//! | 0x3f0 | 0x03 | workload exited (status already on 0x3f1) |
//! | 0x3f1 | status | workload exit status |
//! | 0x3f2 | byte | one byte of the workload's stdout |
//!
//! Each write is one VM exit; the device stamps it with CLOCK_MONOTONIC
//! (`Instant`) on the vCPU thread, as close to the guest's write as the host
//! can observe it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::bus::{BusDevice, DeviceEvent};

/// First marker port (the event port). 0x3f0 is the old Firecracker boot
/// timer port, unused by any emulated PC device here.
pub const MARKER_BASE: u64 = 0x3f0;
/// Event, status and output ports.
pub const MARKER_LEN: u64 = 3;
/// Event: init reached (Firecracker's boot-timer magic value).
pub const EVENT_INIT: u8 = 123;
/// Event: workload exec'd.
pub const EVENT_WORKLOAD_STARTED: u8 = 0x01;
/// Event: workload ready.
pub const EVENT_WORKLOAD_READY: u8 = 0x02;
/// Event: workload exited.
pub const EVENT_WORKLOAD_EXITED: u8 = 0x03;
/// Most workload output kept; the result line is one short JSON object.
pub const MAX_OUTPUT: usize = 1 << 20;
/// Most unknown event values kept (in order); the rest are only counted,
/// so a guest writing garbage to the port cannot grow the monitor.
pub const MAX_UNKNOWN_EVENTS: usize = 64;

/// What the guest reported, with host timestamps.
#[derive(Debug, Clone, Default)]
pub struct MarkerLog {
    /// Init reached (123).
    pub init_reached: Option<Instant>,
    /// Workload started (0x01).
    pub workload_started: Option<Instant>,
    /// Workload ready (0x02).
    pub workload_ready: Option<Instant>,
    /// Workload exited (0x03).
    pub workload_exited: Option<Instant>,
    /// Last status byte written to 0x3f1.
    pub exit_status: Option<u8>,
    /// Bytes written to 0x3f2, up to [`MAX_OUTPUT`].
    pub output: Vec<u8>,
    /// Output bytes past [`MAX_OUTPUT`], dropped.
    pub output_dropped: u64,
    /// Event values the ABI does not define, in order, up to
    /// [`MAX_UNKNOWN_EVENTS`].
    pub unknown_events: Vec<u8>,
    /// Unknown event values past [`MAX_UNKNOWN_EVENTS`], dropped.
    pub unknown_events_dropped: u64,
}

/// Called once when the workload-ready marker arrives.
pub type ReadyHook = Box<dyn FnMut() + Send>;

/// The marker device.
pub struct MarkerDevice {
    log: Arc<Mutex<MarkerLog>>,
    on_ready: Option<ReadyHook>,
    /// Output text that counts as the ready marker, and the last
    /// `text.len()` output bytes to match it against (kept apart from the
    /// capped output, so a late line still matches).
    ready_text: Option<(Vec<u8>, VecDeque<u8>)>,
}

impl std::fmt::Debug for MarkerDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkerDevice")
            .field("log", &self.log)
            .finish()
    }
}

impl MarkerDevice {
    /// A device that records into `log` and runs `on_ready` at the first
    /// ready marker.
    pub fn new(log: Arc<Mutex<MarkerLog>>, on_ready: Option<ReadyHook>) -> Self {
        Self {
            log,
            on_ready,
            ready_text: None,
        }
    }

    /// Also counts the workload ready when `text` (non-empty) first
    /// appears in its output, as if the ready marker had been written.
    pub fn with_ready_text(mut self, text: &str) -> Self {
        if !text.is_empty() {
            let t = text.as_bytes().to_vec();
            let window = VecDeque::with_capacity(t.len());
            self.ready_text = Some((t, window));
        }
        self
    }

    /// Feeds one output byte to the ready text; true when it completes it.
    fn output_completes_ready_text(&mut self, byte: u8) -> bool {
        let Some((text, window)) = self.ready_text.as_mut() else {
            return false;
        };
        if window.len() == text.len() {
            window.pop_front();
        }
        window.push_back(byte);
        window.len() == text.len() && window.iter().eq(text.iter())
    }
}

impl BusDevice for MarkerDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceEvent {
        let now = Instant::now();
        let Some(&value) = data.first() else {
            return DeviceEvent::None;
        };
        let mut fire_ready = false;
        let mut exited = false;
        let text_ready = offset == 2 && self.output_completes_ready_text(value);
        {
            let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
            match offset {
                0 => {
                    let slot = match value {
                        EVENT_INIT => &mut log.init_reached,
                        EVENT_WORKLOAD_STARTED => &mut log.workload_started,
                        EVENT_WORKLOAD_READY => {
                            fire_ready = log.workload_ready.is_none();
                            &mut log.workload_ready
                        }
                        EVENT_WORKLOAD_EXITED => {
                            exited = true;
                            &mut log.workload_exited
                        }
                        other => {
                            if log.unknown_events.len() < MAX_UNKNOWN_EVENTS {
                                log.unknown_events.push(other);
                            } else {
                                log.unknown_events_dropped += 1;
                            }
                            return DeviceEvent::None;
                        }
                    };
                    slot.get_or_insert(now);
                }
                1 => log.exit_status = Some(value),
                2 => {
                    if text_ready && log.workload_ready.is_none() {
                        log.workload_ready = Some(now);
                        fire_ready = true;
                    }
                    if log.output.len() < MAX_OUTPUT {
                        log.output.push(value);
                    } else {
                        log.output_dropped += 1;
                    }
                }
                // The device spans three ports; the bus never routes more.
                _ => {}
            }
        }
        if fire_ready {
            if let Some(hook) = self.on_ready.as_mut() {
                hook();
            }
        }
        if exited {
            DeviceEvent::WorkloadExited
        } else {
            DeviceEvent::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn device() -> (MarkerDevice, Arc<Mutex<MarkerLog>>, Arc<AtomicUsize>) {
        let log = Arc::new(Mutex::new(MarkerLog::default()));
        let readies = Arc::new(AtomicUsize::new(0));
        let r = readies.clone();
        let dev = MarkerDevice::new(
            log.clone(),
            Some(Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })),
        );
        (dev, log, readies)
    }

    #[test]
    fn full_guest_sequence_is_recorded_in_order() {
        let (mut d, log, readies) = device();
        d.write(0, &[EVENT_INIT]);
        d.write(0, &[EVENT_WORKLOAD_STARTED]);
        d.write(0, &[EVENT_WORKLOAD_READY]);
        for b in b"{\"ok\":true}\n" {
            d.write(2, &[*b]);
        }
        assert_eq!(d.write(1, &[7]), DeviceEvent::None);
        assert_eq!(
            d.write(0, &[EVENT_WORKLOAD_EXITED]),
            DeviceEvent::WorkloadExited,
            "the workload's end ends the VM"
        );
        let l = log.lock().unwrap();
        let t = [
            l.init_reached,
            l.workload_started,
            l.workload_ready,
            l.workload_exited,
        ];
        assert!(t.iter().all(Option::is_some));
        assert!(t.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(l.exit_status, Some(7));
        assert_eq!(l.output, b"{\"ok\":true}\n");
        assert_eq!(readies.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn repeated_markers_keep_the_first_timestamp_and_fire_ready_once() {
        let (mut d, log, readies) = device();
        d.write(0, &[EVENT_WORKLOAD_READY]);
        let first = log.lock().unwrap().workload_ready;
        d.write(0, &[EVENT_WORKLOAD_READY]);
        assert_eq!(log.lock().unwrap().workload_ready, first);
        assert_eq!(readies.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn unknown_events_are_kept_not_dropped() {
        let (mut d, log, _) = device();
        d.write(0, &[0x42]);
        assert_eq!(log.lock().unwrap().unknown_events, vec![0x42]);
        assert!(log.lock().unwrap().init_reached.is_none());
    }

    #[test]
    fn a_flood_of_unknown_events_and_output_is_capped_and_counted() {
        let (mut d, log, _) = device();
        for _ in 0..MAX_UNKNOWN_EVENTS + 10 {
            d.write(0, &[0x42]);
        }
        for _ in 0..MAX_OUTPUT + 3 {
            d.write(2, b"x");
        }
        let l = log.lock().unwrap();
        assert_eq!(l.unknown_events.len(), MAX_UNKNOWN_EVENTS);
        assert_eq!(l.unknown_events_dropped, 10);
        assert_eq!(l.output.len(), MAX_OUTPUT);
        assert_eq!(l.output_dropped, 3);
    }

    #[test]
    fn ready_text_in_the_output_counts_as_ready_once_even_past_the_cap() {
        let (d, log, readies) = device();
        let mut d = d.with_ready_text("listening");
        for b in b"start\nlisten" {
            d.write(2, &[*b]);
        }
        assert_eq!(readies.load(Ordering::SeqCst), 0);
        for b in b"ing on :80\nlistening" {
            d.write(2, &[*b]);
        }
        assert_eq!(readies.load(Ordering::SeqCst), 1);
        assert!(log.lock().unwrap().workload_ready.is_some());
        // Past the kept output, the text still matches.
        let (d, _, readies) = device();
        let mut d = d.with_ready_text("up");
        for _ in 0..MAX_OUTPUT {
            d.write(2, b"x");
        }
        d.write(2, b"u");
        d.write(2, b"p");
        assert_eq!(readies.load(Ordering::SeqCst), 1);
    }
}
