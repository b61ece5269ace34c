//! workspaced keeps developer workspaces on an edge host alive, warm and tidy.
//!
//! Codemap, in reading order:
//! - `config`: TOML + environment into a typed, validated `Config`.
//! - `clock`: the one source of wall time (`Clock`, `SystemClock`, `ManualClock`).
//! - `domain`: plain data and fixed ids.
//! - `planner`: pure decisions (cron dialect; reconciler, lifecycle and GC plans).
//! - `gc`: the garbage collector's run (judge, warn, delete, orphan sweep).
//! - `lifecycle`: the lifecycle executor's write side (re-decide, enqueue), activity.
//! - `prebuilds`: creating, deleting and claiming prebuilt workspaces (write side).
//! - `retention`: prunes history older than `[retention]` allows, in batches.
//! - `store`: SQLite (one writer, read-only readers, migrations, the event outbox).
//! - `templates`: applies `[[templates]]` from the config to the database.
//! - `events`: the `Event` type and the publisher that delivers committed events.
//! - `loops`: reconciler, lifecycle and GC loops and their driver.
//! - `provisioner`: backends (local, exec) and the job runner that feeds them.
//! - `metrics`: the Prometheus registry.
//! - `auth`: who may do what (roles × resources × actions), pure.
//! - `http`: the hyper server (`/healthz`, `/readyz`, `/metrics`, the `/api/v1` JSON API,
//!   the SSE event stream).
//! - `webhooks`: signed webhook delivery with retries and dead letters.
//! - `app`: start-up and shutdown order.
//! - `signals`: SIGTERM/SIGINT/SIGHUP.
//! - `telemetry`: logging setup.
//! - `cli`: subcommands.
//!
//! See ARCHITECTURE.md for the invariants.

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
