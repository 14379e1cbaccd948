//! [`RepeatLimit`]: a repeated condition is logged once when it starts, counted while it lasts,
//! and summarised when it ends.
//!
//! Some conditions produce a log event per request or per round (a dead follower makes
//! openraft log an error on every read-index round, hundreds a second). An operator needs to
//! know that it started, that it is still going, and when it stopped, not every instance.
//! So for WARN and ERROR events, per call site: the first event passes; while more keep
//! coming (each less than [`QUIET`] after the previous), they are counted instead of printed
//! and a reporter prints one WARN line per [`REPORT_EVERY`] with the count and the latest
//! text; once the call site has been quiet for [`QUIET`], one INFO line says it stopped.
//! INFO and lower levels are never limited.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::callsite::Identifier;
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// A call site silent for this long has stopped repeating.
pub const QUIET: Duration = Duration::from_secs(10);
/// How often the counts of suppressed events are reported.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Target of the reporter's own lines (never limited).
const TARGET: &str = "strata::log";
/// Targets whose events limit themselves (`strata_raft::SlowSteps`: five lines a second per
/// step, with a count of the rest); limiting them again by call site would hide the steps
/// other than the first.
const SELF_LIMITED: &[&str] = &["strata::slow"];

struct Site {
    /// `file:line` of the call site.
    source: String,
    /// When the latest event arrived.
    last_seen: Instant,
    /// Events suppressed since the last report.
    suppressed: u64,
    /// Events suppressed since the condition started.
    total: u64,
    /// Text of the latest suppressed event (message and fields).
    latest: String,
}

/// The filter; clones share state with the reporter.
#[derive(Clone, Default)]
pub struct RepeatLimit {
    sites: Arc<Mutex<HashMap<Identifier, Site>>>,
    /// Drop openraft's per-call network errors: the transport reports each peer once when it
    /// stops answering and once when it is back (`strata_raft::network`), so these only
    /// repeat that, once per call. Also drops openraft's notes on benign races of an
    /// election. Set for the default log filter only.
    quiet_openraft_network: bool,
}

/// Texts of openraft WARN/ERROR events that only say a call to a peer failed, or that a
/// reply arrived after the election it belonged to was over (openraft 0.9.25, pinned).
const OPENRAFT_NETWORK: &[&str] = &[
    "Unreachable",
    "NetworkError",
    "RPCError",
    "timeout while confirming leadership",
    "Timeout",
    "will be ignored because vote changed",
    "membership_log_id changed",
];

/// What the reporter has to say.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Still repeating: `count` suppressed since the last report.
    Repeating {
        source: String,
        count: u64,
        latest: String,
    },
    /// Quiet again after `total` suppressed repeats.
    Stopped { source: String, total: u64 },
}

impl RepeatLimit {
    /// A filter that also drops openraft's per-call network errors (see the field).
    pub fn quiet_openraft_network() -> RepeatLimit {
        RepeatLimit {
            quiet_openraft_network: true,
            ..RepeatLimit::default()
        }
    }

    /// Decides whether an event passes, at `now`.
    fn admit(&self, event: &Event<'_>, now: Instant) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN
            || meta.target() == TARGET
            || SELF_LIMITED.contains(&meta.target())
        {
            return true;
        }
        if self.quiet_openraft_network && meta.target().starts_with("openraft") {
            let text = render(event);
            if OPENRAFT_NETWORK.iter().any(|needle| text.contains(needle)) {
                return false;
            }
        }
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        match sites.get_mut(&meta.callsite()) {
            Some(site) if now.duration_since(site.last_seen) < QUIET => {
                site.last_seen = now;
                site.suppressed += 1;
                site.total += 1;
                site.latest = render(event);
                false
            }
            _ => {
                sites.insert(
                    meta.callsite(),
                    Site {
                        source: source_of(meta),
                        last_seen: now,
                        suppressed: 0,
                        total: 0,
                        latest: String::new(),
                    },
                );
                true
            }
        }
    }

    /// Collects what to report at `now` and forgets call sites that went quiet.
    pub fn report(&self, now: Instant) -> Vec<Report> {
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        let mut reports = Vec::new();
        sites.retain(|_, site| {
            if site.suppressed > 0 {
                reports.push(Report::Repeating {
                    source: site.source.clone(),
                    count: site.suppressed,
                    latest: std::mem::take(&mut site.latest),
                });
                site.suppressed = 0;
            }
            let quiet = now.duration_since(site.last_seen) >= QUIET;
            if quiet && site.total > 0 {
                reports.push(Report::Stopped {
                    source: site.source.clone(),
                    total: site.total,
                });
            }
            !quiet
        });
        reports
    }

