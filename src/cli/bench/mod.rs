//! `workspaced bench seed|run`: the fleet-scale benchmark as one command. `seed` writes a
//! deterministic data directory and its config through the daemon's own code paths; `run`
//! measures the daemon's paths on it and prints one table (or `--json`). Figures, never
//! assertions: CI runs it at a small size as a smoke test.

pub mod http;
pub mod run;
pub mod seed;

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::CliError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Run(String),
}

impl BenchError {
    pub fn io(path: &Path, source: std::io::Error) -> BenchError {
        BenchError::Io { path: path.to_path_buf(), source }
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Write a seeded data directory and its config (`DIR/workspaced.toml`, `DIR/token`).
    Seed {
        #[arg(long, default_value_t = 1_000)]
        presets: usize,
        #[arg(long, default_value_t = 10_000)]
        workspaces: usize,
        #[arg(long, default_value_t = 4)]
        builds_per_workspace: usize,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Measure a seeded directory: reconcile cycle, lifecycle ticks, GC selection,
    /// /metrics, RSS of `serve` and claims over HTTP.
    Run {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Print `{"size": …, "rows": [{"path", "median_ms", "min_ms", "max_ms", "floor_ms", …}]}`.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 11)]
        iterations: usize,
        /// Reconcile cycles of `serve` to sample RSS and scrape /metrics over.
        #[arg(long, default_value_t = 20)]
        cycles: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 3_000)]
        claims: usize,
    },
}

pub fn bench(command: BenchCommand) -> Result<(), CliError> {
    let failed = |error: BenchError| match error {
        BenchError::Input(message) => CliError::Input(message),
        other => CliError::Bench(other),
    };
    match command {
        BenchCommand::Seed { presets, workspaces, builds_per_workspace, out } => {
            let args = seed::SeedArgs { presets, workspaces, builds_per_workspace, out };
            let started = std::time::Instant::now();
            let now = crate::clock::Clock::now(&crate::clock::SystemClock);
            let info = seed::seed(&args, now).map_err(failed)?;
            super::print(&format!(
                "seeded {} presets ({} prebuilds each), {} workspaces, {} builds each into {} in {:.1} s; \
                 {} autostops due at {}",
                info.presets,
                info.prebuilds_per_preset,
                info.workspaces,
                info.builds_per_workspace,
                args.out.display(),
                started.elapsed().as_secs_f64(),
                info.due,
                info.due_at.to_rfc3339(),
            ))
        }
        BenchCommand::Run { dir, json, iterations, cycles, clients, claims } => {
            let args = run::RunArgs { dir, json, iterations, cycles, clients, claims };
            let report = run::run(&args).map_err(failed)?;
            if args.json {
                super::print_json(&report)
            } else {
                super::print(run::table(&report).trim_end())
            }
        }
    }
}
