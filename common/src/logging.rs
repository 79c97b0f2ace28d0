//! Log setup for the server binaries (`pact`, `participant`,
//! `coordinator`): only a binary calls [`init`], so a library never
//! decides where its users' logs go.
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default [`DEFAULT_FILTER`]),
//! as text (ANSI colours only when stderr is a terminal and `NO_COLOR` is
//! unset, so log files hold no escape codes) or as one JSON object per
//! line. Warnings and errors pass a [`RateLimit`]: the same warning
//! repeated (one dead peer made openraft warn 1,107 times in 5 minutes)
//! shows [`BURST`] times per [`INTERVAL`], then once as a count of what was
//! suppressed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata};
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// What is logged when `RUST_LOG` is unset: Pact at info, openraft's
/// chatter only from warnings up.
pub const DEFAULT_FILTER: &str = "info,openraft=warn";
/// How many of one warning pass per [`INTERVAL`].
pub const BURST: u32 = 10;
pub const INTERVAL: Duration = Duration::from_secs(60);
/// The target of the "suppressed" lines (never suppressed themselves).
pub const SUMMARY_TARGET: &str = "pact::log";
/// Most distinct warnings tracked at once; past that a new one passes
/// unlimited rather than grow the table.
const MAX_TRACKED: usize = 4096;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format '{other}' (text or json)")),
        }
    }
}

/// The logging flags every server binary takes (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct LogArgs {
    /// How log lines on stderr look: `text` or `json` (one object per
    /// line). `RUST_LOG` picks what is logged.
    #[arg(
        long,
        env = "PACT_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Install the logger these flags ask for (see [`init`]).
    pub fn init(&self) -> Result<(), String> {
        init(self.log_format)
    }
}

/// Install the process's logger (see the module doc). Fails if one is
/// installed already.
pub fn init(format: LogFormat) -> Result<(), String> {
    let (filter, ignored) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_FILTER), Some(format!("{v:?}: {e}"))),
        },
        _ => (EnvFilter::new(DEFAULT_FILTER), None),
    };
    let limit = RateLimit::new(BURST, INTERVAL);
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Text => registry
            .with(layer.with_ansi(ansi).with_filter(limit.clone()))
            .try_init(),
        LogFormat::Json => registry
            .with(layer.json().with_ansi(false).with_filter(limit.clone()))
            .try_init(),
    }
    .map_err(|e| format!("cannot install the logger: {e}"))?;
    if let Err(e) = limit.spawn_reporter(Duration::from_secs(1)) {
        tracing::warn!(error = %e, "repeated warnings are suppressed without a count");
    }
    if let Some(why) = ignored {
        tracing::warn!("RUST_LOG ignored ({why}); logging with {DEFAULT_FILTER}");
    }
    Ok(())
}

/// A per-layer filter that lets the first `burst` of each warning (or
/// error) through per `interval` and counts the rest; the count is logged
/// once the interval ends ([`RateLimit::report_due`]), as "suppressed K
/// similar messages". Two events are the same warning when they come from
/// the same place in the code with the same message up to its digits (a
/// message naming a different index, port or id is the same warning).
/// Info and below always pass.
#[derive(Clone)]
pub struct RateLimit {
    state: Arc<Mutex<Windows>>,
}

/// What one interval of one warning suppressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppressed {
    pub target: &'static str,
    /// The first suppressed message, as it was.
    pub sample: String,
    pub count: u64,
}

type Key = (&'static str, &'static str, String);

struct Windows {
    burst: u32,
    interval: Duration,
    open: HashMap<Key, Window>,
    /// Counts of windows that ended before a report took them.
    ended: Vec<Suppressed>,
}

struct Window {
    start: Instant,
    passed: u32,
    suppressed: u64,
    sample: String,
}

impl RateLimit {
    pub fn new(burst: u32, interval: Duration) -> Self {
        RateLimit {
            state: Arc::new(Mutex::new(Windows {
                burst,
                interval,
                open: HashMap::new(),
                ended: Vec::new(),
            })),
        }
    }

    /// Whether one event from `site` (target and callsite name) with
    /// `message` passes at `now`.
    fn admit(&self, target: &'static str, site: &'static str, message: &str, now: Instant) -> bool {
        let Ok(mut w) = self.state.lock() else {
            return true;
        };
        let Windows {
            burst,
            interval,
            open,
            ended,
        } = &mut *w;
        let key = (target, site, normalize(message));
        if open.len() >= MAX_TRACKED && !open.contains_key(&key) {
            return true;
        }
        let win = open.entry(key).or_insert_with(|| Window {
            start: now,
            passed: 0,
            suppressed: 0,
            sample: String::new(),
        });
        if now.duration_since(win.start) >= *interval {
            if win.suppressed > 0 {
                ended.push(Suppressed {
                    target,
                    sample: std::mem::take(&mut win.sample),
                    count: win.suppressed,
                });
            }
            *win = Window {
                start: now,
                passed: 0,
                suppressed: 0,
                sample: String::new(),
            };
        }
        if win.passed < *burst {
            win.passed += 1;
            true
        } else {
            if win.suppressed == 0 {
                win.sample = message.chars().take(300).collect();
            }
            win.suppressed += 1;
            false
        }
    }

