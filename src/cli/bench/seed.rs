//! `workspaced bench seed`: a deterministic fleet written through the daemon's own code
//! paths (template sync, prebuild creation, claims, builds enqueued and completed by the
//! job state machine, dormancy), with the config that matches it, so `serve` on the
//! directory finds every pool full and nothing due.
//!
//! The shape, for P presets and W workspaces (W ≥ P): templates of 10 presets each, every
//! template with two versions (an older one some people's workspaces still run); 60 % of W
//! are prebuilds (the same count per preset, every fourth preset scaled by a schedule in a
//! time zone that keeps the same count; presets ask for 4 CPUs, so a person's workspace on
//! the defaults is built, not claimed), of which one per preset in ten is running but not
//! ready; every tenth preset has a failed, deleted prebuild in its history and every fifth
//! a claimed one. The rest are people's workspaces with B builds each (start/stop, one in
//! eight with a failed start retried), a third stopped, one in twenty of those dormant,
//! one in five with an autostart schedule 12 hours away; `due` (≤ 100) of the running ones
//! have a 2-hour TTL, so their autostop is due at `due_at`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Timelike, Utc};
use serde::{Deserialize, Serialize};

use crate::auth::Role;
use crate::config::ConfigSource;
use crate::domain::job::{JobOutcome, SuccessReport};
use crate::domain::{Agent, BuildReason, DEFAULT_ORGANIZATION_ID, PREBUILDS_USER_ID, Resource};
use crate::domain::{Transition, time};
use crate::pools::{self, ClaimRequest};
use crate::store::builds::{self, BuildRequest};
use crate::store::{Store, StoreError, WriteTx, jobs, lifecycle, presets, templates, users};

use super::BenchError;

pub const PRESETS_PER_TEMPLATE: usize = 10;
/// How many running workspaces get a short TTL, so a lifecycle tick has this much due.
pub const DUE: usize = 100;
const DUE_TTL_S: i64 = 2 * 3600;
/// Workspaces seeded per write transaction.
const CHUNK: usize = 500;

/// What `seed` wrote, read back by `run` (`seed.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedInfo {
    pub presets: usize,
    pub workspaces: usize,
    pub builds_per_workspace: usize,
    pub prebuilds_per_preset: usize,
    pub seeded_at: DateTime<Utc>,
    /// When the `due` short-TTL workspaces' autostop is due.
    pub due_at: DateTime<Utc>,
    pub due: usize,
    /// A `TEMPLATE/PRESET` for every preset, in seed order (claims spread over them).
    pub presets_by_name: Vec<String>,
}

pub struct SeedArgs {
    pub presets: usize,
    pub workspaces: usize,
    pub builds_per_workspace: usize,
    pub out: PathBuf,
}

pub fn template_name(index: usize) -> String {
    format!("t{index:05}")
}

/// The config the seeded directory runs with; `generation` 1 is the older version.
pub fn config_text(data_dir: &Path, info: &SeedInfo, generation: u8) -> String {
    let templates = info.presets.div_ceil(PRESETS_PER_TEMPLATE);
    let mut text = format!(
        "# Written by `workspaced bench seed`: {} presets, {} workspaces.\n\
         [server]\nlisten = \"127.0.0.1:0\"\n[storage]\ndata_dir = {:?}\n\
         [reconciler]\ninterval = \"1m\"\nmax_queued_creates = 64\n\
         [gc]\nenabled = true\nttl = \"336h\"\nbasis = \"last_activity\"\n\
         [provisioner.local]\nbuild_duration = \"1s\"\n",
        info.presets,
        info.workspaces,
        data_dir.display().to_string(),
    );
    for t in 0..templates {
        text.push_str(&format!(
            "\n[[templates]]\nname = \"{}\"\nprovisioner = \"local\"\ndefault_ttl = \"8h\"\n\
             time_til_dormant = \"720h\"\ntime_til_dormant_autodelete = \"720h\"\n\
             [[templates.parameters]]\nname = \"cpu\"\ntype = \"number\"\ndefault = \"{generation}\"\n",
            template_name(t)
        ));
        let first = t * PRESETS_PER_TEMPLATE;
        for p in first..(first + PRESETS_PER_TEMPLATE).min(info.presets) {
            text.push_str(&format!(
                "[[templates.presets]]\nname = \"p{}\"\nparameters = {{ cpu = \"4\" }}\n\
                 [templates.presets.prebuilds]\n\
                 instances = {}\nexpiration = \"7d\"\n",
                p - first,
                info.prebuilds_per_preset
            ));
            if p.is_multiple_of(4) {
                // A schedule that keeps the base count: evaluated every cycle, changes nothing.
                text.push_str(&format!(
                    "timezone = \"Europe/Berlin\"\n[[templates.presets.prebuilds.schedule]]\n\
                     cron = \"* 8-18 * * 1-5\"\ninstances = {}\n",
                    info.prebuilds_per_preset
                ));
            }
        }
    }
    text
}

