//! The one integration-test binary. Each module drives the real thing: the `workspaced`
//! binary as a child process, or the library on a real SQLite file, over real HTTP on
//! loopback.

// A failed unwrap is a failed test with its location: exactly what a test wants.
#![allow(clippy::unwrap_used)]

mod admin;
mod api;
mod bad_input;
mod bench;
mod binary;
mod candidates;
mod cli;
mod client;
mod containers;
mod daemon;
mod fixtures;
mod gc;
mod helpers;
mod hostile;
mod lifecycle;
mod operations;
mod outbox;
mod page;
mod plan;
mod prebuilds;
mod provisioner;
mod proxy;
mod reliability;
mod stream;
mod systemd;
mod templates;
mod tidy;
