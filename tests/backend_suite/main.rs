//! One behaviour suite, written once and run against every backend, in the
//! spirit of Watermill's universal pub/sub tests.
//!
//! Each case (`cases/`) is an async fn of a [`Harness`](harness::Harness);
//! each backend (`harness.rs`) provides one. Every (backend, case) pair is a
//! trial of its own, named `backend::case`, on a Tokio runtime of its own.
//! A case needs capabilities; a backend declares its own through
//! `bus.capabilities()`, read once at start. A trial whose backend lacks
//! what its case needs is listed as ignored, so `cargo test` and `cargo
//! nextest run` both show it skipped, and the reasons are printed before
//! the run. Run anyway (`--ignored`), such a trial still does not run: it
//! is ignored with its reason under `cargo test`, and fails with it under
//! nextest, which has no way to show a trial skipped once started.
//!
//! ```sh
//! cargo test --test backend_suite                  # every trial
//! cargo test --test backend_suite -- sqlite::      # one backend
//! cargo nextest run --test backend_suite
//! ```

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod harness;
mod support;

use crate::cases::Case;
use crate::harness::{Backend, BusSettings};
use eventbus::Capabilities;
use libtest_mimic::{Arguments, Completion, Failed, Trial};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// The longest a trial may take; past it the trial fails as a hang. Each
/// wait inside a case is bounded too, and names what it waited for.
const TRIAL_LIMIT: Duration = Duration::from_secs(60);

fn main() {
    let args = Arguments::from_args();
    let cases: &'static [Case] = Vec::leak(cases::all());
    let mut trials = Vec::new();
    let mut skipped = Vec::new();
    for backend in harness::backends() {
        let backend: &'static Backend = Box::leak(Box::new(backend));
        let capabilities = capabilities_of(backend);
        for case in cases {
            let (trial, skip) = trial(backend, case, &capabilities);
            if let Some(reason) = skip
                && !args.is_filtered_out(&trial)
            {
                skipped.push(format!("{}: {reason}", trial.name()));
            }
            trials.push(trial);
        }
    }
    // Not while listing: a runner reads that output.
    if !args.list && !args.ignored && !args.include_ignored {
        for line in &skipped {
            eprintln!("skipped {line}");
        }
    }
    libtest_mimic::run(&args, trials).exit();
}

/// What `backend` declares, read from a bus opened on fresh storage; `Err`
/// when it cannot be reached.
fn capabilities_of(backend: &Backend) -> Result<Capabilities, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    runtime.block_on(async {
        let harness = (backend.fresh)().await?;
        let bus = harness.open(BusSettings::default()).await;
        let capabilities = bus.capabilities();
        bus.shutdown().await;
        Ok(capabilities)
    })
}

/// The trial of `case` on `backend`, and why it is skipped if it is.
fn trial(
    backend: &'static Backend,
    case: &'static Case,
    capabilities: &Result<Capabilities, String>,
) -> (Trial, Option<String>) {
    let name = format!("{}::{}", backend.name, case.name);
    let skip = match capabilities {
        Ok(capabilities) => {
            let missing = case.missing(capabilities);
            (!missing.is_empty()).then(|| {
                let names: Vec<String> =
                    missing.iter().map(|c| format!("`{}`", c.name())).collect();
                format!(
                    "needs {}, which the {} backend does not declare",
                    names.join(" and "),
                    backend.name
                )
            })
        }
        Err(why) if std::env::var_os("EVENTBUS_REQUIRE_SERVICES").is_some_and(|v| v == "1") => {
            let why = format!("the {} backend is unreachable: {why}", backend.name);
            return (Trial::test(name, move || Err(why.into())), None);
        }
        Err(why) => Some(format!(
            "the {} backend is unreachable: {why}",
            backend.name
        )),
    };
    let ignored = skip.is_some();
    let reason = skip.clone();
    let trial = Trial::ignorable_test(name, move || match reason {
        // Run on purpose (`--ignored`), it is still not run. libtest's
        // output says "ignored" with the reason; nextest has no outcome
        // for a trial skipped once started, and would call it passed.
        Some(reason) if std::env::var_os("NEXTEST").is_some() => {
            Err(format!("not run: {reason}").into())
        }
        Some(reason) => Ok(Completion::ignored_with(reason)),
        None => run(backend, case).map(|()| Completion::Completed),
    })
    .with_ignored_flag(ignored);
    (trial, skip)
}

/// Runs `case` on fresh storage of `backend`, on a runtime of its own.
fn run(backend: &'static Backend, case: &'static Case) -> Result<(), Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("no Tokio runtime: {e}"))?;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        runtime.block_on(async {
            let harness = (backend.fresh)().await?;
            tokio::time::timeout(TRIAL_LIMIT, (case.run)(&*harness))
                .await
                .map_err(|_| format!("HANG: the case did not finish within {TRIAL_LIMIT:?}"))
        })
    }));
    // Tasks a failed case left behind must not hold the next trial up.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(result) => result.map_err(Failed::from),
        Err(panic) => Err(panic_message(&*panic).into()),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "the case panicked".to_owned()
    }
}
