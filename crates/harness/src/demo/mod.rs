//! Classroom demos: the same probe run as a plain process, in a container and
//! in a microVM, with the observed facts side by side, a short explanation of
//! the kernel mechanism behind them, and knowledge-check questions.
//!
//! Code map:
//! - [`catalog`]: the demos, what each runs in each mode (with its safety
//!   caps), the explanations and the questions;
//! - [`runner`]: the [`ModeRunner`] seam and what one run records; the three
//!   runners live in [`process`], [`container`] and [`microvm`];
//! - [`facts`]: turns the records into table rows and checked findings;
//! - [`guard`]: the host's own settings, read before and after every demo;
//! - [`render`]: the text table and the Markdown handout;
//! - [`session`]: runs a demo in every mode and checks the host afterwards.
//!
//! It owns no launching: containers are `isolab-container`, microVMs are
//! `bench vm run` (natively or in the emulated host).

pub mod catalog;
pub mod container;
pub mod facts;
pub mod guard;
pub mod microvm;
pub mod process;
pub mod render;
pub mod runner;
pub mod session;

pub use catalog::{Demo, DEMOS};
pub use guard::{HostGuard, HostSetting};
pub use render::{render_markdown, render_table};
pub use runner::{DemoMode, Job, ModeRun, ModeRunner, RunRecord};
pub use session::{run_demo, DemoError, DemoReport};
