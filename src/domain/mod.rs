//! Plain domain data shared by the planner, the store and the API: fixed ids and the
//! vocabulary of the schema.
//!
//! No IO and no clock: values only.

/// The organization every installation has (created by the first migration).
pub const DEFAULT_ORGANIZATION_ID: &str = "00000000-0000-0000-0000-000000000001";

/// The system user that owns every unclaimed prebuild (Coder uses the same id).
pub const PREBUILDS_USER_ID: &str = "c42fdf75-3097-471c-8c33-fb52454d81c0";
