//! A report in each output format: terminal tables, Markdown, CSV, JSON, and one
//! self-contained HTML file with the plots inline.

use std::fmt::Write as _;

use super::{Cell, Report, Table};

/// Output formats of `specbench report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Markdown,
    Csv,
    Json,
    Html,
}

fn number(value: f64) -> String {
    if value.is_finite() {
        format!("{value:.4}")
    } else {
        "-".into()
    }
}

/// A cell as plain text (`0.4200 [0.3800, 0.4600]` for an interval).
pub fn cell_text(cell: &Cell) -> String {
    match cell {
        Cell::Text(text) => text.clone(),
        Cell::Number(value) => number(*value),
        Cell::Count(count) => count.to_string(),
        Cell::Interval(interval) => format!(
            "{} [{}, {}]",
            number(interval.estimate),
            number(interval.low),
            number(interval.high)
        ),
        Cell::Empty => "-".into(),
    }
}

fn is_numeric(cell: &Cell) -> bool {
    matches!(cell, Cell::Number(_) | Cell::Count(_) | Cell::Interval(_))
}

pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Table => report.tables.iter().map(terminal).collect::<Vec<_>>().join("\n"),
        Format::Markdown => report.tables.iter().map(markdown).collect::<Vec<_>>().join("\n"),
        Format::Csv => report
            .tables
            .iter()
            .map(|table| format!("# {}\n{}", table.name, csv(table)))
            .collect::<Vec<_>>()
            .join("\n"),
        Format::Json => json(report),
        Format::Html => html(report),
    }
}

