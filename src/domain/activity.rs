//! Where activity on a workspace comes from.
//!
//! Values only. `ActivitySource` is stored beside `last_used_at` (`workspaces.
//! last_used_source`) so an operator sees why a workspace counts as active.

use strum::{Display, EnumString, IntoStaticStr, VariantArray};

use crate::domain::text::{self, UnknownVariant};

/// What reported a workspace's last use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, VariantArray, Display,
)]
#[strum(serialize_all = "lowercase")]
#[strum(parse_err_ty = UnknownVariant, parse_err_fn = text::unknown::<Self>)]
pub enum ActivitySource {
    /// `POST /api/v1/workspaces/{id}/activity` (an agent, a script).
    Api,
    /// A request or WebSocket data through the daemon's app proxy.
    Proxy,
    /// Connections the backend saw on the workspace's ports (bypassing the proxy).
    Backend,
}

crate::text_enums! {
    ActivitySource => "activity source",
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TextEnum;

    #[test]
    fn sources_round_trip_through_their_strings() {
        for source in ActivitySource::ALL {
            assert_eq!(source.as_str().parse::<ActivitySource>(), Ok(*source));
        }
        assert_eq!(ActivitySource::Proxy.as_str(), "proxy");
        let error = "agent".parse::<ActivitySource>().unwrap_err().to_string();
        assert!(error.contains("api") && error.contains("backend"), "{error}");
    }
}