    /// Prints the reports every [`REPORT_EVERY`] on a thread of its own, for the life of the
    /// process.
    pub fn spawn_reporter(&self) {
        let limit = self.clone();
        let spawned = std::thread::Builder::new()
            .name("log-repeats".into())
            .spawn(move || loop {
                std::thread::park_timeout(REPORT_EVERY);
                for report in limit.report(Instant::now()) {
                    emit(report);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the log repeat reporter; repeats are not counted");
        }
    }
}

fn emit(report: Report) {
    match report {
        Report::Repeating {
            source,
            count,
            latest,
        } => tracing::warn!(
            target: TARGET,
            source = %source,
            repeats = count,
            latest = %latest,
            "the message above keeps repeating ({count} more in the last {}s, not printed)",
            REPORT_EVERY.as_secs()
        ),
        Report::Stopped { source, total } => tracing::info!(
            target: TARGET,
            source = %source,
            repeats = total,
            "the repeating message from {source} stopped after {total} repeats"
        ),
    }
}

fn source_of(meta: &Metadata<'_>) -> String {
    match (meta.file(), meta.line()) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        _ => meta.target().to_string(),
    }
}

/// The event's message and fields as one line.
fn render(event: &Event<'_>) -> String {
    struct Fields(String);
    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            if field.name() == "message" {
                let _ = write!(self.0, "{value:?}");
            } else {
                let _ = write!(self.0, "{}={value:?}", field.name());
            }
        }
    }
    let mut fields = Fields(String::new());
    event.record(&mut fields);
    fields.0
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        self.admit(event, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    /// Collects the messages the filtered layer lets through.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> Layer<S> for Seen {
        fn on_event(&self, event: &Event<'_>, _cx: Context<'_, S>) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(render(event));
        }
    }

    fn flood(count: usize) {
        for i in 0..count {
            tracing::error!(target = 2, round = i, "timeout while confirming leadership");
        }
    }

    #[test]
    fn a_flood_prints_its_first_line_then_a_count_then_an_end() {
        let limit = RepeatLimit::default();
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(seen.clone().with_filter(limit.clone()));
        tracing::subscriber::with_default(subscriber, || {
            flood(400);
            tracing::info!("an info line is never limited");
            tracing::info!("an info line is never limited");
            tracing::warn!("another call site starts its own condition");
        });
        let lines = seen.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].contains("round=0"), "{lines:#?}");

        let now = Instant::now();
        let reports = limit.report(now);
        assert_eq!(reports.len(), 1, "{reports:?}");
        match &reports[0] {
            Report::Repeating { count, latest, .. } => {
                assert_eq!(*count, 399);
                assert!(latest.contains("round=399"), "{latest}");
            }
            other => panic!("expected a repeat count, got {other:?}"),
        }
        // Quiet for long enough: each condition is declared over once, then forgotten.
        let later = now + QUIET + Duration::from_secs(1);
        let reports = limit.report(later);
        assert_eq!(reports.len(), 1, "{reports:?}");
        assert!(
            matches!(&reports[0], Report::Stopped { total: 399, .. }),
            "{reports:?}"
        );
        assert!(limit.report(later).is_empty());
    }

    #[test]
    fn slow_step_warnings_limit_themselves_and_pass_unlimited() {
        let limit = RepeatLimit::default();
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(seen.clone().with_filter(limit.clone()));
        tracing::subscriber::with_default(subscriber, || {
            for step in ["raft_log_commit", "raft_apply", "raft_log_commit"] {
                tracing::warn!(target: "strata::slow", step, "slow step: writes waited on it");
            }
        });
        let lines = seen.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(limit.report(Instant::now()).is_empty());
    }

    #[test]
    fn a_condition_that_returns_after_a_quiet_spell_prints_again() {
        let limit = RepeatLimit::default();
        let seen = Seen::default();
        let subscriber =
            tracing_subscriber::registry().with(seen.clone().with_filter(limit.clone()));
        tracing::subscriber::with_default(subscriber, || {
            flood(3);
            // Pretend the call site went quiet long ago.
            for site in limit
                .sites
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values_mut()
            {
                if let Some(earlier) = site.last_seen.checked_sub(QUIET) {
                    site.last_seen = earlier;
                }
            }
            flood(3);
        });
        let lines = seen.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(lines.len(), 2, "{lines:#?}");
    }
}