pub fn seed(args: &SeedArgs, now: DateTime<Utc>) -> Result<SeedInfo, BenchError> {
    if args.presets == 0 || args.workspaces < args.presets {
        return Err(BenchError::Input(format!(
            "--workspaces ({}) must be at least --presets ({}), and --presets at least 1",
            args.workspaces, args.presets
        )));
    }
    if args.builds_per_workspace == 0 {
        return Err(BenchError::Input("--builds-per-workspace must be at least 1".into()));
    }
    let data_dir = args.out.join("data");
    if data_dir.exists() {
        return Err(BenchError::Input(format!(
            "--out {}: {} already exists; seed into a new directory",
            args.out.display(),
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(&data_dir).map_err(|e| BenchError::io(&data_dir, e))?;
    let data_dir = data_dir.canonicalize().map_err(|e| BenchError::io(&data_dir, e))?;
    let per = (args.workspaces * 6 / 10 / args.presets).max(1);
    let presets_by_name = (0..args.presets)
        .map(|p| {
            format!("{}/p{}", template_name(p / PRESETS_PER_TEMPLATE), p % PRESETS_PER_TEMPLATE)
        })
        .collect();
    let mut info = SeedInfo {
        presets: args.presets,
        workspaces: args.workspaces,
        builds_per_workspace: args.builds_per_workspace,
        prebuilds_per_preset: per,
        seeded_at: now,
        due_at: time::after(now, DUE_TTL_S.unsigned_abs()),
        due: 0,
        presets_by_name,
    };
    let config_path = args.out.join("workspaced.toml");
    let store = open(&config_path, &config_text(&data_dir, &info, 1))?;
    let people = args.workspaces.saturating_sub(per * args.presets);
    let (token, users) = store.write_blocking(|tx| {
        let bench = users::insert(tx, "bench", now)?;
        users::grant(tx, &bench, DEFAULT_ORGANIZATION_ID, Role::Owner, now)?;
        let token = users::create_token(tx, &bench, "bench", None, now)?.token;
        let users = (0..(people / 4).max(1))
            .map(|n| {
                let id = users::insert(tx, &format!("dev{n:05}"), now)?;
                users::grant(tx, &id, DEFAULT_ORGANIZATION_ID, Role::Member, now)?;
                Ok(id)
            })
            .collect::<Result<Vec<String>, StoreError>>()?;
        Ok::<_, StoreError>((token, users))
    })?;
    write_private(&args.out.join("token"), &token)?;
    // A quarter of the people's workspaces run the older version.
    let old = people / 4;
    let templates = |store: &Store| -> Result<Vec<String>, StoreError> {
        Ok(store.read_blocking(templates::live)?.into_iter().map(|t| t.id).collect())
    };
    let mut person = People {
        users: &users,
        templates: templates(&store)?,
        builds: args.builds_per_workspace,
        now,
        due: 0,
    };
    for chunk in (0..old).collect::<Vec<_>>().chunks(CHUNK) {
        store.write_blocking(|tx| chunk.iter().try_for_each(|&n| person.seed(tx, n)))?;
    }
    drop(store);
    let store = open(&config_path, &config_text(&data_dir, &info, 2))?;
    let preset_ids: Vec<String> = store.read_blocking(|conn| {
        info.presets_by_name
            .iter()
            .map(|name| {
                presets::resolve(conn, name, None)?.ok_or_else(|| StoreError::Corrupt {
                    what: format!("preset {name}"),
                    reason: "not synced from the seed config".into(),
                })
            })
            .collect()
    })?;
    for (chunk_index, chunk) in preset_ids.chunks(CHUNK / per.max(1) + 1).enumerate() {
        let first = chunk_index * (CHUNK / per.max(1) + 1);
        store.write_blocking(|tx| {
            chunk.iter().enumerate().try_for_each(|(offset, id)| {
                prebuilds(tx, first + offset, id, per, &users, time::before(now, 3600))
            })
        })?;
    }
    person.templates = templates(&store)?;
    for chunk in (old..people).collect::<Vec<_>>().chunks(CHUNK) {
        store.write_blocking(|tx| chunk.iter().try_for_each(|&n| person.seed(tx, n)))?;
    }
    info.due = person.due;
    let text = serde_json::to_string_pretty(&info).map_err(|e| BenchError::Run(e.to_string()))?;
    let path = args.out.join("seed.json");
    std::fs::write(&path, text).map_err(|e| BenchError::io(&path, e))?;
    Ok(info)
}

/// Writes the config, loads and validates it as `serve` does, opens (creates) the store
/// and syncs the templates.
fn open(config_path: &Path, text: &str) -> Result<Store, BenchError> {
    std::fs::write(config_path, text).map_err(|e| BenchError::io(config_path, e))?;
    let config = crate::config::load(&ConfigSource::resolve(Some(config_path)))
        .map_err(|e| BenchError::Run(e.to_string()))?;
    let (store, _) = Store::open(crate::app::store_options(&config.storage))?;
    let desired = crate::templates::desired(&config);
    let now = crate::clock::Clock::now(&crate::clock::SystemClock);
    store.write_blocking(|tx| crate::templates::apply(tx, &desired, now))?;
    Ok(store)
}

/// The owner token, readable by its owner only.
fn write_private(path: &Path, text: &str) -> Result<(), BenchError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| BenchError::io(path, e))?;
    std::io::Write::write_all(&mut file, format!("{text}\n").as_bytes())
        .map_err(|e| BenchError::io(path, e))
}

/// Runs the workspace's pending job to `ok` (a ready agent) or a failure, at `at`.
fn finish(
    tx: &mut WriteTx<'_>,
    ok: bool,
    ready: bool,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(job) = jobs::acquire(tx, "bench-seed", true, at)? else {
        return Err(StoreError::Corrupt { what: "seed".into(), reason: "no pending job".into() });
    };
    let outcome = if ok {
        JobOutcome::Succeeded(SuccessReport {
            resources: vec![Resource {
                name: "home".into(),
                kind: "directory".into(),
                agents: vec![Agent { name: "main".into(), ready }],
            }],
            ..SuccessReport::default()
        })
    } else {
        JobOutcome::Failed { error: "seeded failure".into(), code: "seed".into() }
    };
    jobs::complete(tx, &job.job_id, &outcome, at)?;
    Ok(())
}

fn corrupt(error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: "seed".into(), reason: error.to_string() }
}

/// One preset's pool: `per` prebuilds (one not ready in every tenth preset), plus a failed
/// and deleted prebuild in every tenth and a claimed one (refilled) in every fifth.
fn prebuilds(
    tx: &mut WriteTx<'_>,
    index: usize,
    preset_id: &str,
    per: usize,
    users: &[String],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let create = |tx: &mut WriteTx<'_>| {
        pools::create_prebuild(tx, preset_id, at)
            .map_err(corrupt)?
            .map(|queued| queued.build.workspace_id)
            .ok_or_else(|| corrupt(format!("preset {preset_id} is not active")))
    };
    if index % 10 == 3 {
        let id = create(tx)?;
        finish(tx, false, false, at)?;
        pools::delete_prebuild(tx, &id, at).map_err(corrupt)?;
        finish(tx, true, false, at)?;
    }
    let claimed = usize::from(index.is_multiple_of(5));
    for n in 0..per + claimed {
        create(tx)?;
        finish(tx, true, !(index % 10 == 7 && n == 0), at)?;
    }
    if claimed == 1 {
        let row = presets::preset_row(tx, preset_id)?.ok_or_else(|| corrupt("preset vanished"))?;
        let user = &users[index % users.len()];
        let request = ClaimRequest {
            user_id: user.clone(),
            template_id: row.template_id,
            preset_id: Some(preset_id.to_owned()),
            name: format!("claimed-{index}"),
            parameters: Default::default(),
            autostart_schedule: None,
            ttl_s: None,
        };
        match pools::claim(tx, &request, at).map_err(corrupt)? {
            pools::ClaimOutcome::Claimed { .. } => finish(tx, true, true, at)?,
            pools::ClaimOutcome::Built { .. } => {
                return Err(corrupt("the claim found no prebuild"));
            }
        }
    }
    debug_assert!(users.iter().all(|user| user != PREBUILDS_USER_ID));
    Ok(())
}

