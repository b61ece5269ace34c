//! workspaced keeps developer workspaces on an edge host alive, warm and tidy.
//!
//! Codemap, by layer (each imports only from the layers above it in this list):
//! - `domain`, `error`, `clock`: plain data and ids, the error-chain helper, wall time.
//! - `planner`, `auth`: pure decisions (pools, lifecycle, GC, deadlines, cron; who may
//!   do what).
//! - `config`: TOML + environment into a typed, validated `Config`.
//! - `store`: all SQL (one writer, read-only readers, migrations, the event outbox).
//! - `metrics`, `telemetry`, `activity`: the Prometheus registry; logging; the in-memory
//!   activity gate and the app proxy's upstream connection counts.
//! - `context`, `systemd`: what a loop iteration gets; sd_notify and the watchdog.
//! - `events`, `provisioner`: publisher and webhooks; backends and the job runner.
//! - `pools`, `lifecycle`, `gc`, `health`, `retention`, `templates`: the capabilities,
//!   each with its loop iteration and write side.
//! - `loops`: the driver that runs the loops.
//! - `http`, `app`, `signals`, `cli`: the server and API; start-up and shutdown; signals;
//!   subcommands.
//!
//! See ARCHITECTURE.md for the map of every module and the invariants.

pub mod activity;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod domain;
pub mod error;
pub mod events;
pub mod gc;
#[cfg(feature = "containers")]
pub mod health;
pub mod http;
pub mod lifecycle;
pub mod loops;
pub mod metrics;
pub mod planner;
pub mod pools;
pub mod provisioner;
pub mod retention;
pub mod signals;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod templates;
