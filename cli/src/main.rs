//! `sagalog`: the operator's command line. It works on a service's saga
//! database whether the service is stopped or running: it opens a stopped
//! service's database itself (actions are then recorded, and the service
//! carries them out at its next start), and talks to a running service
//! through its admin server (`DIR/admin.sock`, or `--admin`), where actions
//! take effect at once.
//!
//! Output is a human-readable table by default and JSON with `--json`: the
//! documents of the admin API (docs/ADMIN-API.md), whichever way the data
//! came. Exit status: 0 when the command did what it was asked, 1 when it
//! failed or `verify` found damaged values, 2 for bad arguments.

mod remote;
mod render;
mod service;

use clap::{CommandFactory, Parser, Subcommand};
use remote::{Remote, Target};
use sagalog::{
    Action, ActionRequest, Error, ListQuery, SagaId, SledOptions, SledStore, StoreError,
};
use service::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Inspect and act on a sagalog database, while its service is stopped or
/// while it runs.
#[derive(Parser, Debug)]
#[command(name = "sagalog", version)]
struct Cli {
    /// The database directory (the path the service passes to Engine::open).
    /// If the service runs, the tool uses its admin server at DIR/admin.sock.
    /// Or a PostgreSQL log: postgres://USER@HOST:PORT/DB, read while the
    /// service runs.
    #[arg(long, value_name = "DIR|URL", global = true)]
    db: Option<PathBuf>,
    /// With a PostgreSQL --db, the schema of sagalog's tables.
    #[arg(long, value_name = "NAME", global = true)]
    schema: Option<String>,
    /// A running service's admin server: unix:PATH or http://HOST:PORT.
    #[arg(long, value_name = "URL", global = true)]
    admin: Option<String>,
    /// The bearer token of an admin server on TCP.
    #[arg(long, value_name = "TOKEN", global = true)]
    token: Option<String>,
    /// Print JSON (one document per command) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Which sagas: the filters of `list`, also taken by `watch` and `bulk`.
#[derive(clap::Args, Debug, Clone, Default)]
struct Filter {
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
}

impl Filter {
    /// The filter as the API takes it; checked here so that a bad value is
    /// refused before anything is opened.
    fn query(&self) -> Result<ListQuery, Usage> {
        let query = ListQuery {
            status: self.status.clone(),
            saga_type: self.saga_type.clone(),
            started_after: self.started_after.clone(),
            started_before: self.started_before.clone(),
            unfinished_for: self.unfinished_for.clone(),
            key: self.key.clone(),
            ..ListQuery::default()
        };
        query.filter().map_err(|e| Usage(e.to_string()))?;
        Ok(query)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List sagas, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many; the last line then says how to ask for more.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Only sagas whose id comes after this one (the next page).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Show one saga: summary, why it waits, steps, and its full timeline.
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
    /// The delay queue: sagas asleep on a timer, soonest first.
    Delay,
    /// A list that refreshes until Ctrl-C.
    Watch {
        #[command(flatten)]
        filter: Filter,
        /// How often to refresh (e.g. 2s, 500ms).
        #[arg(long, value_name = "DURATION", default_value = "2s")]
        every: String,
        /// Stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
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
    /// Retry the failed forward step with a fresh retry budget, even after a permanent error.
    RetryStep {
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
    /// One action on every saga a filter accepts, e.g. after an incident:
    /// `bulk compensate-now --status suspended --dry-run --reason ...`.
    Bulk {
        /// compensate-now, retry-now, retry-step, cancel, abandon or mark-compensated.
        action: String,
        #[command(flatten)]
        filter: Filter,
        /// The step, for mark-compensated.
        #[arg(long, value_name = "STEP")]
        step: Option<String>,
        /// Only list the sagas the action would touch.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Counts per status, the oldest saga in flight, queue depths.
    Stats,
    /// The nodes sharing a PostgreSQL log: state, lease, sagas in flight.
    Nodes,
    /// Decode every stored value and report the damaged ones with their keys, what cannot be read, and acknowledged writes that are missing. Needs the service stopped.
    Verify,
    /// Repair a damaged database: rebuild its witness, set sled's snapshots aside, or copy every readable saga into DIR.salvaged. Never deletes the original. Needs the service stopped.
    Repair,
    /// Delete sagas finished longer ago than --older-than (their space is reused by new writes). Needs the service stopped.
    Sweep {
        /// Age of a finished saga to delete (e.g. 7d, 12h).
        #[arg(long, value_name = "DURATION", default_value = "7d")]
        older_than: String,
        /// Most sagas deleted per atomic write.
        #[arg(long, default_value_t = 256)]
        batch: usize,
    },
    /// Rewrite the database compactly, giving the space of deleted sagas back to the filesystem; shows the size before and after. Needs the service stopped.
    Compact,
    /// Print a shell completion script: `sagalog completions bash > /etc/bash_completion.d/sagalog`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Who acts and why: written into the saga's log with the action.
#[derive(clap::Args, Debug)]
struct Who {
    /// Why you act; recorded in the saga's log.
    #[arg(long)]
    reason: String,
    /// Who acts; recorded in the saga's log. Default: $USER, or for a
    /// running service the user the admin server sees on its socket.
    #[arg(long)]
    actor: Option<String>,
}

impl Who {
    /// The request, with the actor left empty for a running service to
    /// fill in from the connection.
    fn request(&self, live: bool, step: Option<String>) -> ActionRequest {
        let actor = match (&self.actor, live) {
            (Some(actor), _) => actor.clone(),
            (None, true) => String::new(),
            (None, false) => std::env::var("USER").unwrap_or_else(|_| "sagalog-cli".into()),
        };
        ActionRequest {
            actor,
            reason: self.reason.clone(),
            step,
        }
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

/// A failed command's document on stderr, with `--json`.
#[derive(serde::Serialize)]
struct CliError<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    exit_code: u8,
}

impl CliError<'_> {
    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| format!("{:?}", self.error))
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // With --json, a refused argument is a JSON error too.
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--json") => {
            let detail = e.to_string();
            let error = CliError {
                error: e.kind().to_string(),
                detail: Some(detail.trim()),
                exit_code: 2,
            };
            eprintln!("{}", error.json());
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
        let error = CliError {
            error: message,
            detail: None,
            exit_code: code,
        };
        eprintln!("{}", error.json());
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

fn locked(path: &std::path::Path) -> Failure {
    Failure(format!(
        "the database at {} is locked: a running process (probably the service) has it open, and it serves no admin socket at {}. \
         Start the service's admin server (Engine::serve_admin, feature admin-http) to act while it runs, name a server with --admin, \
         or stop the service. verify, repair, sweep and compact always need the service stopped.",
        path.display(),
        path.join("admin.sock").display()
    ))
}

fn db(cli: &Cli) -> Result<PathBuf, Usage> {
    cli.db.clone().ok_or_else(|| {
        Usage("name the database with --db DIR, or a running service's admin server with --admin unix:PATH or --admin http://HOST:PORT".into())
    })
}

/// The service behind `cli`: the admin server `--admin` names; else the
/// database opened here; else, when the database is locked by a running
/// service, the admin server on its socket.
async fn connect(cli: &Cli) -> Result<Service, Failed> {
    if let Some(admin) = &cli.admin {
        let target = Target::parse(admin).ok_or_else(|| {
            Usage(format!(
                "'{admin}' is not an admin server address; use unix:PATH or http://HOST:PORT"
            ))
        })?;
        return Ok(Service::Remote(Remote {
            target,
            token: cli.token.clone(),
        }));
    }
    if let Some(url) = pg_url(cli) {
        return Service::open_pg(&url, pg_options(cli)).await;
    }
    let path = db(cli)?;
    let opening = path.clone();
    let opened = tokio::task::spawn_blocking(move || SledStore::open(opening, sled_options()))
        .await
        .map_err(|e| Failure(format!("the open task failed: {e}")))?;
    match opened {
        Ok(store) => Ok(Service::open_local(store).await?),
        Err(StoreError::Locked { path: locked_path }) => {
            let socket = path.join("admin.sock");
            if socket.exists() {
                return Ok(Service::Remote(Remote {
                    target: Target::Unix(socket),
                    token: cli.token.clone(),
                }));
            }
            Err(locked(&locked_path).into())
        }
        Err(e) => Err(store_failure(e).into()),
    }
}

/// `--db` when it names a PostgreSQL database.
fn pg_url(cli: &Cli) -> Option<String> {
    let text = cli.db.as_ref()?.to_str()?;
    (text.starts_with("postgres://") || text.starts_with("postgresql://")).then(|| text.to_owned())
}

/// The store's options; to act, the tool joins the log as node
/// `sagalog-cli-$USER` (taking over from a run of its own that died) with a
/// short lease, so that a saga it took goes back soon if it is killed.
fn pg_options(cli: &Cli) -> sagalog::PgOptions {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let options = sagalog::PgOptions::default()
        .node_id(format!("sagalog-cli-{user}"))
        .take_over(true)
        .lease_ttl(Duration::from_secs(5));
    match &cli.schema {
        Some(schema) => options.schema(schema.clone()),
        None => options,
    }
}

/// The commands that work on the files themselves and need the service
/// stopped; `None` for the others.
async fn offline(cli: &Cli, out: &render::Output) -> Result<Option<ExitCode>, Failed> {
    if let Some(url) = pg_url(cli) {
        return match &cli.command {
            Command::Compact => Err(Failure(
                "compact is for a sled directory; on PostgreSQL, VACUUM reclaims the space of swept sagas".into(),
            )
            .into()),
            Command::Repair => Err(Failure(
                "repair is for a sled directory; a PostgreSQL log is repaired with the database's own backups and tools (run verify to see what is wrong)".into(),
            )
            .into()),
            Command::Nodes => {
                let store = sagalog::PgStore::connect(&url, pg_options(cli))
                    .await
                    .map_err(store_failure)?;
                let (nodes, unowned) = store.nodes().await.map_err(store_failure)?;
                out.nodes(&nodes, unowned);
                Ok(Some(ExitCode::SUCCESS))
            }
            Command::Verify => {
                let store = sagalog::PgStore::connect(&url, pg_options(cli))
                    .await
                    .map_err(store_failure)?;
                let report = sagalog::store::LogStore::verify(&store)
                    .await
                    .map_err(store_failure)?;
                out.verify(&report);
                Ok(Some(match report.is_clean() {
                    true => ExitCode::SUCCESS,
                    false => ExitCode::FAILURE,
                }))
            }
            _ => Ok(None),
        };
    }
    match &cli.command {
        Command::Nodes => Err(Failure(
            "nodes lists the nodes that share a PostgreSQL log (--db postgres://...); a sled directory is written by one process".into(),
        )
        .into()),
        Command::Compact => {
            let path = db(cli)?;
            let compacted =
                tokio::task::spawn_blocking(move || SledStore::compact(&path, sled_options()))
                    .await
                    .map_err(|e| Failure(format!("the compaction task failed: {e}")))?;
            out.compacted(&compacted.map_err(store_failure)?);
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Verify => {
            // Opened for inspection: lost writes are reported, not refused,
            // and nothing is written.
            let path = db(cli)?;
            let report = tokio::task::spawn_blocking(move || {
                let store = SledStore::open_for_inspection(&path, sled_options())?;
                sagalog::tools::verify(&store)
            })
            .await
            .map_err(|e| Failure(format!("the verify task failed: {e}")))?
            .map_err(store_failure)?;
            out.verify(&report);
            Ok(Some(match report.is_clean() {
                true => ExitCode::SUCCESS,
                false => ExitCode::FAILURE,
            }))
        }
        Command::Repair => {
            let path = db(cli)?;
            let report =
                tokio::task::spawn_blocking(move || sagalog::tools::repair(&path, sled_options()))
                    .await
                    .map_err(|e| Failure(format!("the repair task failed: {e}")))?
                    .map_err(store_failure)?;
            out.repaired(&report);
            Ok(Some(ExitCode::SUCCESS))
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "sagalog", &mut std::io::stdout());
            Ok(Some(ExitCode::SUCCESS))
        }
        _ => Ok(None),
    }
}

// Long on purpose: one arm per command, each a few lines of the same shape.
async fn run(cli: Cli) -> Result<ExitCode, Failed> {
    let out = render::Output { json: cli.json };
    if let Some(code) = offline(&cli, &out).await? {
        return Ok(code);
    }
    let service = connect(&cli).await?;
    let live = service.is_live();
    let carried = service.carried();
    let act = |id: &str, action: Action, who: &Who, step: Option<String>| {
        let id = saga_id(id);
        let request = who.request(live, step);
        let service = &service;
        async move { service.act(id?, action, &request).await }
    };
    let result = match &cli.command {
        Command::List {
            filter,
            limit,
            after,
        } => {
            let mut query = filter.query()?;
            query.limit = *limit;
            query.after = after.clone();
            query.filter().map_err(|e| Usage(e.to_string()))?;
            let page = service.list(&query).await?;
            out.list(&page);
            Ok(())
        }
        Command::Show { saga, key } => {
            let id = match (saga, key) {
                (Some(saga), _) => saga_id(saga)?,
                (None, Some(key)) => service.by_key(key).await?,
                (None, None) => return Err(Usage("name a saga id or --key".into()).into()),
            };
            out.show(&service.detail(id).await?, service.now());
            Ok(())
        }
        Command::Manual => {
            out.manual(&service.manual().await?);
            Ok(())
        }
        Command::Delay => {
            out.delay(&service.delay().await?, service.now());
            Ok(())
        }
        Command::Watch {
            filter,
            every,
            count,
        } => {
            let every = duration(every)?;
            let query = filter.query()?;
            let mut shown = 0u64;
            loop {
                let page = service.list(&query).await?;
                if !cli.json {
                    print!("\x1b[2J\x1b[H");
                    println!(
                        "sagalog watch, every {} (Ctrl-C stops)\n",
                        humantime::format_duration(every)
                    );
                }
                out.list(&page);
                shown += 1;
                if count.is_some_and(|n| shown >= n) {
                    break Ok(());
                }
                tokio::time::sleep(every).await;
            }
        }
        Command::Resolve {
            saga,
            steps,
            abandon,
            who,
        } => {
            let mut done = Vec::new();
            if *abandon {
                done.push(act(saga, Action::Abandon, who, None).await?);
            }
            for step in steps {
                done.push(act(saga, Action::MarkCompensated, who, Some(step.clone())).await?);
            }
            out.acted(&done, carried);
            Ok(())
        }
        Command::Retry { saga, who } => {
            one(&out, act(saga, Action::RetryNow, who, None).await, carried)
        }
        Command::RetryStep { saga, who } => {
            one(&out, act(saga, Action::RetryStep, who, None).await, carried)
        }
        Command::Compensate { saga, who } => one(
            &out,
            act(saga, Action::CompensateNow, who, None).await,
            carried,
        ),
        Command::Cancel { saga, who } => {
            one(&out, act(saga, Action::Cancel, who, None).await, carried)
        }
        Command::Bulk {
            action,
            filter,
            step,
            dry_run,
            who,
        } => {
            let action = Action::parse(action).map_err(|e| Usage(e.to_string()))?;
            let bulk = sagalog::api::BulkRequest {
                filter: filter.query()?,
                dry_run: *dry_run,
                request: who.request(live, step.clone()),
            };
            out.bulk(&service.bulk(action, &bulk).await?);
            Ok(())
        }
        Command::Stats => {
            out.stats(&service.stats().await?);
            Ok(())
        }
        Command::Sweep { older_than, batch } => {
            let age = duration(older_than)?;
            match &service {
                Service::Local { engine, store } => {
                    let before = store.size_on_disk()?;
                    let report = engine.sweep_finished(age, *batch).await?;
                    let after = store.size_on_disk()?;
                    out.sweep(&report, before, after);
                    Ok(())
                }
                Service::Remote(_) | Service::Database { .. } => Err(Failure(
                    "sweep needs a stopped service's sled directory (it reports the size on disk); the service's own retention (EngineConfig::retention) sweeps while it runs".into(),
                )
                .into()),
            }
        }
        Command::Compact
        | Command::Verify
        | Command::Repair
        | Command::Nodes
        | Command::Completions { .. } => Ok(()),
    };
    service.close().await;
    result.map(|()| ExitCode::SUCCESS)
}

/// Prints one action's result.
fn one(
    out: &render::Output,
    done: Result<sagalog::api::ActionDone, Failed>,
    carried: render::Carried,
) -> Result<(), Failed> {
    out.acted(&[done?], carried);
    Ok(())
}
