//! What making an event costs a producer, next to an `Arc` of a small struct
//! and a bare clock read, measured in the same run on 1, 2 and 4 threads.
//!
//! ```sh
//! cargo run --release --example event_cost            # 5 runs of 2,000,000 per thread
//! cargo run --release --example event_cost -- --quick # 1 run of 200,000
//! ```
//!
//! Each thread makes its values back to back, as a busy producer does: an
//! `#[event]` constructor (id and time included) turned into the
//! [`AnyEvent`] a bus carries, then dropped. The baselines are the
//! allocation behind every `AnyEvent` and a wall-clock read (an event reads
//! the wall clock once per millisecond per thread, and the cycle counter in
//! between). The threads start together behind a barrier; a run takes
//! as long as its slowest thread.

use eventbus::{AnyEvent, event};
use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

#[event]
struct Tick {
    n: u64,
}

struct Args {
    per_thread: u64,
    runs: usize,
}

fn args() -> Args {
    if std::env::args().any(|a| a == "--quick") {
        Args {
            per_thread: 200_000,
            runs: 1,
        }
    } else {
        Args {
            per_thread: 2_000_000,
            runs: 5,
        }
    }
}

/// One way of making a value, run `n` times on the calling thread.
#[derive(Clone, Copy)]
enum Work {
    Event,
    Arc,
    Clock,
}

impl Work {
    fn label(self) -> &'static str {
        match self {
            Work::Event => "`#[event]` constructor into `AnyEvent`",
            Work::Arc => "`Arc::new` of a 16-byte struct",
            Work::Clock => "`SystemTime::now()`",
        }
    }

    fn run(self, n: u64) {
        match self {
            Work::Event => {
                for i in 0..n {
                    let event: AnyEvent = Tick::new(i).into();
                    black_box(event);
                }
            }
            Work::Arc => {
                // 16 bytes, as a hand-rolled event of a number and a time.
                for i in 0..n {
                    black_box(Arc::new([black_box(i), i]));
                }
            }
            Work::Clock => {
                for _ in 0..n {
                    black_box(SystemTime::now());
                }
            }
        }
    }
}

/// Wall time for `threads` threads each making `n` values at once.
fn timed(work: Work, threads: usize, n: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                work.run(n);
                start.elapsed()
            })
        })
        .collect();
    barrier.wait();
    handles
        .into_iter()
        .map(|h| h.join().expect("worker"))
        .max()
        .expect("one thread at least")
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args = args();
    let n = args.per_thread;
    // Warm the allocator, the clock and the id generator of this thread.
    for work in [Work::Event, Work::Arc, Work::Clock] {
        work.run(n / 10);
    }

    println!(
        "Making a value: {n} per thread, threads started together, median of {} run(s)",
        args.runs
    );
    println!(
        "| value | ns each, 1 thread | M/s, 1 thread | M/s total (per thread), 2 threads | M/s total (per thread), 4 threads | 2 threads / 1 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for work in [Work::Event, Work::Arc, Work::Clock] {
        // Alternate thread counts inside each run, so a burst of noise from
        // other processes lands on every column rather than on one.
        let mut rates: [Vec<f64>; 3] = Default::default();
        for _ in 0..args.runs {
            for (slot, threads) in [1, 2, 4].into_iter().enumerate() {
                let elapsed = timed(work, threads, n);
                rates[slot].push((n * threads as u64) as f64 / elapsed.as_secs_f64() / 1e6);
            }
        }
        let [one, two, four] = rates.map(median);
        println!(
            "| {} | {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.2}x |",
            work.label(),
            1e3 / one,
            one,
            two,
            two / 2.0,
            four,
            four / 4.0,
            two / one,
        );
    }
    println!(
        "(M/s = million values per second; on a 2-core machine 4 threads share 2 cores, so their per-thread rate halves)"
    );
}
