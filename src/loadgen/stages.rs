//! Where the gateway's delivery time went during a run: its
//! `wa_gateway_delivery_stage_seconds{stage}` histogram, read from `GET /metrics` after the
//! run and summarised as bucket-bounded percentiles ("p99 ≤ 20 ms").

use std::fmt::Write as _;

/// The histogram's name in the exposition format.
const HISTOGRAM: &str = "wa_gateway_delivery_stage_seconds_bucket";

/// One stage's cumulative buckets, in the order the exposition lists them.
#[derive(Debug, Clone, PartialEq)]
pub struct StageHistogram {
    /// The `stage` label.
    pub stage: String,
    /// `(upper bound in seconds, cumulative count)`, ascending, `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

impl StageHistogram {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0, |(_, count)| *count)
    }

    /// The upper bound of the bucket holding quantile `q` (seconds; infinite past the last
    /// finite bucket), `None` without observations.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map(|(bound, _)| *bound)
    }
}

/// Parses every stage of the histogram out of a `/metrics` text.
pub fn parse(exposition: &str) -> Vec<StageHistogram> {
    let mut stages: Vec<StageHistogram> = Vec::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix(HISTOGRAM) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once(' ') else {
            continue;
        };
        let (Some(stage), Some(le)) = (label(labels, "stage"), label(labels, "le")) else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            match le.parse::<f64>() {
                Ok(bound) => bound,
                Err(_) => continue,
            }
        };
        let Ok(count) = value.trim().parse::<f64>() else {
            continue;
        };
        let entry = match stages.iter_mut().position(|known| known.stage == stage) {
            Some(index) => &mut stages[index],
            None => {
                stages.push(StageHistogram {
                    stage: stage.to_owned(),
                    buckets: Vec::new(),
                });
                stages.last_mut().expect("just pushed")
            }
        };
        entry.buckets.push((bound, count as u64));
    }
    stages
}

/// The value of `name="…"` in a `{…}` label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// One line: `read p50≤2ms p99≤20ms (n=…), record …`.
pub fn summary_line(stages: &[StageHistogram]) -> String {
    let mut line = String::new();
    for stage in stages.iter().filter(|stage| stage.count() > 0) {
        if !line.is_empty() {
            line.push_str(", ");
        }
        let _ = write!(
            line,
            "{} p50≤{} p99≤{} (n={})",
            stage.stage,
            bound_ms(stage.quantile_bound(0.50)),
            bound_ms(stage.quantile_bound(0.99)),
            stage.count()
        );
    }
    line
}

fn bound_ms(bound: Option<f64>) -> String {
    match bound {
        Some(bound) if bound.is_finite() => format!("{}ms", (bound * 10_000.0).round() / 10.0),
        Some(_) => "inf".to_owned(),
        None => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# TYPE wa_gateway_delivery_stage_seconds histogram
wa_gateway_delivery_stage_seconds_bucket{stage=\"read\",le=\"0.001\"} 10
wa_gateway_delivery_stage_seconds_bucket{stage=\"read\",le=\"0.01\"} 98
wa_gateway_delivery_stage_seconds_bucket{stage=\"read\",le=\"0.05\"} 100
wa_gateway_delivery_stage_seconds_bucket{stage=\"read\",le=\"+Inf\"} 100
wa_gateway_delivery_stage_seconds_sum{stage=\"read\"} 0.5
wa_gateway_delivery_stage_seconds_count{stage=\"read\"} 100
wa_gateway_delivery_stage_seconds_bucket{stage=\"worker\",le=\"0.001\"} 0
wa_gateway_delivery_stage_seconds_bucket{stage=\"worker\",le=\"+Inf\"} 0
wa_gateway_http_requests_total{method=\"GET\",status=\"2xx\"} 7
";

    #[test]
    fn parses_each_stage_and_bounds_its_quantiles() {
        let stages = parse(EXPOSITION);
        assert_eq!(stages.len(), 2);
        let read = &stages[0];
        assert_eq!(read.stage, "read");
        assert_eq!(read.count(), 100);
        assert_eq!(read.quantile_bound(0.05), Some(0.001));
        assert_eq!(read.quantile_bound(0.50), Some(0.01));
        assert_eq!(read.quantile_bound(0.99), Some(0.05));
        assert_eq!(stages[1].quantile_bound(0.5), None);
    }

    #[test]
    fn the_summary_names_only_stages_with_observations() {
        let line = summary_line(&parse(EXPOSITION));
        assert_eq!(line, "read p50≤10ms p99≤50ms (n=100)");
    }

    #[test]
    fn a_quantile_past_the_last_finite_bucket_is_unbounded() {
        let stage = StageHistogram {
            stage: "record".into(),
            buckets: vec![(0.001, 1), (f64::INFINITY, 4)],
        };
        assert_eq!(stage.quantile_bound(0.99), Some(f64::INFINITY));
        assert_eq!(summary_line(&[stage]), "record p50≤inf p99≤inf (n=4)");
    }
}
