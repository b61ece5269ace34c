//! Seeding the database through the library's store functions, and waiting for jobs.

use std::collections::BTreeMap;
use std::time::Duration;

use workspaced::domain::event::BuildRef;
use workspaced::domain::parameters::ParameterSpec;
use workspaced::domain::{
    BuildReason, DEFAULT_ORGANIZATION_ID, JobStatus, ParameterType, Transition,
};
use workspaced::store::builds::{self, BuildRequest};
use workspaced::store::templates::{self, TemplateOptions, VersionSpec};
use workspaced::store::workspaces::{self, NewWorkspace};
use workspaced::store::{Store, StoreError, jobs, users};

use crate::helpers::start_time;

/// A template with one active version on `provisioner`; returns (template id, version id).
pub fn template(
    store: &Store,
    name: &str,
    provisioner: &str,
    parameters: &[ParameterSpec],
) -> (String, String) {
    let (name, provisioner, parameters) =
        (name.to_owned(), provisioner.to_owned(), parameters.to_vec());
    store
        .write_blocking(|tx| {
            let template_id = templates::insert_template(
                tx,
                DEFAULT_ORGANIZATION_ID,
                &name,
                &provisioner,
                &TemplateOptions::default(),
                start_time(),
            )?;
            let spec = VersionSpec {
                name: format!("{name}-v1"),
                content_hash: "hash-1".to_owned(),
                provisioner: provisioner.clone(),
                provisioner_config: serde_json::json!({}),
                parameters,
            };
            let version_id =
                templates::insert_active_version(tx, &template_id, &spec, start_time())?;
            Ok::<_, StoreError>((template_id, version_id))
        })
        .unwrap()
}

pub fn parameter(name: &str, default: &str, mutable: bool) -> ParameterSpec {
    ParameterSpec {
        name: name.to_owned(),
        kind: ParameterType::String,
        mutable,
        default_value: Some(default.to_owned()),
        options: Vec::new(),
        description: String::new(),
    }
}

pub fn user(store: &Store, name: &str) -> String {
    let name = name.to_owned();
    store.write_blocking(|tx| users::insert(tx, &name, start_time())).unwrap()
}

pub fn workspace(store: &Store, owner_id: &str, template_id: &str, name: &str) -> String {
    let new = NewWorkspace {
        organization_id: DEFAULT_ORGANIZATION_ID.to_owned(),
        owner_id: owner_id.to_owned(),
        template_id: template_id.to_owned(),
        preset_id: None,
        name: name.to_owned(),
        autostart_schedule: None,
        ttl_s: None,
        automatic_updates_always: false,
    };
    store.write_blocking(|tx| workspaces::insert(tx, &new, start_time())).unwrap()
}

pub fn enqueue(store: &Store, request: BuildRequest) -> BuildRef {
    enqueue_at(store, request, start_time())
}

pub fn enqueue_at(
    store: &Store,
    request: BuildRequest,
    at: chrono::DateTime<chrono::Utc>,
) -> BuildRef {
    store.write_blocking(|tx| builds::enqueue(tx, &request, at)).unwrap().build
}

pub fn build(
    store: &Store,
    workspace_id: &str,
    transition: Transition,
    owner_id: &str,
) -> BuildRef {
    enqueue(store, BuildRequest::new(workspace_id, transition, BuildReason::Initiator, owner_id))
}

/// Waits until the job is finished; returns its status and error.
pub async fn finished(store: &Store, job_id: &str) -> (JobStatus, Option<String>) {
    status_where(store, job_id, JobStatus::is_terminal, Duration::from_secs(30)).await
}

/// Waits until the job's status satisfies `done`.
pub async fn status_where(
    store: &Store,
    job_id: &str,
    done: fn(JobStatus) -> bool,
    timeout: Duration,
) -> (JobStatus, Option<String>) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let id = job_id.to_owned();
        let (status, error) =
            store.read(move |conn| jobs::status(conn, &id)).await.unwrap().unwrap();
        if done(status) {
            return (status, error);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job_id} still {status} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn logs(store: &Store, job_id: &str) -> Vec<String> {
    let id = job_id.to_owned();
    store
        .read_blocking(move |conn| jobs::logs(conn, &id))
        .unwrap()
        .into_iter()
        .map(|line| format!("{} {}: {}", line.level, line.stage, line.output))
        .collect()
}

pub fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The job's status right now.
pub fn status_now(store: &Store, job_id: &str) -> JobStatus {
    let id = job_id.to_owned();
    store.read_blocking(move |conn| jobs::status(conn, &id)).unwrap().unwrap().0
}

/// The job's status and error right now.
pub fn status_now_with_error(store: &Store, job_id: &str) -> (JobStatus, Option<String>) {
    let id = job_id.to_owned();
    store.read_blocking(move |conn| jobs::status(conn, &id)).unwrap().unwrap()
}

/// Asserts that every workspace's latest-build summary (schema V2) matches its builds, and
/// every other invariant holds (`store::invariants`).
pub fn assert_latest_summaries_consistent(store: &Store) {
    let report =
        store.read_blocking(|conn| workspaced::store::invariants::check(conn, None)).unwrap();
    assert!(report.violations.is_empty(), "invariants broken: {:?}", report.violations);
}
