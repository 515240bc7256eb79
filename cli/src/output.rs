//! How results reach the terminal: tables, colour and redrawn progress on a terminal,
//! plain lines elsewhere, JSON for scripts.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// Where output goes and how it looks.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    /// `--json`: one JSON document per read command.
    pub json: bool,
    /// Standard output is a terminal: colour and redrawn progress.
    pub terminal: bool,
    /// Colour is on (a terminal, no `--no-color`, no `NO_COLOR`).
    pub colour: bool,
}

impl Output {
    /// From the global flags and the environment.
    pub fn new(json: bool, no_colour: bool) -> Self {
        let terminal = std::io::stdout().is_terminal();
        let colour = terminal && !no_colour && std::env::var_os("NO_COLOR").is_none();
        Self {
            json,
            terminal,
            colour,
        }
    }

    /// Prints `value` as pretty JSON.
    pub fn print_json<T: Serialize>(&self, value: &T) {
        let text = serde_json::to_string_pretty(value).expect("CLI views serialise");
        println!("{text}");
    }

    /// `text` in the colour of `state` (green done, red failed, yellow running).
    pub fn state(&self, text: &str) -> String {
        if !self.colour {
            return text.to_string();
        }
        let code = match text {
            "completed" | "succeeded" | "collected" => "32",
            "failed" | "expired" | "cancelled" => "31",
            _ => "33",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// A table with left-aligned columns, as `ls -l` prints one.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column headers.
    pub fn new(headers: Vec<&'static str>) -> Self {
        Self {
            headers,
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as headers).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as lines of text. Widths ignore colour codes, so coloured cells align.
    pub fn lines(&self) -> Vec<String> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(visible_len(cell));
            }
        }
        let line = |cells: Vec<&str>| {
            let padded: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(cell, width)| {
                    let pad = width.saturating_sub(visible_len(cell));
                    format!("{cell}{}", " ".repeat(pad))
                })
                .collect();
            padded.join("  ").trim_end().to_string()
        };
        std::iter::once(line(self.headers.clone()))
            .chain(
                self.rows
                    .iter()
                    .map(|row| line(row.iter().map(String::as_str).collect())),
            )
            .collect()
    }

    /// Prints the table to standard output.
    pub fn print(&self) {
        let mut out = std::io::stdout().lock();
        for line in self.lines() {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Characters a terminal shows: ANSI colour codes take no room.
fn visible_len(text: &str) -> usize {
    let mut len = 0;
    let mut in_escape = false;
    for c in text.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => len += 1,
        }
    }
    len
}

/// A block of lines redrawn in place on a terminal; elsewhere printed only when it
/// changed, so that a log gets one line per change rather than one per refresh.
#[derive(Debug, Default)]
pub struct Progress {
    drawn: Vec<String>,
}

impl Progress {
    /// Shows `lines` in place of the previous block.
    pub fn show(&mut self, output: &Output, lines: Vec<String>) {
        let mut out = std::io::stderr().lock();
        if output.terminal {
            if !self.drawn.is_empty() {
                // Up to the block's first line, then clear to the end of the screen.
                let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn.len());
            }
            for line in &lines {
                let _ = writeln!(out, "{line}");
            }
        } else {
            for line in lines.iter().filter(|line| !self.drawn.contains(line)) {
                let _ = writeln!(out, "{line}");
            }
        }
        self.drawn = lines;
    }
}

/// `seconds` as `1h02m`, `3m05s` or `42s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

/// A cost in dollars, or `-` where the spec gives no prices.
pub fn cost(usd: Option<f64>) -> String {
    usd.map_or_else(|| "-".to_string(), |usd| format!("${usd:.4}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_whatever_the_colour() {
        let mut table = Table::new(vec!["id", "state"]);
        table.row(vec!["a".into(), "\x1b[32mcompleted\x1b[0m".into()]);
        table.row(vec!["long-id".into(), "open".into()]);
        let lines = table.lines();
        assert_eq!(lines[0], "id       state");
        assert_eq!(lines[1], "a        \x1b[32mcompleted\x1b[0m");
        assert_eq!(lines[2], "long-id  open");
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(42), "42s");
        assert_eq!(duration(185), "3m05s");
        assert_eq!(duration(3720), "1h02m");
        assert_eq!(duration(-5), "0s");
    }
}
