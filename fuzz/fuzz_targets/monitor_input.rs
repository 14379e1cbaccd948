//! What the monitor reads from the network: scrape bodies, remote-write requests, OTLP trace
//! exports, PromQL queries, rule files, and WAL segments on disk. Any bytes give a value or an
//! error, never a panic; what parses holds what it promises.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_monitor::model::{Labels, Queryable, Series};
use strata_monitor::promql::Engine;

/// A few series to evaluate fuzzed queries against.
struct Fixed(Vec<Series>);

impl Queryable for Fixed {
    fn select(
        &self,
        matchers: &[promql_parser::label::Matcher],
        mint: i64,
        maxt: i64,
    ) -> Vec<Series> {
        self.0
            .iter()
            .filter(|s| s.labels.matches(matchers))
            .map(|s| Series {
                labels: s.labels.clone(),
                samples: s
                    .samples
                    .iter()
                    .copied()
                    .filter(|(t, _)| *t >= mint && *t <= maxt)
                    .collect(),
            })
            .collect()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 5 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(parsed) = strata_monitor::exposition::parse(text) {
                    assert!(parsed.samples.iter().all(|s| !s.name.is_empty()));
                }
            }
        }
        1 => {
            if let Ok((batch, _)) = strata_monitor::remote::decode(rest, 1 << 20) {
                assert!(batch.iter().all(|(l, _, _)| l.name().is_some()));
            }
        }
        2 => {
            let _ = strata_monitor::traces::decode_protobuf(rest);
            let _ = strata_monitor::traces::decode_json(rest);
        }
        3 => {
            let Ok(query) = std::str::from_utf8(rest) else {
                return;
            };
            if query.len() > 512 {
                return;
            }
            let series: Vec<Series> = (0..3)
                .map(|i| Series {
                    labels: Labels::from_pairs(&[("__name__", "m"), ("i", &i.to_string())]),
                    samples: (0..20).map(|k| (k * 15_000, (k * (i + 1)) as f64)).collect(),
                })
                .collect();
            let engine = Engine {
                lookback_ms: 300_000,
            };
            let store = Fixed(series);
            let _ = engine.instant(&store, query, 200_000);
            let _ = engine.range(&store, query, 0, 300_000, 60_000);
        }
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(groups) = strata_monitor::rules::parse_file("fuzz.yml", text) {
                    // What a rule file was accepted with is PromQL the engine parses.
                    for rule in groups.iter().flat_map(|g| &g.rules) {
                        assert!(strata_monitor::promql::parse_expr(&rule.expr).is_ok());
                    }
                }
            }
        }
    }
});
