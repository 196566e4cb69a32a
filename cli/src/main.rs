//! `sagalog`: the operator's command line. It opens a service's saga
//! database while the service is stopped (sled lets one process open a
//! database at a time), answers questions about it, and records operator
//! actions that the service carries out at its next start.
//!
//! Output is a human-readable table by default and JSON with `--json`.
//! Exit status: 0 when the command did what it was asked, 1 when it failed
//! or `verify` found damaged values, 2 for bad arguments.

mod render;

use clap::{Parser, Subcommand};
use sagalog::SledOptions;
use sagalog::{Engine, Error, SagaFilter, SagaId, SagaStatus, SledStore, StoreError, UnixMillis};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Inspect and act on a sagalog database while its service is stopped.
#[derive(Parser, Debug)]
#[command(name = "sagalog", version)]
struct Cli {
    /// The database directory (the path the service passes to Engine::open).
    #[arg(long, value_name = "DIR")]
    db: PathBuf,
    /// Print JSON (one document per command) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List sagas, oldest first.
    List {
        /// Only this status (e.g. suspended, compensated).
        #[arg(long)]
        status: Option<String>,
        /// Only this saga type.
        #[arg(long = "type", value_name = "TYPE")]
        saga_type: Option<String>,
        /// Only sagas started at or after this time (RFC 3339, e.g. 2026-11-21T08:00:00Z).
        #[arg(long, value_name = "TIME")]
        started_after: Option<String>,
        /// Only sagas started before this time (RFC 3339).
        #[arg(long, value_name = "TIME")]
        started_before: Option<String>,
        /// Only sagas not finished although they started this long ago (e.g. 10m, 2h, 7d).
        #[arg(long, value_name = "DURATION")]
        unfinished_for: Option<String>,
        /// Only the saga this idempotency key belongs to.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// Show one saga: summary, steps, and its full timeline.
    Show {
        /// The saga's id.
        #[arg(required_unless_present = "key", conflicts_with = "key")]
        saga: Option<String>,
        /// Find the saga by the idempotency key it was started with instead.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
    },
    /// The manual queue: sagas waiting for an operator.
    Manual,
    /// Resolve a manual item by hand: mark steps compensated, or abandon the saga.
    Resolve {
        /// The saga's id.
        saga: String,
        /// A step you compensated by hand (repeat for several); its compensation will not be called.
        #[arg(
            long = "step",
            value_name = "STEP",
            required_unless_present = "abandon"
        )]
        steps: Vec<String>,
        /// Give up: the saga ends FAILED and nothing more is compensated.
        #[arg(long, conflicts_with = "steps")]
        abandon: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Retry now what the saga waits for (a backoff, a scheduled compensation, a suspended step).
    Retry {
        /// The saga's id.
        saga: String,
        #[command(flatten)]
        who: Who,
    },
    /// Compensate now (also reopens a committed saga to undo every step).
    Compensate {
        /// The saga's id.
        saga: String,
        #[command(flatten)]
        who: Who,
    },
    /// Cancel a saga: no further forward step; compensation follows.
    Cancel {
        /// The saga's id.
        saga: String,
        #[command(flatten)]
        who: Who,
    },
    /// Counts per status, the oldest saga in flight, queue depths.
    Stats,
    /// Decode every stored value and report the damaged ones with their keys, what cannot be read, and acknowledged writes that are missing.
    Verify,
    /// Repair a damaged database: rebuild its witness, set sled's snapshots aside, or copy every readable saga into DIR.salvaged. Never deletes the original.
    Repair,
    /// Delete sagas finished longer ago than --older-than (their space is reused by new writes).
    Sweep {
        /// Age of a finished saga to delete (e.g. 7d, 12h).
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        older_than: String,
        /// Most sagas deleted per atomic write.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Rewrite the database compactly, giving the space of deleted sagas back to the filesystem; shows the size before and after.
    Compact,
}

/// Who acts and why: written into the saga's log with the action.
#[derive(clap::Args, Debug)]
struct Who {
    /// Why you act; recorded in the saga's log.
    #[arg(long)]
    reason: String,
    /// Who acts; recorded in the saga's log. Default: $USER.
    #[arg(long)]
    actor: Option<String>,
}

impl Who {
    fn actor(&self) -> String {
        self.actor
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "sagalog-cli".into())
    }
}

/// Why a command failed, in words for the operator.
#[derive(Debug)]
struct Failure(String);

/// An argument that is not what the command takes: exit status 2, as for
/// the arguments clap itself refuses.
#[derive(Debug)]
struct Usage(String);

