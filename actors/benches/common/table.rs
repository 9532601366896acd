//! The summary table and PASS/FAIL verdicts shared by the benchmark binaries
//! (included with `#[path]`: each bench is its own crate).

pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "FAIL" }
}

pub struct Row {
    metric: String,
    value: String,
    target: String,
    verdict: String,
}

pub fn row(
    metric: impl Into<String>,
    value: impl Into<String>,
    target: &str,
    verdict: &str,
) -> Row {
    Row {
        metric: metric.into(),
        value: value.into(),
        target: target.into(),
        verdict: verdict.into(),
    }
}

/// The value of the row named `metric`, if there is one.
#[allow(dead_code)] // the supervision bench's last line; the pipeline bench has none
pub fn value_of<'a>(rows: &'a [Row], metric: &str) -> Option<&'a str> {
    rows.iter()
        .find(|r| r.metric == metric)
        .map(|r| r.value.as_str())
}

/// Whether any row's verdict is FAIL: the bench then exits non-zero.
pub fn any_failed(rows: &[Row]) -> bool {
    rows.iter().any(|r| r.verdict == "FAIL")
}

pub fn print_table(rows: &[Row]) {
    let w0 = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let w1 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0).max(5);
    let w2 = rows
        .iter()
        .map(|r| r.target.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!();
    println!("== summary ==");
    println!(
        "{:<w0$}  {:>w1$}  {:<w2$}  verdict",
        "metric", "value", "target"
    );
    println!("{}", "-".repeat(w0 + w1 + w2 + 13));
    for r in rows {
        println!(
            "{:<w0$}  {:>w1$}  {:<w2$}  {}",
            r.metric, r.value, r.target, r.verdict
        );
    }
}
