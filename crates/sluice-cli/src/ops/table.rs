//! Plain aligned tables for humans.

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub(crate) fn print(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(headers, rows));
}

/// The table as text.
pub(crate) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out += cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

/// An optional count as text (`–` when the backend does not know).
pub(crate) fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "–".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_are_aligned_to_the_widest_cell() {
        let text = super::render(&["A", "BEE"], &[vec!["long".into(), "x".into()]]);
        assert_eq!(text, "A     BEE\nlong  x\n");
    }
}
