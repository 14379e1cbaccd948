//! Tables for people: each column as wide as its widest cell, two spaces apart, numbers
//! right-aligned, no trailing spaces.

use std::fmt::Write as _;

/// How a column's cells are padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Align {
    Left,
    Right,
}

/// A table being filled row by row.
pub(crate) struct Table {
    headers: Vec<(&'static str, Align)>,
    rows: Vec<Vec<String>>,
}

/// The `i`th cell of `row`, empty when the row is short.
fn cell(row: &[String], i: usize) -> &str {
    row.get(i).map(String::as_str).unwrap_or("")
}

impl Table {
    /// A table with these column headers.
    pub(crate) fn new(headers: &[(&'static str, Align)]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra ones are dropped.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row after the header, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self
            .headers
            .iter()
            .map(|(h, _)| h.chars().count())
            .collect();
        for row in &self.rows {
            for (i, width) in widths.iter_mut().enumerate() {
                *width = (*width).max(cell(row, i).chars().count());
            }
        }
        let header: Vec<String> = self.headers.iter().map(|(h, _)| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (width, (_, align))) in widths.iter().zip(&self.headers).enumerate() {
                let text = cell(row, i);
                let pad = width - text.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                match align {
                    Align::Right => {
                        let _ = write!(line, "{}{text}", " ".repeat(pad));
                    }
                    Align::Left if i + 1 == columns => line.push_str(text),
                    Align::Left => {
                        let _ = write!(line, "{text}{}", " ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints the table to stdout.
    pub(crate) fn print(&self) {
        print!("{}", self.render());
    }
}

/// `1 instance`, `2 instances`.
/// A byte count in binary units: `512 B`, `1.5 KiB`, `20.0 MiB`, `3.2 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub(crate) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_and_numbers_align_right() {
        let mut table = Table::new(&[("NAME", Align::Left), ("INSTANCES", Align::Right)]);
        table.row(vec!["a-rather-long-service-name".into(), "3".into()]);
        table.row(vec!["web".into(), "12".into()]);
        assert_eq!(
            table.render(),
            "NAME                        INSTANCES\n\
             a-rather-long-service-name          3\n\
             web                                12\n"
        );
    }

    #[test]
    fn the_last_left_column_has_no_trailing_spaces() {
        let mut table = Table::new(&[("ID", Align::Right), ("NOTE", Align::Left)]);
        table.row(vec!["1".into(), "short".into()]);
        table.row(vec!["22".into(), "".into()]);
        for line in table.render().lines() {
            assert_eq!(line, line.trim_end());
        }
    }

    #[test]
    fn bytes_read_in_binary_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(bytes(3 << 40), "3.0 TiB");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        assert_eq!(Table::new(&[("A", Align::Left)]).render(), "A\n");
        assert_eq!(count(1, "instance", "instances"), "1 instance");
        assert_eq!(count(0, "instance", "instances"), "0 instances");
    }
}