fn terminal(table: &Table) -> String {
    let texts: Vec<Vec<String>> = table
        .rows
        .iter()
        .map(|row| row.iter().map(cell_text).collect())
        .collect();
    let widths: Vec<usize> = table
        .columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            texts
                .iter()
                .filter_map(|row| row.get(i))
                .map(|t| t.chars().count())
                .chain([column.chars().count()])
                .max()
                .unwrap_or(0)
                // Long rule texts would make every line wrap.
                .min(60)
        })
        .collect();
    let mut out = format!("{}\n", table.title);
    let line = |cells: Vec<(String, bool)>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|((text, right), width)| {
                let shown: String = if text.chars().count() > *width {
                    text.chars().take(width.saturating_sub(1)).chain(['…']).collect()
                } else {
                    text.clone()
                };
                if *right {
                    format!("{shown:>width$}")
                } else {
                    format!("{shown:<width$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let numeric: Vec<bool> = (0..table.columns.len())
        .map(|i| table.rows.iter().any(|row| row.get(i).is_some_and(is_numeric)))
        .collect();
    out.push_str(&line(
        table.columns.iter().cloned().zip(numeric.iter().copied()).collect(),
    ));
    out.push('\n');
    for row in &texts {
        out.push_str(&line(row.iter().cloned().zip(numeric.iter().copied()).collect()));
        out.push('\n');
    }
    if table.rows.is_empty() {
        out.push_str("(no rows)\n");
    }
    let _ = writeln!(out, "{}", table.note);
    out
}

/// Markdown renderers pass HTML through: a model or rule name holding `<script>` or `<img>`
/// must arrive as text. `|` would end the cell, a newline the row.
fn markdown_escape(text: &str) -> String {
    html_escape(text).replace('|', "\\|").replace(['\r', '\n'], " ")
}

fn markdown(table: &Table) -> String {
    let mut out = format!("## {}\n\n", markdown_escape(&table.title));
    let _ = writeln!(
        out,
        "| {} |",
        table
            .columns
            .iter()
            .map(|c| markdown_escape(c))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(
        out,
        "|{}|",
        table
            .columns
            .iter()
            .enumerate()
            .map(
                |(i, _)| if table.rows.iter().any(|r| r.get(i).is_some_and(is_numeric)) {
                    " ---: "
                } else {
                    " --- "
                }
            )
            .collect::<Vec<_>>()
            .join("|")
    );
    for row in &table.rows {
        let _ = writeln!(
            out,
            "| {} |",
            row.iter()
                .map(|c| markdown_escape(&cell_text(c)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(out, "\n{}\n", table.note);
    out
}

/// A text cell as one CSV field. Spreadsheets run a cell starting with `=`, `+`, `-` or `@`
/// (or a tab or carriage return before one) as a formula: such text gets a leading `'`, as
/// OWASP's CSV-injection guidance says. Only text cells: numbers stay numbers.
fn csv_field(text: &str) -> String {
    let neutral = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if neutral.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// One table as CSV: an interval becomes three columns (`SAR`, `SAR low`, `SAR high`), so that
/// spreadsheets read numbers.
pub fn csv(table: &Table) -> String {
    let interval_columns: Vec<bool> = (0..table.columns.len())
        .map(|i| {
            table
                .rows
                .iter()
                .any(|row| matches!(row.get(i), Some(Cell::Interval(_))))
        })
        .collect();
    let mut header = Vec::new();
    for (column, interval) in table.columns.iter().zip(&interval_columns) {
        header.push(csv_field(column));
        if *interval {
            header.push(csv_field(&format!("{column} low")));
            header.push(csv_field(&format!("{column} high")));
        }
    }
    let mut out = header.join(",");
    out.push('\n');
    for row in &table.rows {
        let mut fields = Vec::new();
        for (cell, interval) in row.iter().zip(&interval_columns) {
            match cell {
                Cell::Interval(i) => {
                    fields.extend([i.estimate, i.low, i.high].map(|v| v.to_string()));
                }
                Cell::Number(v) => fields.push(v.to_string()),
                Cell::Count(c) => fields.push(c.to_string()),
                Cell::Text(t) => fields.push(csv_field(t)),
                Cell::Empty => fields.push(String::new()),
            }
            if *interval && !matches!(cell, Cell::Interval(_)) {
                fields.extend([String::new(), String::new()]);
            }
        }
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn json(report: &Report) -> String {
    let tables: serde_json::Map<String, serde_json::Value> = report
        .tables
        .iter()
        .map(|table| {
            let rows: Vec<serde_json::Value> = table
                .rows
                .iter()
                .map(|row| {
                    serde_json::Value::Object(
                        table
                            .columns
                            .iter()
                            .zip(row)
                            .map(|(column, cell)| (column.clone(), serde_json::to_value(cell).unwrap_or_default()))
                            .collect(),
                    )
                })
                .collect();
            (
                table.name.clone(),
                serde_json::json!({"title": table.title, "note": table.note, "rows": rows}),
            )
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::Value::Object(tables)).unwrap_or_default()
}

/// The stylesheet the report and the viewer share.
pub const STYLE: &str = include_str!("style.css");

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn html(report: &Report) -> String {
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>specbench report</title>\n<style>\n{STYLE}</style></head><body>\n<h1>specbench report</h1>\n"
    );
    for plot in &report.plots {
        let _ = writeln!(
            out,
            "<figure><figcaption>{}</figcaption>{}</figure>",
            html_escape(&plot.title),
            plot.svg
        );
    }
    for table in &report.tables {
        let _ = writeln!(out, "<h2>{}</h2>\n<table><thead><tr>", html_escape(&table.title));
        for column in &table.columns {
            let _ = write!(out, "<th>{}</th>", html_escape(column));
        }
        out.push_str("</tr></thead><tbody>\n");
        for row in &table.rows {
            out.push_str("<tr>");
            for cell in row {
                let class = if is_numeric(cell) { " class=\"n\"" } else { "" };
                let _ = write!(out, "<td{class}>{}</td>", html_escape(&cell_text(cell)));
            }
            out.push_str("</tr>\n");
        }
        let _ = writeln!(
            out,
            "</tbody></table>\n<p class=\"note\">{}</p>",
            html_escape(&table.note)
        );
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Interval;

    fn table() -> Table {
        Table {
            name: "t".into(),
            title: "T".into(),
            columns: vec!["model".into(), "SAR".into(), "n".into()],
            rows: vec![
                vec![
                    Cell::Text("a,\"b\"".into()),
                    Cell::Interval(Interval {
                        estimate: 0.5,
                        low: 0.25,
                        high: 0.75,
                    }),
                    Cell::Count(3),
                ],
                vec![Cell::Text("c|d".into()), Cell::Empty, Cell::Count(1)],
            ],
            note: "note".into(),
        }
    }

    #[test]
    fn csv_quotes_text_and_splits_intervals() {
        assert_eq!(
            csv(&table()),
            "model,SAR,SAR low,SAR high,n\n\"a,\"\"b\"\"\",0.5,0.25,0.75,3\nc|d,,,,1\n"
        );
    }

    #[test]
    fn csv_neutralises_formulas_in_text_but_keeps_numbers() {
        let table = Table {
            name: "t".into(),
            title: "T".into(),
            columns: vec!["model".into(), "delta".into()],
            rows: ["=1+1", "+SUM(A1)", "-cmd", "@x", "\tx", "\r=1", "plain", "a=b"]
                .iter()
                .map(|text| vec![Cell::Text((*text).into()), Cell::Number(-0.25)])
                .collect(),
            note: String::new(),
        };
        assert_eq!(
            csv(&table),
            "model,delta\n'=1+1,-0.25\n'+SUM(A1),-0.25\n'-cmd,-0.25\n'@x,-0.25\n'\tx,-0.25\n\"'\r=1\",-0.25\nplain,-0.25\na=b,-0.25\n"
        );
    }

    #[test]
    fn markdown_escapes_html_in_names() {
        let mut table = table();
        table.rows[0][0] = Cell::Text("<img src=x onerror=alert(1)>|b".into());
        let text = markdown(&table);
        assert!(text.contains("| &lt;img src=x onerror=alert(1)&gt;\\|b |"), "{text}");
        assert!(!text.contains("<img"), "{text}");
    }

    #[test]
    fn markdown_escapes_pipes_and_aligns_numbers() {
        let text = markdown(&table());
        assert!(text.contains("| model | SAR | n |"), "{text}");
        assert!(text.contains("| --- | ---: | ---: |"), "{text}");
        assert!(text.contains("c\\|d"), "{text}");
        assert!(text.contains("0.5000 [0.2500, 0.7500]"), "{text}");
    }

    #[test]
    fn html_is_escaped_and_self_contained() {
        let report = Report {
            tables: vec![table()],
            plots: Vec::new(),
        };
        let page = html(&report);
        assert!(page.contains("a,&quot;b&quot;"));
        assert!(!page.contains("<script"), "no scripts, no external resources");
        assert!(!page.contains("http"), "no external resources");
    }

    #[test]
    fn json_keys_rows_by_column() -> Result<(), serde_json::Error> {
        let report = Report {
            tables: vec![table()],
            plots: Vec::new(),
        };
        let value: serde_json::Value = serde_json::from_str(&json(&report))?;
        assert_eq!(value["t"]["rows"][0]["SAR"]["low"], 0.25);
        assert_eq!(value["t"]["rows"][1]["n"], 1);
        Ok(())
    }
}
