//! Tables for people, JSON for scripts.

use serde::Serialize;
use std::io::{IsTerminal, Write};

/// Prints `rows` as aligned columns under `header`, or says `empty`.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>], empty: &str) {
    if rows.is_empty() {
        println!("{empty}");
        return;
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Prints `value` as one JSON document.
pub(crate) fn json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("rows serialize")
    );
}

/// Prints `value` as one JSON line (for streams such as `tail`).
pub(crate) fn json_line<T: Serialize>(value: &T) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(value).expect("rows serialize")
    );
    let _ = out.flush();
}

/// Shortens `text` to one line of at most `max` characters.
pub(crate) fn clip(text: &str, max: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c == '\n' { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

/// Progress of a long operation, on stderr and only to a terminal: a
/// script's output stays clean.
#[derive(Debug)]
pub(crate) struct Progress {
    verb: &'static str,
    total: u64,
    shown: bool,
}

impl Progress {
    pub(crate) fn new(verb: &'static str, total: u64) -> Progress {
        Progress {
            verb,
            total,
            shown: std::io::stderr().is_terminal(),
        }
    }

    pub(crate) fn update(&self, done: u64) {
        if self.shown {
            eprint!("\r{} {done} of {}", self.verb, self.total);
        }
    }

    pub(crate) fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}
