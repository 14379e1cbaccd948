//! How long-running commands (`kv watch`, `svc watch`, `config listen`) report their
//! connection, in the same words everywhere: one line when it is lost, one when it is back,
//! nothing in between however long the retries take.

use std::time::{Duration, Instant};

/// The state of one streaming command's connection.
pub(crate) struct Link {
    /// Since when the connection has been down, once it was reported.
    lost_since: Option<Instant>,
    /// The next pause between retries (200 ms doubling to 2 s).
    pause: Duration,
}

const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(2);

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            lost_since: None,
            pause: FIRST_PAUSE,
        }
    }

    /// The connection failed or the stream ended: says so the first time, and returns how long
    /// to wait before the next try.
    pub(crate) fn lost(&mut self, why: &dyn std::fmt::Display) -> Duration {
        if self.lost_since.is_none() {
            eprintln!("connection lost ({why}); retrying until it is back (Ctrl-C to stop)");
            self.lost_since = Some(Instant::now());
        }
        let pause = self.pause;
        self.pause = (pause * 2).min(LONGEST_PAUSE);
        pause
    }

    /// A stream is delivering again: says so if it had been lost.
    pub(crate) fn up(&mut self, endpoint: &str) {
        self.pause = FIRST_PAUSE;
        if let Some(since) = self.lost_since.take() {
            eprintln!(
                "connection back ({endpoint}, after {:.1}s)",
                since.elapsed().as_secs_f64()
            );
        }
    }
}
