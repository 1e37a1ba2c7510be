//! **`eventbus`: look into a SQLite or PostgreSQL log, and act on it.**
//!
//! The log is named by its first argument: a file path for SQLite, a
//! `postgres://` URL for PostgreSQL. Every command prints a table, or JSON
//! with `--json`. See the README's "Command-line tool" section.

mod error;
mod model;
mod output;
mod postgres;
mod sqlite;

use crate::error::{CliError, Result};
use crate::model::{EventRow, LetterFilter, LetterRow, Outcome};
use crate::output::{Progress, clip, json, json_line, table};
use clap::{Args, Parser, Subcommand};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Look into an eventbus log (a SQLite file or a PostgreSQL outbox) and act
/// on it: subscriptions and their lag, events, dead letters, quarantined
/// rows, pruning.
#[derive(Debug, Parser)]
#[command(name = "eventbus", version)]
struct Cli {
    /// The log: a SQLite file path, or a postgres:// URL.
    #[arg(env = "EVENTBUS_LOG", hide_env_values = true)]
    log: String,
    /// The outbox's schema, for a PostgreSQL log.
    #[arg(long, global = true, default_value = "eventbus")]
    schema: String,
    /// JSON for scripts instead of a table (JSON lines for `tail`).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Each subscription's position, the log's head, and the lag between.
    Subscriptions,
    /// The newest events, or a subscription's unfinished ones; `--follow`
    /// keeps printing new ones.
    Tail {
        /// Keep printing events as they are appended, until interrupted.
        #[arg(long, short)]
        follow: bool,
        /// Start at this subscription's position: the events it has not
        /// finished.
        #[arg(long)]
        subscription: Option<String>,
        /// Only events of this name; `*` matches any run of characters.
        #[arg(long)]
        name: Option<String>,
        /// At most this many events before following.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Dead letters: events a subscription gave up on.
    #[command(subcommand, name = "dead-letters")]
    DeadLetters(DeadLetterCommand),
    /// Rows that no longer decode, set aside for a subscription.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Deletes finished events (and on PostgreSQL old dead letters and
    /// quarantined rows) by the retention limits given.
    Prune {
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Finished events older than this go (`90s`, `30m`, `24h`, `7d`).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        max_age: Duration,
        /// Finished events beyond the newest this many go.
        #[arg(long, default_value_t = 1_000_000)]
        max_events: u64,
        /// PostgreSQL: dead letters and quarantined rows older than this go.
        #[arg(long, default_value = "30d", value_parser = parse_duration)]
        dead_letters_max_age: Duration,
    },
}

#[derive(Debug, Subcommand)]
enum DeadLetterCommand {
    /// Letters in id order, filtered.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only letters with an id above this (to page on).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// One letter in full: its event and every error.
    Show {
        /// The letter's id.
        id: u64,
    },
    /// Sends letters back to their subscription, which handles them again.
    Replay(Selection),
    /// Deletes letters without replaying them.
    Discard(Selection),
}

#[derive(Debug, Args)]
struct FilterArgs {
    /// Only this subscription's letters.
    #[arg(long)]
    subscription: Option<String>,
    /// Only events of this name; `*` matches any run of characters.
    #[arg(long)]
    name: Option<String>,
    /// Only letters whose errors contain this text (any case).
    #[arg(long)]
    error: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> LetterFilter {
        LetterFilter {
            subscription: self.subscription.clone(),
            name: self.name.clone(),
            error: self.error.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct Selection {
    /// The letters' ids.
    #[arg(
        required_unless_present = "all_matching",
        conflicts_with = "all_matching"
    )]
    ids: Vec<u64>,
    /// Every letter the filters match (all letters with no filter).
    #[arg(long)]
    all_matching: bool,
    #[command(flatten)]
    filter: FilterArgs,
    /// Do not ask before acting on more than one letter.
    #[arg(long, short)]
    yes: bool,
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// Quarantined rows, by subscription and position.
    List {
        /// Only this subscription's rows.
        #[arg(long)]
        subscription: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One quarantined row in full.
    Show {
        /// The subscription it was quarantined for.
        subscription: String,
        /// Its position in the log.
        position: u64,
    },
}

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write it as 90s, 30m, 24h or 7d"))?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 24 * 3600,
        _ => return Err(format!("`{text}` has an unknown unit; use s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// How often `tail --follow` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The log named on the command line.
#[derive(Debug)]
enum Log {
    Sqlite(sqlite::Sqlite),
    Postgres(postgres::Postgres),
}

impl Log {
    async fn open(log: &str, schema: &str) -> Result<Log> {
        if log.starts_with("postgres://") || log.starts_with("postgresql://") {
            Ok(Log::Postgres(postgres::Postgres::open(log, schema).await?))
        } else if log.contains("://") {
            Err(CliError::Usage(format!(
                "`{}` is neither a file path nor a postgres:// URL; name a SQLite log by its path or a PostgreSQL outbox by its URL",
                postgres::redact(log)
            )))
        } else {
            Ok(Log::Sqlite(sqlite::Sqlite::open(&PathBuf::from(log))?))
        }
    }

    async fn letters(
        &self,
        filter: &LetterFilter,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LetterRow>> {
        match self {
            Log::Sqlite(log) => log.letters(filter, after, limit),
            Log::Postgres(log) => log.letters(filter, after, limit).await,
        }
    }

    async fn count_letters(&self, filter: &LetterFilter) -> Result<u64> {
        match self {
            Log::Sqlite(log) => log.count_letters(filter),
            Log::Postgres(log) => log.count_letters(filter).await,
        }
    }
}

fn main() -> ExitCode {
    // A closed pipe (`eventbus events.db tail | head`) ends the tool
    // quietly, as other command-line tools end, not with a panic.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if text.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let mut message = err.to_string();
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.contains(&text) {
                    message.push_str(": ");
                    message.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("error: {message}");
            ExitCode::from(err.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let log = Log::open(&cli.log, &cli.schema).await?;
    let as_json = cli.json;
    match cli.command {
        Command::Subscriptions => subscriptions(&log, as_json).await,
        Command::Tail {
            follow,
            subscription,
            name,
            limit,
        } => {
            tail(
                &log,
                as_json,
                follow,
                subscription.as_deref(),
                name.as_deref(),
                limit,
            )
            .await
        }
        Command::DeadLetters(command) => dead_letters(&log, as_json, command).await,
        Command::Quarantine(command) => quarantine(&log, as_json, command).await,
        Command::Prune {
            dry_run,
            max_age,
            max_events,
            dead_letters_max_age,
        } => {
            let report = match &log {
                Log::Sqlite(log) => log.prune(max_age, max_events, dry_run)?,
                Log::Postgres(log) => {
                    let retention = eventbus::backend::postgres::Retention {
                        max_age,
                        max_events,
                        dead_letters_max_age,
                        ..Default::default()
                    };
                    log.prune(retention, dry_run).await?
                }
            };
            if as_json {
                json(&report);
            } else if report.skipped {
                println!("another process is pruning now; nothing was deleted");
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                println!(
                    "{verb} {} events, {} dead letters, {} quarantined rows",
                    report.events, report.dead_letters, report.quarantined
                );
            }
            Ok(())
        }
    }
}

async fn subscriptions(log: &Log, as_json: bool) -> Result<()> {
    let rows = match log {
        Log::Sqlite(log) => log.subscriptions()?,
        Log::Postgres(log) => log.subscriptions().await?,
    };
    if as_json {
        json(&rows);
        return Ok(());
    }
    let postgres = matches!(log, Log::Postgres(_));
    let mut header = vec!["SUBSCRIPTION"];
    if postgres {
        header.push("PARTITION");
    }
    header.extend(["POSITION", "HEAD", "LAG"]);
    if postgres {
        header.push("PARKED");
    }
    header.extend(["DEAD LETTERS", "QUARANTINED"]);
    if postgres {
        header.extend(["MEMBERS", "HOLDER", "LEASE UNTIL"]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![r.name.clone()];
            if postgres {
                row.push(r.partition.map_or("-".into(), |p| p.to_string()));
            }
            row.extend([
                r.position.to_string(),
                r.head.to_string(),
                r.lag.to_string(),
            ]);
            if postgres {
                row.push(r.parked.unwrap_or(0).to_string());
            }
            row.extend([r.dead_letters.to_string(), r.quarantined.to_string()]);
            if postgres {
                row.push(r.members.unwrap_or(0).to_string());
                row.push(r.holder.clone().unwrap_or_else(|| "(none)".into()));
                row.push(
                    r.lease_until
                        .map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
                );
            }
            row
        })
        .collect();
    table(&header, &cells, "no subscriptions have run on this log yet");
    if let Log::Sqlite(log) = log {
        match log.holder(Duration::ZERO)? {
            Some(holder) => println!("\nopen in {holder}"),
            None => println!("\nno process has the log open"),
        }
    }
    Ok(())
}

/// The event's own fields: its metadata (id, name, time) has columns of
/// its own in a table.
fn without_meta(payload: &serde_json::Value) -> serde_json::Value {
    let mut payload = payload.clone();
    if let Some(fields) = payload.as_object_mut() {
        fields.remove("meta");
    }
    payload
}

fn print_event(event: &EventRow, as_json: bool) {
    if as_json {
        json_line(event);
    } else {
        println!(
            "{:>8}  {}  {} v{}  {}  {}",
            event.position,
            event.time.format("%Y-%m-%d %H:%M:%S%.3f"),
            event.name,
            event.version,
            event.id,
            clip(&without_meta(&event.payload).to_string(), 200)
        );
    }
}

async fn tail(
    log: &Log,
    as_json: bool,
    follow: bool,
    subscription: Option<&str>,
    name: Option<&str>,
    limit: usize,
) -> Result<()> {
    let name_like = LetterFilter {
        name: name.map(str::to_owned),
        ..LetterFilter::default()
    }
    .name_like();
    let name_like = name_like.as_deref();
    let mut printed = 0usize;
    match log {
        Log::Sqlite(log) => {
            let (from, newest) = match subscription {
                Some(s) => (log.subscription_position(s)?, false),
                None => (0, true),
            };
            let events = log.events(from, name_like, limit, newest)?;
            let mut next = events.last().map_or(from, |e| e.position + 1);
            if newest && events.is_empty() {
                // Nothing shown (`--limit 0`, or no match): follow from
                // the end, not from the start of the log.
                next = log.head()?;
            }
            for event in &events {
                print_event(event, as_json);
            }
            printed += events.len();
            if follow {
                loop {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    for event in log.events(next, name_like, 500, false)? {
                        next = event.position + 1;
                        print_event(&event, as_json);
                    }
                }
            }
        }
        Log::Postgres(log) => {
            let (mut after, newest) = match subscription {
                Some(s) => (log.subscription_start(s).await?, false),
                None => (("0".to_owned(), 0), true),
            };
            let events = log
                .events((&after.0, after.1), name_like, limit, newest)
                .await?;
            if let Some((tx, last)) = events.last() {
                after = (tx.clone(), last.position as i64);
            } else if newest {
                // Nothing shown: follow from the newest event of all.
                if let Some((tx, last)) =
                    log.events((&after.0, after.1), None, 1, true).await?.last()
                {
                    after = (tx.clone(), last.position as i64);
                }
            }
            for (_, event) in &events {
                print_event(event, as_json);
            }
            printed += events.len();
            if follow {
                loop {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    for (tx, event) in log
                        .events((&after.0, after.1), name_like, 500, false)
                        .await?
                    {
                        print_event(&event, as_json);
                        after = (tx, event.position as i64);
                    }
                }
            }
        }
    }
    if printed == 0 && !as_json {
        eprintln!("no events");
    }
    Ok(())
}

fn letter_cells(letters: &[LetterRow]) -> Vec<Vec<String>> {
    letters
        .iter()
        .map(|l| {
            vec![
                l.id.to_string(),
                l.subscription.clone(),
                format!("{} v{}", l.name, l.version),
                l.attempts.to_string(),
                l.last_failed_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                if l.replaying { "replaying" } else { "" }.to_owned(),
                clip(l.errors.last().map_or("", String::as_str), 80),
            ]
        })
        .collect()
}

async fn dead_letters(log: &Log, as_json: bool, command: DeadLetterCommand) -> Result<()> {
    match command {
        DeadLetterCommand::List {
            filter,
            limit,
            after,
        } => {
            let letters = log.letters(&filter.filter(), after, limit).await?;
            if as_json {
                json(&letters);
            } else {
                table(
                    &[
                        "ID",
                        "SUBSCRIPTION",
                        "EVENT",
                        "ATTEMPTS",
                        "LAST FAILED",
                        "STATE",
                        "ERROR",
                    ],
                    &letter_cells(&letters),
                    "no dead letters match",
                );
                if letters.len() == limit && limit > 0 {
                    let last = letters.last().map_or(0, |l| l.id);
                    eprintln!("(first {limit} shown; `--after {last}` for the next page)");
                }
            }
            Ok(())
        }
        DeadLetterCommand::Show { id } => {
            let letter = match log {
                Log::Sqlite(log) => log.letter(id)?,
                Log::Postgres(log) => log.letter(id).await?,
            }
            .ok_or_else(|| CliError::NotFound(format!("no dead letter has id {id}")))?;
            if as_json {
                json(&letter);
                return Ok(());
            }
            println!("id:              {}", letter.id);
            println!("subscription:    {}", letter.subscription);
            println!("event:           {} v{}", letter.name, letter.version);
            println!("attempts:        {}", letter.attempts);
            println!("first failed at: {}", letter.first_failed_at.to_rfc3339());
            println!("last failed at:  {}", letter.last_failed_at.to_rfc3339());
            println!(
                "replaying:       {}",
                if letter.replaying { "yes" } else { "no" }
            );
            println!("errors:");
            for (i, error) in letter.errors.iter().enumerate() {
                println!("  {}. {error}", i + 1);
            }
            println!("payload:");
            println!(
                "{}",
                serde_json::to_string_pretty(&letter.payload).expect("JSON values serialize")
            );
            Ok(())
        }
        DeadLetterCommand::Replay(selection) => act(log, as_json, selection, Action::Replay).await,
        DeadLetterCommand::Discard(selection) => {
            act(log, as_json, selection, Action::Discard).await
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Replay,
    Discard,
}

/// Replays or discards the letters selected, after confirmation when the
/// filters match more than one and `--yes` was not given.
async fn act(log: &Log, as_json: bool, selection: Selection, action: Action) -> Result<()> {
    let (verb, past) = match action {
        Action::Replay => ("replay", "replayed"),
        Action::Discard => ("discard", "discarded"),
    };
    // Refused before asking anything, rather than after a confirmation.
    if let Log::Sqlite(log) = log {
        let what = match action {
            Action::Replay => "a replay",
            Action::Discard => "a discard",
        };
        log.refuse_if_owned(what, sqlite::ASK_THE_SERVICE)?;
    }
    let ids: Vec<u64> = if selection.all_matching {
        let filter = selection.filter.filter();
        let count = log.count_letters(&filter).await?;
        if count > 1 && !selection.yes {
            confirm(count, verb)?;
        }
        let mut ids = Vec::new();
        let mut after = 0;
        loop {
            let page = log.letters(&filter, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.id;
            ids.extend(
                page.iter()
                    .filter(|l| !l.replaying || matches!(action, Action::Discard))
                    .map(|l| l.id),
            );
        }
        ids
    } else {
        if selection.filter.subscription.is_some()
            || selection.filter.name.is_some()
            || selection.filter.error.is_some()
        {
            return Err(CliError::Usage(
                "filters select letters only with `--all-matching`; give ids or `--all-matching`, not both".into(),
            ));
        }
        if selection.ids.len() > 1 && !selection.yes {
            confirm(selection.ids.len() as u64, verb)?;
        }
        selection.ids
    };
    let progress = Progress::new(past, ids.len() as u64);
    let mut iter = ids.iter().copied();
    let outcome: Outcome = match (log, action) {
        (Log::Sqlite(log), Action::Replay) => log.replay(&mut iter, &progress).await?,
        (Log::Sqlite(log), Action::Discard) => log.discard(&mut iter, &progress).await?,
        (Log::Postgres(log), Action::Replay) => log.replay(&mut iter, &progress).await?,
        (Log::Postgres(log), Action::Discard) => log.discard(&mut iter, &progress).await?,
    };
    if as_json {
        json(&outcome);
    } else {
        let list = |ids: &[u64]| {
            ids.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{past} {} dead letters{}",
            outcome.done.len(),
            if outcome.done.is_empty() {
                String::new()
            } else {
                format!(": {}", list(&outcome.done))
            }
        );
        if !outcome.replaying.is_empty() {
            println!(
                "being replayed already, left as they are: {}",
                list(&outcome.replaying)
            );
        }
        if !outcome.not_found.is_empty() {
            println!("no such dead letters: {}", list(&outcome.not_found));
        }
        if matches!(action, Action::Replay) && !outcome.done.is_empty() {
            match log {
                Log::Sqlite(_) => println!(
                    "they are replayed when the service next starts with their subscription"
                ),
                Log::Postgres(_) => println!(
                    "the process holding their subscription replays them within about a second (or the next one to start it)"
                ),
            }
        }
    }
    if outcome.done.is_empty() && !(outcome.not_found.is_empty() && outcome.replaying.is_empty()) {
        return Err(CliError::NotFound(format!("no dead letter was {past}")));
    }
    Ok(())
}

/// Asks on the terminal; refuses without one, so a script must say `--yes`.
fn confirm(count: u64, verb: &'static str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(CliError::Unconfirmed { count, what: verb });
    }
    eprint!("{verb} {count} dead letters? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::db("reading the answer")(Box::new(e)))?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(CliError::Cancelled)
    }
}

async fn quarantine(log: &Log, as_json: bool, command: QuarantineCommand) -> Result<()> {
    let (subscription, position, limit) = match &command {
        QuarantineCommand::List {
            subscription,
            limit,
        } => (subscription.as_deref(), None, *limit),
        QuarantineCommand::Show {
            subscription,
            position,
        } => (Some(subscription.as_str()), Some(*position), 1),
    };
    let rows = match log {
        Log::Sqlite(log) => log.quarantined(subscription, position, limit)?,
        Log::Postgres(log) => log.quarantined(subscription, position, limit).await?,
    };
    match command {
        QuarantineCommand::List { .. } => {
            if as_json {
                json(&rows);
            } else {
                let cells: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.subscription.clone(),
                            r.position.to_string(),
                            format!("{} v{}", r.name, r.version),
                            r.quarantined_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            clip(&r.reason, 80),
                        ]
                    })
                    .collect();
                table(
                    &["SUBSCRIPTION", "POSITION", "EVENT", "QUARANTINED", "REASON"],
                    &cells,
                    "no quarantined rows",
                );
            }
        }
        QuarantineCommand::Show {
            subscription,
            position,
        } => {
            let row = rows.into_iter().next().ok_or_else(|| {
                CliError::NotFound(format!(
                    "no row at position {position} is quarantined for `{subscription}`"
                ))
            })?;
            if as_json {
                json(&row);
            } else {
                println!("subscription:   {}", row.subscription);
                println!("position:       {}", row.position);
                println!("event:          {} v{}", row.name, row.version);
                println!("quarantined at: {}", row.quarantined_at.to_rfc3339());
                println!("reason:         {}", row.reason);
                println!("payload:");
                println!(
                    "{}",
                    serde_json::to_string_pretty(&row.payload).expect("JSON values serialize")
                );
            }
        }
    }
    Ok(())
}
