//! Derives written above `#[event]`.
//!
//! Attributes run top to bottom. A `#[derive]` above `#[event]` has already
//! run, on the struct without its `meta` field, and is gone from the tokens
//! `#[event]` receives: its `Clone` impl misses `meta`, and its `Debug`
//! conflicts with the one `#[event]` adds. Nothing in the tokens tells, so the
//! attributes above are read back from the source file, where the compiler
//! says the `#[event]` attribute is.

use std::path::Path;

/// The first `#[derive(..)]` (or `#[cfg_attr(.., derive(..))]`) written
/// directly above the attribute at `line` and `column` (both 1-based, as the
/// compiler counts) of `file`, on one line. `None` when there is none, or
/// when the source cannot be read or does not show the attribute there (an
/// expansion of another macro).
pub(crate) fn derive_above(file: &Path, line: usize, column: usize) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    derive_above_in(&text, line, column)
}

fn derive_above_in(text: &str, line: usize, column: usize) -> Option<String> {
    let before = prefix(text, line, column)?;
    attributes_ending(before)
        .into_iter()
        .map(|attr| attr.split_whitespace().collect::<Vec<_>>().join(" "))
        .find(|attr| is_derive(attr))
}

/// The text before the attribute, if the attribute is there.
fn prefix(text: &str, line: usize, column: usize) -> Option<&str> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.checked_sub(1)?)
        .map(str::len)
        .sum();
    let rest = &text[line_start..];
    let offset = rest
        .char_indices()
        .nth(column.checked_sub(1)?)
        .map(|(i, _)| i)?;
    let at = line_start + offset;
    text[at..].starts_with('#').then(|| &text[..at])
}

/// The attributes that end `text`, nearest first, skipping comments on lines
/// of their own (doc comments included).
fn attributes_ending(mut text: &str) -> Vec<&str> {
    let mut attrs = Vec::new();
    loop {
        text = text.trim_end();
        let last_line = text.rsplit('\n').next().unwrap_or(text);
        if last_line.trim_start().starts_with("//") {
            text = &text[..text.len() - last_line.len()];
            continue;
        }
        if !text.ends_with(']') {
            return attrs;
        }
        let Some(open) = matching_open(text) else {
            return attrs;
        };
        let Some(start) = text[..open].strip_suffix('#').map(str::len) else {
            return attrs;
        };
        attrs.push(&text[start..]);
        text = &text[..start];
    }
}

/// Where the `[` that the final `]` of `text` closes is.
fn matching_open(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in text.char_indices().rev() {
        match c {
            ']' => depth += 1,
            '[' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

fn is_derive(attr: &str) -> bool {
    let inner = attr
        .trim_start_matches('#')
        .trim_start_matches('[')
        .trim_start();
    inner.starts_with("derive") || (inner.starts_with("cfg_attr") && inner.contains("derive"))
}

#[cfg(test)]
mod tests {
    use super::derive_above_in;

    fn find(src: &str) -> Option<String> {
        let (line, text) = src
            .lines()
            .enumerate()
            .find(|(_, l)| l.contains("#[event"))
            .unwrap();
        let column = text.find("#[event").unwrap() + 1;
        derive_above_in(src, line + 1, column)
    }

    #[test]
    fn finds_a_derive_above() {
        let src = "use x;\n\n#[derive(Debug, Clone)]\n#[event]\nstruct A {}\n";
        assert_eq!(find(src).as_deref(), Some("#[derive(Debug, Clone)]"));
    }

    #[test]
    fn looks_past_docs_comments_and_other_attributes() {
        let src = "/// Docs.\n#[derive(\n    Debug,\n    PartialEq,\n)]\n// why\n#[allow(dead_code)]\n  #[event(name = \"a\")]\nstruct A {}\n";
        assert_eq!(find(src).as_deref(), Some("#[derive( Debug, PartialEq, )]"));
        let src = "#[cfg_attr(test, derive(Default))] #[event]\nstruct A {}\n";
        assert_eq!(
            find(src).as_deref(),
            Some("#[cfg_attr(test, derive(Default))]")
        );
    }

    #[test]
    fn stops_at_the_previous_item() {
        let src = "#[derive(Debug)]\nstruct B;\n\n/// See [`B`]\n#[event]\nstruct A {}\n";
        assert_eq!(find(src), None);
        let src = "fn f() -> [u8; 2] { [0, 1] }\n#[event]\nstruct A {}\n";
        assert_eq!(find(src), None);
        assert_eq!(find("#[event]\n#[derive(Debug)]\nstruct A {}\n"), None);
    }

    #[test]
    fn a_position_without_the_attribute_is_ignored() {
        assert_eq!(
            derive_above_in("#[derive(Debug)]\nstruct A {}\n", 2, 1),
            None
        );
        assert_eq!(derive_above_in("", 5, 1), None);
    }
}