/// A command's failure: exit status 1, or 2 for bad arguments.
#[derive(Debug)]
enum Failed {
    Command(Failure),
    Usage(Usage),
}

impl From<Failure> for Failed {
    fn from(f: Failure) -> Self {
        Failed::Command(f)
    }
}

impl From<Usage> for Failed {
    fn from(u: Usage) -> Self {
        Failed::Usage(u)
    }
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Command(Failure(e.to_string()))
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Self {
        Failed::Command(Failure(e.to_string()))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure(e.to_string())
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(e.to_string())
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // With --json, a refused argument is a JSON error too.
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--json") => {
            let message = e.kind().to_string();
            let detail = e.to_string();
            eprintln!(
                "{}",
                serde_json::json!({ "error": message, "detail": detail.trim(), "exit_code": 2 })
            );
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let (message, code) = match runtime.block_on(run(cli)) {
        Ok(code) => return code,
        Err(Failed::Command(Failure(message))) => (message, 1),
        Err(Failed::Usage(Usage(message))) => (message, 2),
    };
    if json {
        eprintln!(
            "{}",
            serde_json::json!({ "error": message, "exit_code": code })
        );
    } else {
        eprintln!("error: {message}");
    }
    ExitCode::from(code)
}

fn saga_id(text: &str) -> Result<SagaId, Usage> {
    SagaId::parse(text).ok_or_else(|| {
        Usage(format!(
            "'{text}' is not a saga id; ids look like 019a6c1e-8f00-7abc-9def-0123456789ab (see `sagalog list`)"
        ))
    })
}

fn duration(text: &str) -> Result<Duration, Usage> {
    humantime::parse_duration(text).map_err(|e| {
        Usage(format!(
            "'{text}' is not a duration ({e}); try 30s, 10m, 2h or 7d"
        ))
    })
}

fn time(text: &str) -> Result<UnixMillis, Usage> {
    let at = humantime::parse_rfc3339_weak(text).map_err(|e| {
        Usage(format!(
            "'{text}' is not a time ({e}); use RFC 3339, e.g. 2026-11-21T08:00:00Z"
        ))
    })?;
    UnixMillis::from_system_time(at).ok_or_else(|| Usage(format!("'{text}' is before 1970")))
}

fn status(text: &str) -> Result<SagaStatus, Usage> {
    SagaStatus::ALL
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(text))
        .ok_or_else(|| {
            let names: Vec<_> = SagaStatus::ALL.iter().map(|s| s.name()).collect();
            Usage(format!(
                "'{text}' is not a status; one of {}",
                names.join(", ")
            ))
        })
}

/// How the tool opens sled: never creating a database, and waiting only
/// briefly for a lock.
fn sled_options() -> SledOptions {
    SledOptions {
        lock_wait: Duration::from_millis(500),
        create: false,
        ..SledOptions::default()
    }
}

/// A store error in words for the operator.
fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Locked { path } => locked(&path),
        other => other.into(),
    }
}

async fn open(cli: &Cli) -> Result<(Engine, Arc<SledStore>), Failure> {
    let path = cli.db.clone();
    let opened = tokio::task::spawn_blocking(move || SledStore::open(path, sled_options()))
        .await
        .map_err(|e| Failure(format!("the open task failed: {e}")))?;
    let store = Arc::new(opened.map_err(store_failure)?);
    let engine = Engine::open_admin_with_store(store.clone()).await?;
    Ok((engine, store))
}

fn locked(path: &std::path::Path) -> Failure {
    Failure(format!(
        "the database at {} is locked: a running process (probably the service) has it open, and sled lets one process open it at a time. \
         Stop the service to use this tool, or act while it runs through the service's admin API \
         (Engine::manual_queue, Engine::compensate_now, Engine::retry_now, ...).",
        path.display()
    ))
}

