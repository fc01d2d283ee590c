//! Log lines that an upstream can cause on every request, written at most once per interval
//! per subject, with the number of events since the last line.

use foldhash::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a subject's line may be written.
pub const LOG_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct LogThrottle {
    /// Per subject: when its line was last written, and events since.
    seen: Mutex<HashMap<String, (Instant, u64)>>,
}

impl LogThrottle {
    /// Notes an event of `subject` at `now`; returns how many events the line to write now
    /// stands for (this one included), or `None` while the subject's interval runs.
    pub fn note(&self, subject: &str, now: Instant) -> Option<u64> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.get_mut(subject) {
            Some((last, count)) if now.duration_since(*last) < LOG_EVERY => {
                *count += 1;
                None
            }
            Some((last, count)) => {
                let events = *count + 1;
                *last = now;
                *count = 0;
                Some(events)
            }
            None => {
                seen.insert(subject.to_owned(), (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_per_subject_with_the_count() {
        let t = LogThrottle::default();
        let start = Instant::now();
        assert_eq!(t.note("m@p", start), Some(1));
        for i in 1..=5 {
            assert_eq!(t.note("m@p", start + Duration::from_secs(i)), None);
        }
        assert_eq!(t.note("other@p", start), Some(1));
        assert_eq!(t.note("m@p", start + LOG_EVERY), Some(6));
        assert_eq!(
            t.note("m@p", start + LOG_EVERY + Duration::from_secs(1)),
            None
        );
    }
}
