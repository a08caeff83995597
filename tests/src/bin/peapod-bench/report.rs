//! Latency samples, percentiles and the result table.

use std::fmt::Write as _;
use std::time::Duration;

/// Latency samples of one kind of call.
#[derive(Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    /// The `p`-th percentile (nearest rank), or zero without samples.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.0.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// What a row is compared against.
pub enum Target {
    None,
    /// p50 at most this long.
    P50Under(Duration),
    /// At least this many per second.
    RateOver(f64),
    /// At most this many bytes.
    BytesUnder(u64),
}

pub enum Value {
    Latency(Samples),
    Rate(f64),
    Bytes(Option<u64>),
}

pub struct Row {
    pub what: String,
    pub value: Value,
    pub target: Target,
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", b as f64 / 1024.0)
    }
}

impl Row {
    fn value_text(&self) -> String {
        match &self.value {
            Value::Latency(s) if s.len() == 0 => "no samples".to_owned(),
            Value::Latency(s) => format!(
                "p50 {} / p99 {} (n={})",
                ms(s.percentile(50.0)),
                ms(s.percentile(99.0)),
                s.len()
            ),
            Value::Rate(r) => format!("{r:.1}/s"),
            Value::Bytes(Some(b)) => bytes(*b),
            Value::Bytes(None) => "n/a".to_owned(),
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::None => String::new(),
            Target::P50Under(d) => format!("p50 <= {}", ms(d)),
            Target::RateOver(r) => format!(">= {r:.0}/s"),
            Target::BytesUnder(b) => format!("<= {}", bytes(b)),
        }
    }

    /// Whether the row meets its target; `None` without a target or a value.
    pub fn meets(&self) -> Option<bool> {
        match (&self.value, &self.target) {
            (Value::Latency(s), Target::P50Under(d)) if s.len() > 0 => {
                Some(s.percentile(50.0) <= *d)
            }
            (Value::Rate(r), Target::RateOver(t)) => Some(r >= t),
            (Value::Bytes(Some(b)), Target::BytesUnder(t)) => Some(b <= t),
            _ => None,
        }
    }
}

/// The rows as an aligned text table.
pub fn table(rows: &[Row]) -> String {
    let header = ["measure", "result", "target", "met"];
    let cells: Vec<[String; 4]> = rows
        .iter()
        .map(|r| {
            let met = match r.meets() {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "",
            };
            [
                r.what.clone(),
                r.value_text(),
                r.target_text(),
                met.to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, row: [&str; 4]| {
        let _ = writeln!(
            out,
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    };
    line(&mut out, header);
    let rule = widths.map(|w| "-".repeat(w));
    line(&mut out, [&rule[0], &rule[1], &rule[2], &rule[3]]);
    for row in &cells {
        line(&mut out, [&row[0], &row[1], &row[2], &row[3]]);
    }
    out
}
