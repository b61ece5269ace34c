//! Aligned text tables for the CLI: a header in capitals, columns padded to their widest
//! cell, two spaces between columns, no trailing spaces.

pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if index > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            if index + 1 < cells.len() {
                text.push_str(&" ".repeat(width.saturating_sub(cell.chars().count())));
            }
        }
        text.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_line_up_and_lines_have_no_trailing_spaces() {
        let text = super::render(
            &["NAME", "STATUS"],
            &[vec!["alice/dev".into(), "running".into()], vec!["b/x".into(), "".into()]],
        );
        assert_eq!(text, "NAME       STATUS\nalice/dev  running\nb/x");
    }
}
