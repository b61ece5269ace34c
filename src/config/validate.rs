//! Validation: what types cannot say (ranges, relations between keys, names, URLs), for
//! every section, with the key path in each error.

use crate::domain::event::Event;

use super::load::{ConfigError, ConfigSource};
use super::schema::{Config, WebhookConfig};
use super::templates;

impl Config {
    /// Checks what types cannot: ranges and relations between keys.
    pub(super) fn validate(&self, source: &ConfigSource) -> Result<(), ConfigError> {
        let fail = |key: &str, reason: String| ConfigError {
            source_name: source.describe(),
            line: None,
            key: Some(key.to_owned()),
            reason,
        };
        let at_least_one_second = [
            ("reconciler.interval", self.reconciler.interval),
            ("lifecycle.interval", self.lifecycle.interval),
            ("gc.interval", self.gc.interval),
            ("retention.interval", self.retention.interval),
            ("outbox.poll_interval", self.outbox.poll_interval),
            ("provisioner.job_timeout", self.provisioner.job_timeout),
            ("provisioner.poll_interval", self.provisioner.poll_interval),
            ("provisioner.orphan_check_interval", self.provisioner.orphan_check_interval),
        ];
        for (key, value) in at_least_one_second {
            if value.as_secs() < 1 {
                return Err(fail(key, format!("{value} is too short; use at least 1s")));
            }
        }
        if !(1..=100_000).contains(&self.retention.batch_size) {
            return Err(fail(
                "retention.batch_size",
                format!("{} is out of range; use 1 to 100000", self.retention.batch_size),
            ));
        }
        let retention = &self.retention;
        for (key, value) in [
            ("retention.events", retention.events),
            ("retention.job_logs", retention.job_logs),
            ("retention.audit_log", retention.audit_log),
            ("retention.deliveries", retention.deliveries),
            ("retention.deleted_workspaces", retention.deleted_workspaces),
            ("retention.failed_prebuilds", retention.failed_prebuilds),
        ] {
            if value.as_secs() < 3_600 {
                return Err(fail(key, format!("{value} is too short; keep history at least 1h")));
            }
        }
        if self.gc.ttl.as_secs() < templates::MIN_GC_TTL_SECS {
            return Err(fail("gc.ttl", templates::gc_ttl_too_short(self.gc.ttl)));
        }
        if self.server.loop_stall_timeout.as_secs() < 1 {
            return Err(fail("server.loop_stall_timeout", "must be at least 1s".to_owned()));
        }
        if self.server.header_read_timeout.as_secs() < 1 {
            return Err(fail("server.header_read_timeout", "must be at least 1s".to_owned()));
        }
        if !(16..=1_000_000).contains(&self.server.max_connections) {
            return Err(fail(
                "server.max_connections",
                format!("{} is out of range; use 16 to 1000000", self.server.max_connections),
            ));
        }
        if self.server.shutdown_grace.as_secs() < 1 {
            return Err(fail("server.shutdown_grace", "must be at least 1s".to_owned()));
        }
        if !(1..=64).contains(&self.storage.read_connections) {
            return Err(fail(
                "storage.read_connections",
                format!("{} is out of range; use 1 to 64", self.storage.read_connections),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(fail("storage.data_dir", "must not be empty".to_owned()));
        }
        if !(1..=10_000).contains(&self.outbox.batch_size) {
            return Err(fail(
                "outbox.batch_size",
                format!("{} is out of range; use 1 to 10000", self.outbox.batch_size),
            ));
        }
        if !(1..=256).contains(&self.lifecycle.concurrency) {
            return Err(fail(
                "lifecycle.concurrency",
                format!("{} is out of range; use 1 to 256", self.lifecycle.concurrency),
            ));
        }
        let provisioner = &self.provisioner;
        if !(1..=256).contains(&provisioner.concurrency) {
            return Err(fail(
                "provisioner.concurrency",
                format!("{} is out of range; use 1 to 256", provisioner.concurrency),
            ));
        }
        if !(provisioner.prebuild_share > 0.0 && provisioner.prebuild_share <= 1.0) {
            return Err(fail(
                "provisioner.prebuild_share",
                format!(
                    "{} is out of range; use a fraction above 0 and at most 1",
                    provisioner.prebuild_share
                ),
            ));
        }
        if provisioner.max_log_bytes < 1024 {
            return Err(fail("provisioner.max_log_bytes", "must be at least 1024".to_owned()));
        }
        for (name, exec) in &provisioner.exec {
            let key = |field: &str| format!("provisioner.exec.{name}.{field}");
            if name == "local"
                || name == crate::config::container::CONTAINER_BACKEND
                || name.is_empty()
            {
                return Err(fail(
                    &format!("provisioner.exec.{name}"),
                    "this name is reserved for the built-in backend".to_owned(),
                ));
            }
            if exec.command.as_os_str().is_empty() {
                return Err(fail(&key("command"), "must not be empty".to_owned()));
            }
            if exec.max_output_bytes < 1024 {
                return Err(fail(&key("max_output_bytes"), "must be at least 1024".to_owned()));
            }
        }
        provisioner.container.check().map_err(|(key, reason)| fail(key, reason))?;
        if !(1..=10_000).contains(&self.reconciler.max_queued_creates) {
            return Err(fail(
                "reconciler.max_queued_creates",
                format!("{} is out of range; use 1 to 10000", self.reconciler.max_queued_creates),
            ));
        }
        let max_instances = self.reconciler.max_instances_per_preset;
        if max_instances > 10_000 {
            return Err(fail(
                "reconciler.max_instances_per_preset",
                format!("{max_instances} is out of range; use at most 10000"),
            ));
        }
        let exec_profiles = self.provisioner.exec.keys().cloned().collect();
        templates::validate(&self.templates, &exec_profiles, max_instances)
            .map_err(|problem| fail(&problem.key, problem.reason))?;
        if !(1024..=(64 << 20)).contains(&self.api.max_body_bytes) {
            return Err(fail(
                "api.max_body_bytes",
                format!("{} is out of range; use 1024 to 67108864", self.api.max_body_bytes),
            ));
        }
        if !(1..=100_000).contains(&self.api.rate_limit) {
            return Err(fail(
                "api.rate_limit",
                format!(
                    "{} is out of range; use 1 to 100000 requests per second",
                    self.api.rate_limit
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.api.rate_burst) {
            return Err(fail(
                "api.rate_burst",
                format!("{} is out of range; use 1 to 1000000", self.api.rate_burst),
            ));
        }
        if !(1..=1024).contains(&self.api.max_streams_per_token) {
            return Err(fail(
                "api.max_streams_per_token",
                format!("{} is out of range; use 1 to 1024", self.api.max_streams_per_token),
            ));
        }
        if self.api.events_keepalive.as_secs() < 1 {
            return Err(fail("api.events_keepalive", "must be at least 1s".to_owned()));
        }
        let mut webhook_names = std::collections::BTreeSet::new();
        for (index, webhook) in self.webhooks.iter().enumerate() {
            let key = |field: &str| format!("webhooks[{index}].{field}");
            if let Err(reason) = check_webhook(webhook) {
                return Err(fail(&key(reason.field), reason.reason));
            }
            if !webhook_names.insert(webhook.name.as_str()) {
                return Err(fail(
                    &key("name"),
                    format!("duplicate webhook name {:?}", webhook.name),
                ));
            }
        }
        if self.log.file.max_files == 0 {
            return Err(fail("log.file.max_files", "must be at least 1".to_owned()));
        }
        if let Err(error) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(fail("log.level", format!("invalid filter {:?}: {error}", self.log.level)));
        }
        Ok(())
    }
}

/// A config problem: the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invalid {
    field: &'static str,
    reason: String,
}

/// Checks one `[[webhooks]]` entry.
fn check_webhook(webhook: &WebhookConfig) -> Result<(), Invalid> {
    let invalid = |field, reason: String| Err(Invalid { field, reason });
    if webhook.name.is_empty()
        || !webhook.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return invalid(
            "name",
            format!("{:?} is not a valid name; use letters, digits, - and _", webhook.name),
        );
    }
    match webhook.url.parse::<hyper::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {}
        Ok(uri) if uri.scheme_str() == Some("https") => {
            return invalid(
                "url",
                format!(
                    "{:?}: https is not supported by the built-in client; use an http:// receiver on this host or a local TLS relay",
                    webhook.url
                ),
            );
        }
        _ => {
            return invalid(
                "url",
                format!("{:?} is not an http://host[:port]/path URL", webhook.url),
            );
        }
    }
    if webhook.secret.len() < 16 {
        return invalid("secret", "must be at least 16 characters".to_owned());
    }
    for filter in &webhook.events {
        let known = match filter.strip_suffix(".*") {
            Some(family) => Event::KINDS.iter().any(|kind| kind.split('.').next() == Some(family)),
            None => Event::KINDS.contains(&filter.as_str()),
        };
        if !known {
            return invalid(
                "events",
                format!(
                    "unknown event kind {filter:?}; expected one of: {}",
                    Event::KINDS.join(", ")
                ),
            );
        }
    }
    if !(1..=100).contains(&webhook.max_attempts) {
        return invalid(
            "max_attempts",
            format!("{} is out of range; use 1 to 100", webhook.max_attempts),
        );
    }
    if webhook.initial_backoff.as_secs() < 1 {
        return invalid("initial_backoff", "must be at least 1s".to_owned());
    }
    if webhook.max_backoff.as_secs() < webhook.initial_backoff.as_secs() {
        return invalid("max_backoff", "must not be shorter than initial_backoff".to_owned());
    }
    if webhook.timeout.as_secs() < 1 {
        return invalid("timeout", "must be at least 1s".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> WebhookConfig {
        WebhookConfig::example()
    }

    #[test]
    fn webhook_validation_names_the_field() {
        let mut bad = webhook();
        bad.url = "https://example.com/x".into();
        assert_eq!(check_webhook(&bad).unwrap_err().field, "url");
        let mut bad = webhook();
        bad.events = vec!["build.exploded".into()];
        assert_eq!(check_webhook(&bad).unwrap_err().field, "events");
        let mut bad = webhook();
        bad.secret = "short".into();
        assert_eq!(check_webhook(&bad).unwrap_err().field, "secret");
        assert!(check_webhook(&webhook()).is_ok());
    }
}
