//! The daemon's configuration: built-in defaults, then one TOML file, then `WORKSPACED_*`
//! environment variables (`WORKSPACED_<SECTION>__<KEY>`), merged by figment into `Config`.
//!
//! Owns loading, typed defaults and validation. Every error names the key, the value where
//! there is one, and the source (file path or environment variable). It must not touch the
//! database or start anything: a config is checked completely before it is used.
//!
//! `schema` is the shape with its defaults, `load` merges the sources and reports errors
//! with file, line and key path, `validate` checks ranges and relations of every section,
//! `templates` the `[[templates]]` declarations, `container` the container backend's
//! section and a container template's workspace description, `duration` the `15s` / `72h30m` parser.

pub mod container;
pub mod duration;
pub mod load;
pub mod schema;
pub mod templates;
mod validate;

pub use load::{ConfigError, ConfigSource, DEFAULT_CONFIG_PATH, ENV_PREFIX, load};
pub use schema::*;

#[cfg(test)]
mod tests;