    /// Take the counts of every interval that has ended by `now` with
    /// something suppressed, and forget warnings that went quiet.
    pub fn due(&self, now: Instant) -> Vec<Suppressed> {
        let Ok(mut w) = self.state.lock() else {
            return Vec::new();
        };
        let interval = w.interval;
        let mut out = std::mem::take(&mut w.ended);
        w.open.retain(|(target, _, _), win| {
            if now.duration_since(win.start) < interval {
                return true;
            }
            if win.suppressed > 0 {
                out.push(Suppressed {
                    target,
                    sample: std::mem::take(&mut win.sample),
                    count: win.suppressed,
                });
            }
            false
        });
        out
    }

    /// Log one line for each count [`RateLimit::due`] gives at `now`.
    pub fn report_due(&self, now: Instant) {
        let secs = self.state.lock().map(|w| w.interval.as_secs()).unwrap_or(0);
        for s in self.due(now) {
            tracing::warn!(
                target: SUMMARY_TARGET,
                suppressed = s.count,
                from = s.target,
                "suppressed {} similar messages in {secs}s; the first: {}: {}",
                s.count,
                s.target,
                s.sample
            );
        }
    }

    /// Report every `every` on a thread of its own, for the life of the
    /// process (a report must not run inside another event's logging).
    pub fn spawn_reporter(&self, every: Duration) -> std::io::Result<()> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("pact-log-limit".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                me.report_due(Instant::now());
            })
            .map(|_| ())
    }
}

impl<S> Filter<S> for RateLimit {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Level orders by verbosity: WARN and ERROR are the ones <= WARN.
        if *meta.level() > Level::WARN || meta.target() == SUMMARY_TARGET {
            return true;
        }
        let mut text = MessageText(String::new());
        event.record(&mut text);
        self.admit(meta.target(), meta.name(), &text.0, Instant::now())
    }
}

/// An event's `message` field, as text.
struct MessageText(String);

impl Visit for MessageText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        }
    }
}

/// `message` with each run of digits as one `#`.
fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_digits = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_junk_is_named() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        let e = "xml".parse::<LogFormat>().unwrap_err();
        assert!(e.contains("'xml'") && e.contains("text or json"), "{e}");
    }

    #[test]
    fn digits_do_not_make_a_warning_new() {
        assert_eq!(
            normalize("node 12 at 127.0.0.1:7022"),
            "node # at #.#.#.#:#"
        );
        assert_eq!(normalize("no digits"), "no digits");
    }

    #[test]
    fn a_burst_passes_then_the_rest_is_counted_once_per_interval() {
        let l = RateLimit::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let site = "event src/x.rs:1";
        let passed: Vec<bool> = (0..8)
            .map(|i| l.admit("openraft", site, &format!("peer {i} unreachable"), t0))
            .collect();
        assert_eq!(
            passed,
            [true, true, true, false, false, false, false, false]
        );
        // Another warning, or the same text from elsewhere, has its own count.
        assert!(l.admit("openraft", site, "something else", t0));
        assert!(l.admit("openraft", "event src/y.rs:9", "peer 1 unreachable", t0));
        // Nothing to report while the interval runs.
        assert_eq!(l.due(t0 + Duration::from_secs(5)), []);
        assert!(!l.admit(
            "openraft",
            site,
            "peer 9 unreachable",
            t0 + Duration::from_secs(5)
        ));
        let due = l.due(t0 + Duration::from_secs(10));
        assert_eq!(
            due,
            [Suppressed {
                target: "openraft",
                sample: "peer 3 unreachable".into(),
                count: 6,
            }]
        );
        // Reported once; a new interval starts with a fresh burst.
        assert_eq!(l.due(t0 + Duration::from_secs(11)), []);
        let t1 = t0 + Duration::from_secs(12);
        assert!(l.admit("openraft", site, "peer 1 unreachable", t1));
        // An interval that ends on the next event, before a report, keeps
        // its count for the report.
        for _ in 0..5 {
            l.admit("openraft", site, "peer 1 unreachable", t1);
        }
        assert!(l.admit(
            "openraft",
            site,
            "peer 1 unreachable",
            t1 + Duration::from_secs(30)
        ));
        let due = l.due(t1 + Duration::from_secs(31));
        assert_eq!(due.len(), 1, "{due:?}");
        assert_eq!(due[0].count, 3);
    }

    /// A writer into a shared buffer, standing in for stderr.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn through_a_subscriber_repeats_are_cut_and_summed_and_info_is_untouched() {
        let out = Captured::default();
        let limit = RateLimit::new(BURST, Duration::from_secs(3600));
        let subscriber = tracing_subscriber::registry().with(
            fmt::layer()
                .with_writer(out.clone())
                .with_ansi(false)
                .with_filter(limit.clone()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..25 {
                tracing::warn!(target: "openraft::replication", "peer {i} unreachable");
                tracing::info!("applied entry {i}");
            }
            tracing::error!("disk on fire");
            limit.report_due(Instant::now() + Duration::from_secs(3600));
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let count = |s: &str| text.lines().filter(|l| l.contains(s)).count();
        assert_eq!(count("unreachable"), BURST as usize + 1, "{text}");
        assert_eq!(count("applied entry"), 25, "{text}");
        assert_eq!(count("disk on fire"), 1, "{text}");
        assert_eq!(count("suppressed 15 similar messages"), 1, "{text}");
        assert!(
            text.contains("openraft::replication: peer 10 unreachable"),
            "the summary names the first it suppressed:\n{text}"
        );
        assert!(!text.contains('\u{1b}'), "no ANSI escapes:\n{text}");
    }
}
