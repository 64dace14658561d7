//! Classroom demos: the same probe run as a plain process, in a container and
//! in a microVM, with the observed facts side by side, a short explanation of
//! the kernel mechanism behind them, and knowledge-check questions.
//!
//! Code map:
//! - [`catalog`]: the demos, what each runs in each kind of isolation (with
//!   its safety caps), the explanations and the questions;
//! - [`session`]: runs a demo in every requested mode — each column is
//!   "launch through the mode's [`Launcher`](crate::modes::Launcher), wait
//!   for the end, read the outcome" — and checks the host afterwards;
//! - [`facts`]: turns the outcomes into table rows and checked findings;
//! - [`guard`]: the host's own settings, read before and after every demo;
//! - [`render`]: the text table and the Markdown handout.
//!
//! It owns no launching: every mode is one of [`crate::modes`].

pub mod catalog;
pub mod facts;
pub mod guard;
pub mod render;
pub mod session;

pub use catalog::{Demo, DEMOS};
pub use guard::{HostGuard, HostSetting};
pub use render::{render_markdown, render_table};
pub use session::{run_demo, ColumnReport, DemoError, DemoReport, ModeRun};
