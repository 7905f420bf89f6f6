//! `--compare A --compare B`: the same jobs run back to back with two sets
//! of overrides (two engines, two completion modes, two depths...), then a
//! table of the figures side by side with the ratio B/A.

use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::cli;
use crate::config::{Config, RawOption};
use crate::output;
use crate::run::{Outcome, RunError};
use crate::svg;

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// What is compared.
    pub metric: String,
    /// Side A's value.
    pub a: f64,
    /// Side B's value.
    pub b: f64,
    /// Whether a higher value is better (IOPS) or worse (latency).
    pub higher_is_better: bool,
}

impl Row {
    /// B / A, if A is not zero.
    pub fn ratio(&self) -> Option<f64> {
        (self.a != 0.0).then(|| self.b / self.a)
    }
}

/// The label of a side: its overrides as written.
pub fn label(overrides: &[RawOption]) -> String {
    overrides
        .iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k.clone(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The figures of two runs, side by side.
pub fn rows(a: &Outcome, b: &Outcome) -> Vec<Row> {
    let mut rows = Vec::new();
    let (Some(ga), Some(gb)) = (output::group(a), output::group(b)) else {
        return rows;
    };
    for (index, name) in ["read", "write"].iter().enumerate() {
        let (da, db) = (&ga.dirs[index], &gb.dirs[index]);
        if da.ios == 0 && db.ios == 0 {
            continue;
        }
        let per_sec = |bytes: u64, runtime: std::time::Duration| {
            bytes as f64 / runtime.as_secs_f64().max(1e-9)
        };
        let mut push = |metric: String, a: f64, b: f64, higher_is_better: bool| {
            rows.push(Row {
                metric,
                a,
                b,
                higher_is_better,
            });
        };
        push(
            format!("{name} IOPS"),
            per_sec(da.ios, ga.runtime),
            per_sec(db.ios, gb.runtime),
            true,
        );
        push(
            format!("{name} bandwidth (MiB/s)"),
            per_sec(da.bytes, ga.runtime) / 1048576.0,
            per_sec(db.bytes, gb.runtime) / 1048576.0,
            true,
        );
        push(
            format!("{name} clat mean (us)"),
            da.clat.mean / 1e3,
            db.clat.mean / 1e3,
            false,
        );
        for p in [50.0, 99.0, 99.9, 99.99] {
            push(
                format!("{name} clat p{p} (us)"),
                da.clat.percentile(p) as f64 / 1e3,
                db.clat.percentile(p) as f64 / 1e3,
                false,
            );
        }
        push(
            format!("{name} clat max (us)"),
            da.clat.max as f64 / 1e3,
            db.clat.max as f64 / 1e3,
            false,
        );
        push(
            format!("{name} lat mean (us)"),
            da.lat.mean / 1e3,
            db.lat.mean / 1e3,
            false,
        );
    }
    let (ua, sa) = ga.cpu_percent();
    let (ub, sb) = gb.cpu_percent();
    rows.push(Row {
        metric: "job usr CPU (%)".into(),
        a: ua,
        b: ub,
        higher_is_better: false,
    });
    rows.push(Row {
        metric: "job sys CPU (%)".into(),
        a: sa,
        b: sb,
        higher_is_better: false,
    });
    if let (Some(ia), Some(ib)) = (
        a.isolation.isolated_interrupts,
        b.isolation.isolated_interrupts,
    ) {
        rows.push(Row {
            metric: "interrupts on isolated CPUs".into(),
            a: ia as f64,
            b: ib as f64,
            higher_is_better: false,
        });
    }
    rows
}

fn cell(value: f64) -> String {
    if value == 0.0 {
        "0".into()
    } else if value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The ratio table as text.
pub fn table(label_a: &str, label_b: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Comparison (B/A; A and B ran back to back):");
    let _ = writeln!(out, "  A: {label_a}");
    let _ = writeln!(out, "  B: {label_b}");
    let width = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(10)
        .max(10);
    let _ = writeln!(
        out,
        "  {:<width$}  {:>12}  {:>12}  {:>8}",
        "metric", "A", "B", "B/A"
    );
    for row in rows {
        let ratio = row.ratio().map_or("-".to_owned(), |r| format!("{r:.2}x"));
        let better = match row.ratio() {
            Some(r)
                if (r > 1.05 && row.higher_is_better) || (r < 0.95 && !row.higher_is_better) =>
            {
                "  (B better)"
            }
            Some(r)
                if (r < 0.95 && row.higher_is_better) || (r > 1.05 && !row.higher_is_better) =>
            {
                "  (A better)"
            }
            _ => "",
        };
        let _ = writeln!(
            out,
            "  {:<width$}  {:>12}  {:>12}  {:>8}{better}",
            row.metric,
            cell(row.a),
            cell(row.b),
            ratio
        );
    }
    out
}

/// Runs both sides and reports.
pub fn run(config: &Config) -> Result<bool, RunError> {
    let (side_a, side_b) = (&config.compare[0], &config.compare[1]);
    let (label_a, label_b) = (label(side_a), label(side_b));
    let a = cli::run_side(config, side_a)?;
    let b = cli::run_side(config, side_b)?;
    let rows = rows(&a, &b);
    let mut text = String::new();
    if config.formats.normal {
        let _ = writeln!(text, "=== A: {label_a} ===");
        text.push_str(&output::normal(&a));
        let _ = writeln!(text, "\n=== B: {label_b} ===");
        text.push_str(&output::normal(&b));
        text.push('\n');
        text.push_str(&table(&label_a, &label_b, &rows));
    }
    if config.formats.json || config.formats.json_plus {
        let plus = config.formats.json_plus;
        let value = json!({
            "fio version": output::version(),
            "compare": {
                "a": {"overrides": label_a, "report": output::json(&a, plus)},
                "b": {"overrides": label_b, "report": output::json(&b, plus)},
                "rows": rows.iter().map(|r| json!({
                    "metric": r.metric, "a": r.a, "b": r.b, "ratio": r.ratio(),
                    "higher_is_better": r.higher_is_better,
                })).collect::<Vec<Value>>(),
            }
        });
        text.push_str(&serde_json::to_string_pretty(&value).expect("JSON serialises"));
        text.push('\n');
    }
    cli::emit(config, &text)?;
    if let Some(path) = &config.latency_svg {
        svg::write(path, &[(label_a.as_str(), &a), (label_b.as_str(), &b)])?;
    }
    Ok(a.ok() && b.ok())
}