async fn run(cli: Cli) -> Result<ExitCode, Failed> {
    let out = render::Output { json: cli.json };
    let path = cli.db.clone();
    match cli.command {
        Command::Compact => {
            let compacted =
                tokio::task::spawn_blocking(move || SledStore::compact(&path, sled_options()))
                    .await
                    .map_err(|e| Failure(format!("the compaction task failed: {e}")))?;
            out.compacted(&compacted.map_err(store_failure)?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Verify => {
            // Opened for inspection: lost writes are reported, not refused,
            // and nothing is written.
            let report = tokio::task::spawn_blocking(move || {
                let store = SledStore::open_for_inspection(&path, sled_options())?;
                sagalog::tools::verify(&store)
            })
            .await
            .map_err(|e| Failure(format!("the verify task failed: {e}")))?
            .map_err(store_failure)?;
            out.verify(&report);
            return Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Repair => {
            let report =
                tokio::task::spawn_blocking(move || sagalog::tools::repair(&path, sled_options()))
                    .await
                    .map_err(|e| Failure(format!("the repair task failed: {e}")))?
                    .map_err(store_failure)?;
            out.repaired(&report);
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let (engine, store) = open(&cli).await?;
    let code = match &cli.command {
        Command::List {
            status: wanted,
            saga_type,
            started_after,
            started_before,
            unfinished_for,
            key,
        } => {
            let mut filter = SagaFilter::new();
            if let Some(key) = key {
                filter = filter.idempotency_key(key.as_str());
            }
            if let Some(s) = wanted {
                filter = filter.status(status(s)?);
            }
            if let Some(t) = saga_type {
                filter = filter.saga_type(t.as_str());
            }
            if started_after.is_some() || started_before.is_some() {
                let from = started_after.as_deref().map(time).transpose()?;
                let before = started_before.as_deref().map(time).transpose()?;
                filter = filter.started_between(
                    from.unwrap_or(UnixMillis(0)),
                    before.unwrap_or(UnixMillis(u64::MAX)),
                );
            }
            if let Some(age) = unfinished_for {
                filter = filter.unfinished_for(duration(age)?);
            }
            let sagas = engine.find(&filter)?;
            let keys: Vec<Option<String>> = match cli.json {
                true => sagas
                    .iter()
                    .map(|s| engine.saga(s.saga_id).ok().and_then(|v| v.idempotency_key))
                    .collect(),
                false => Vec::new(),
            };
            out.list(&sagas, &keys);
            ExitCode::SUCCESS
        }
        Command::Show { saga, key } => {
            let id = match (saga, key) {
                (Some(saga), _) => saga_id(saga)?,
                (None, Some(key)) => engine.find_by_key(&key.as_str().into())?.map(|v| v.saga_id).ok_or_else(|| {
                    Failure(format!("no saga was started with idempotency key '{key}'; `sagalog list --json` shows each saga's key"))
                })?,
                (None, None) => return Err(Usage("name a saga id or --key".into()).into()),
            };
            let view = engine.saga(id)?;
            let history = engine.history(id)?;
            out.show(&view, &history);
            ExitCode::SUCCESS
        }
        Command::Manual => {
            out.manual(&engine.manual_queue()?);
            ExitCode::SUCCESS
        }
        Command::Resolve {
            saga,
            steps,
            abandon,
            who,
        } => {
            let id = saga_id(saga)?;
            let actor = who.actor();
            let mut done = Vec::new();
            if *abandon {
                engine.abandon(id, &actor, &who.reason).await?;
                done.push("abandon".to_string());
            }
            for step in steps {
                engine
                    .mark_compensated(id, step, &actor, &who.reason)
                    .await?;
                done.push(format!("mark_compensated {step}"));
            }
            out.recorded(id, &done, &actor);
            ExitCode::SUCCESS
        }
        Command::Retry { saga, who } => {
            let id = saga_id(saga)?;
            engine.retry_now(id, &who.actor(), &who.reason).await?;
            out.recorded(id, &["retry_now".into()], &who.actor());
            ExitCode::SUCCESS
        }
        Command::Compensate { saga, who } => {
            let id = saga_id(saga)?;
            engine.compensate_now(id, &who.actor(), &who.reason).await?;
            out.recorded(id, &["compensate_now".into()], &who.actor());
            ExitCode::SUCCESS
        }
        Command::Cancel { saga, who } => {
            let id = saga_id(saga)?;
            engine.cancel(id, &who.actor(), &who.reason).await?;
            out.recorded(id, &["cancel".into()], &who.actor());
            ExitCode::SUCCESS
        }
        Command::Stats => {
            out.stats(&engine.stats()?);
            ExitCode::SUCCESS
        }
        Command::Sweep { older_than, batch } => {
            let age = duration(older_than)?;
            let before = store.size_on_disk()?;
            let report = engine.sweep_finished(age, *batch).await?;
            let after = store.size_on_disk()?;
            out.sweep(&report, before, after);
            ExitCode::SUCCESS
        }
        Command::Compact | Command::Verify | Command::Repair => ExitCode::SUCCESS,
    };
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(code)
}
