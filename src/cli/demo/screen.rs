//! The demo's output: progress lines that scroll, and below them a live area (the cluster
//! table and the writer's figures) redrawn in place with plain ANSI cursor movement.
//!
//! When stdout is not a terminal (or `--plain`), nothing is redrawn: progress lines are
//! printed as they come and the live area only when [`Screen::show`] asks for it, at the
//! moments worth a table (after the election, before the kill, after the failover, after
//! the rejoin, at the end).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The screen, shared by the scenario and the task that refreshes the table.
#[derive(Clone)]
pub(super) struct Screen(Arc<Mutex<Inner>>);

struct Inner {
    /// Redraw in place.
    live_mode: bool,
    /// Lines of the live area now on the terminal (to move up over before a redraw).
    drawn: usize,
    /// The live area's current text.
    live: Vec<String>,
    started: Instant,
}

impl Screen {
    pub(super) fn new(plain: bool) -> Screen {
        Screen(Arc::new(Mutex::new(Inner {
            live_mode: !plain && std::io::stdout().is_terminal(),
            drawn: 0,
            live: Vec::new(),
            started: Instant::now(),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere aborts the process (panic = "abort"), so poison cannot be seen;
        // take the data either way.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A progress line, stamped with the time since the demo started; it stays in the
    /// scroll-back, above the live area.
    pub(super) fn say(&self, line: impl AsRef<str>) {
        let mut inner = self.lock();
        let stamp = format!("[{:6.2}s] ", inner.started.elapsed().as_secs_f64());
        let text = indent(line.as_ref(), &stamp);
        inner.print_above(&text);
    }

    /// Lines printed as they are (no time stamp), above the live area.
    pub(super) fn print(&self, text: impl AsRef<str>) {
        let mut text = text.as_ref().to_string();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        self.lock().print_above(&text);
    }

    /// Replaces the live area: redrawn at once on a terminal, kept for [`Screen::show`]
    /// otherwise.
    pub(super) fn set_live(&self, lines: Vec<String>) {
        let mut inner = self.lock();
        inner.live = lines;
        if inner.live_mode {
            let mut out = std::io::stdout().lock();
            let text = inner.erase() + &inner.draw();
            // A closed stdout is not the demo's failure; the cluster still runs and stops.
            let _ = out.write_all(text.as_bytes());
            let _ = out.flush();
        }
    }

    /// Without a live area: prints its current text once (with one, it is already shown).
    pub(super) fn show(&self) {
        let inner = self.lock();
        if inner.live_mode || inner.live.is_empty() {
            return;
        }
        let mut text = String::new();
        for line in &inner.live {
            text.push_str("    ");
            text.push_str(line);
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// Leaves the live area where it is, as ordinary text, and stops redrawing it.
    pub(super) fn freeze(&self) {
        let mut inner = self.lock();
        inner.live_mode = false;
        inner.drawn = 0;
    }
}

impl Inner {
    /// Prints `text` where the live area was, and the live area again below it.
    fn print_above(&mut self, text: &str) {
        let mut all = String::new();
        if self.live_mode {
            all.push_str(&self.erase());
        }
        all.push_str(text);
        if self.live_mode {
            all.push_str(&self.draw());
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(all.as_bytes());
        let _ = out.flush();
    }

    /// The escape sequence that moves up over the drawn live area and clears it.
    fn erase(&mut self) -> String {
        let text = match self.drawn {
            0 => String::new(),
            n => format!("\x1b[{n}A\r\x1b[J"),
        };
        self.drawn = 0;
        text
    }

    /// The live area, each line cut to the terminal's width so that none wraps (a wrapped
    /// line would throw off the count of lines to move up over).
    fn draw(&mut self) -> String {
        let width = terminal_width().saturating_sub(1).max(20);
        let mut text = String::new();
        for line in &self.live {
            text.extend(line.chars().take(width));
            text.push('\n');
        }
        self.drawn = self.live.len();
        text
    }
}

/// `stamp` before the first line of `text`, and as many spaces before the others.
fn indent(text: &str, stamp: &str) -> String {
    let pad = " ".repeat(stamp.chars().count());
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        out.push_str(if i == 0 { stamp } else { &pad });
        out.push_str(line);
        out.push('\n');
    }
    if out.is_empty() {
        out.push('\n');
    }
    out
}

/// `table` (as `understudy status` renders it: a header line, then a line per node that
/// starts with the node's id, each column as wide as its widest cell and two spaces apart)
/// with its column `old`, the one before `next`, renamed `new` and each row's cell
/// replaced by `cell(node id)` where that gives one. Unchanged without such columns.
pub(super) fn replace_column(
    table: &str,
    old: &str,
    next: &str,
    new: &str,
    cell: impl Fn(u16) -> Option<String>,
) -> String {
    let mut lines = table.lines();
    let Some(header) = lines.next() else {
        return table.to_string();
    };
    let column = |name: &str| {
        let at = header.find(&format!("  {name}  "))?;
        Some(header[..at].chars().count() + 2)
    };
    let (Some(start), Some(end)) = (column(old), column(next)) else {
        return table.to_string();
    };
    if end <= start {
        return table.to_string();
    }
    // Each line cut in three: before the column, the cell, from the next column on.
    let cut = |line: &str, replace: Option<String>| {
        let chars: Vec<char> = line.chars().collect();
        let part = |from: usize, to: usize| -> String {
            chars[from.min(chars.len())..to.min(chars.len())]
                .iter()
                .collect()
        };
        let before = part(0, start);
        let own = part(start, end).trim_end().to_string();
        let after = part(end, chars.len());
        (before, replace.unwrap_or(own), after)
    };
    let mut rows = vec![cut(header, Some(new.to_string()))];
    for line in lines {
        let id = line
            .split_whitespace()
            .next()
            .and_then(|word| word.parse::<u16>().ok());
        rows.push(cut(line, id.and_then(&cell)));
    }
    let width = rows
        .iter()
        .map(|(_, cell, _)| cell.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (before, cell, after) in rows {
        let pad = width - cell.chars().count();
        let line = format!("{before}{cell}{}  {after}", " ".repeat(pad));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Columns of the terminal on stdout (80 if it cannot be told).
fn terminal_width() -> usize {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the struct we pass; fd 1 is stdout.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    if ok && size.ws_col > 0 {
        usize::from(size.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_column_is_replaced_and_the_others_stay_aligned() {
        let table = "\
NODE  ROLE         APP              EPOCH  DURABLE LSN
1     backup       live, applied 0  2      52
2     primary      live, applied 0  2      57
3     unreachable  -                -      0
";
        let out = replace_column(table, "APP", "EPOCH", "REDIS", |id| match id {
            1 => Some("standby, applied 1234".to_string()),
            2 => Some("serving, pid 4242".to_string()),
            _ => None,
        });
        assert_eq!(
            out,
            "\
NODE  ROLE         REDIS                  EPOCH  DURABLE LSN
1     backup       standby, applied 1234  2      52
2     primary      serving, pid 4242      2      57
3     unreachable  -                      -      0
"
        );
        let narrow = replace_column(table, "APP", "EPOCH", "REDIS", |_| Some("x".to_string()));
        assert!(
            narrow.starts_with("NODE  ROLE         REDIS  EPOCH  DURABLE LSN\n"),
            "{narrow}"
        );
        assert!(
            narrow.contains("\n1     backup       x      2      52\n"),
            "{narrow}"
        );
        assert_eq!(replace_column(table, "NOPE", "EPOCH", "X", |_| None), table);
    }

    #[test]
    fn continuation_lines_line_up_under_the_first() {
        assert_eq!(indent("one\ntwo", "[ 1s] "), "[ 1s] one\n      two\n");
        assert_eq!(indent("", "[ 1s] "), "\n");
    }
}