struct People<'a> {
    users: &'a [String],
    /// Template ids by seed index (`t00000` first).
    templates: Vec<String>,
    builds: usize,
    now: DateTime<Utc>,
    due: usize,
}

impl People<'_> {
    /// Person workspace `n` on template `n mod templates` (its active version), `builds`
    /// builds an hour apart ending now.
    fn seed(&mut self, tx: &mut WriteTx<'_>, n: usize) -> Result<(), StoreError> {
        let template_id = self.templates[n % self.templates.len()].clone();
        self.seed_on(tx, n, &template_id)
    }

    fn seed_on(
        &mut self,
        tx: &mut WriteTx<'_>,
        n: usize,
        template_id: &str,
    ) -> Result<(), StoreError> {
        let user = &self.users[n % self.users.len()];
        let stopped = n.is_multiple_of(3);
        // The last build is a stop when stopped, a start otherwise.
        let mut count = self.builds;
        if (count % 2 == 1) == stopped {
            count += 1;
        }
        let due = !stopped && self.due < DUE;
        let hour = (self.now.hour() + 12) % 24;
        let request = ClaimRequest {
            user_id: user.clone(),
            template_id: template_id.to_owned(),
            preset_id: None,
            name: format!("ws{n:06}"),
            parameters: Default::default(),
            autostart_schedule: (n.is_multiple_of(5))
                .then(|| format!("CRON_TZ=UTC 0 {hour} * * *")),
            ttl_s: due.then_some(DUE_TTL_S),
        };
        let at = |k: usize| time::before(self.now, ((count - 1 - k) * 3600) as u64);
        let outcome = pools::claim(tx, &request, at(0)).map_err(corrupt)?;
        let id = outcome.workspace_id().to_owned();
        if n % 8 == 1 {
            finish(tx, false, false, at(0))?;
            let retry = BuildRequest::new(&id, Transition::Start, BuildReason::Initiator, user);
            builds::enqueue(tx, &retry, at(0)).map_err(corrupt)?;
        }
        finish(tx, true, true, at(0))?;
        for k in 1..count {
            let transition = if k % 2 == 1 { Transition::Stop } else { Transition::Start };
            let request = BuildRequest::new(&id, transition, BuildReason::Initiator, user);
            builds::enqueue(tx, &request, at(k)).map_err(corrupt)?;
            finish(tx, true, true, at(k))?;
        }
        if stopped && n.is_multiple_of(20) {
            lifecycle::mark_dormant(tx, &id, self.now, 720 * 3600)?;
        }
        self.due += usize::from(due);
        Ok(())
    }
}
