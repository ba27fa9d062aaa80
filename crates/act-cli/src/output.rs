//! Output helpers: JSON lines, progress bars on a terminal, rates.

use std::io::Write;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::Error;

/// Prints one JSON object on its own line.
pub fn json_line<T: Serialize>(value: &T) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a line of text.
pub fn line(text: impl std::fmt::Display) -> Result<(), Error> {
    writeln!(std::io::stdout().lock(), "{text}")?;
    Ok(())
}

/// A progress bar on stderr, hidden with `--json` or when stderr is not a
/// terminal.
pub fn bar(json: bool, len: Option<u64>, what: &str) -> ProgressBar {
    if json {
        return ProgressBar::hidden();
    }
    // Rates rounded to whole numbers with separators, not `1234.5678/s`.
    let rate = |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{}/s", thousands(state.per_sec()));
    };
    let pb = match len {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("{msg:>10} [{bar:30}] {pos}/{len} ({rate}, {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("rate", rate)
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{msg:>10} {spinner} {pos} ({rate})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
                .with_key("rate", rate),
        ),
    };
    pb.set_message(what.to_string());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// A plain table: a header row and left-aligned columns padded to fit.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    fitted(header, rows, usize::MAX)
}

/// The width of the terminal on stdout, or `None` when stdout is not one
/// (a pipe, a file): then nothing is cut.
pub fn terminal_width() -> Option<usize> {
    let term = console::Term::stdout();
    if !term.is_term() {
        return None;
    }
    term.size_checked().map(|(_, w)| usize::from(w))
}

/// A table that fits in `width` columns: when it is too wide, the widest
/// columns are cut (ending in `…`) until it fits, never below 8 characters.
pub fn fitted(header: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let total = |w: &[usize]| w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    while total(&widths) > width {
        let Some((i, &widest)) = widths.iter().enumerate().max_by_key(|(_, w)| **w) else {
            break;
        };
        if widest <= 8 {
            break;
        }
        widths[i] = (widest - (total(&widths) - width)).max(8);
    }
    let mut out = String::new();
    let mut push = |cells: &mut dyn Iterator<Item = &str>| {
        let mut parts = Vec::new();
        for (cell, w) in cells.zip(&widths) {
            let cell = cut(cell, *w);
            parts.push(format!("{cell:<w$}"));
        }
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    push(&mut header.iter().copied());
    for r in rows {
        push(&mut r.iter().map(String::as_str));
    }
    out.pop();
    out
}

/// `s` cut to `width` characters, ending in `…` when cut.
fn cut(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Orders names the way people read them: digit runs by value, so
/// `audit-2` comes before `audit-10`; otherwise byte order.
pub fn natural(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let run = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
                let (n, m) = (run(x), run(y));
                let (p, q) = (trim_zeros(&x[..n]), trim_zeros(&y[..m]));
                let by_value = p.len().cmp(&q.len()).then_with(|| p.cmp(q));
                if by_value != std::cmp::Ordering::Equal {
                    return by_value;
                }
                x = &x[n..];
                y = &y[m..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|c| **c == b'0').count();
    &digits[zeros.min(digits.len().saturating_sub(1))..]
}

/// "1 queue", "3 queues".
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `n / seconds`, 0 when no time passed.
pub fn rate(n: u64, d: Duration) -> f64 {
    let s = d.as_secs_f64();
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// A whole number with thousands separators: 12,345.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_sort_naturally() {
        let mut v = vec![
            "audit-10", "audit-2", "audit-1", "totals", "audit-02", "b", "a10b", "a9b",
        ];
        v.sort_by(|a, b| super::natural(a, b));
        assert_eq!(
            v,
            vec!["a9b", "a10b", "audit-1", "audit-02", "audit-2", "audit-10", "b", "totals"]
        );
    }

    #[test]
    fn wide_tables_are_cut_to_fit() {
        let rows = vec![vec!["q".to_string(), "x".repeat(200)]];
        let t = super::fitted(&["STREAM", "ERROR"], &rows, 60);
        assert!(t.lines().all(|l| l.chars().count() <= 60), "{t}");
        assert!(t.contains('…'));
        assert_eq!(
            super::table(&["A"], &[vec!["x".repeat(300)]])
                .lines()
                .last()
                .map(|l| l.len()),
            Some(300)
        );
        assert_eq!(super::count(1, "queue", "queues"), "1 queue");
        assert_eq!(super::count(2, "queue", "queues"), "2 queues");
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(super::thousands(0.0), "0");
        assert_eq!(super::thousands(999.4), "999");
        assert_eq!(super::thousands(1234.0), "1,234");
        assert_eq!(super::thousands(1234567.0), "1,234,567");
    }
}
