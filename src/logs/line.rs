//! One line of a followed log: the kubelet's timestamp, the message, and
//! the line's position in its container instance (SPEC §4).
//!
//! With `timestamps=true` the kubelet prefixes every line with the time the
//! runtime wrote it, in Go's RFC3339Nano (`2026-01-02T03:04:05.00031676Z`:
//! 0–9 fractional digits, trailing zeros trimmed, no fraction on a whole
//! second) and one space.
//!
//! # Positions and resuming
//!
//! A line's position is (timestamp ns, `seq_at_timestamp`): the 1-based
//! count of the lines of the instance carrying exactly that timestamp
//! ([`Checkpoint`]). `sinceTime` has whole seconds only, so a resumed
//! request starts at the second of the last position and re-delivers every
//! line of that second; counting from that boundary gives every re-delivered
//! line the same `seq` it had the first time, and [`Counter`] with a
//! [`SkipRule`] drops the ones already appended or shipped.
//!
//! Skipping only applies while catching up: once a line beyond the resume
//! point is seen, the rest of the stream is new. (A runtime that wrote
//! timestamps out of order would otherwise lose its late lines.)
//!
//! Position 0 at a timestamp (`seq_at_timestamp` 0) is never a line's: it
//! sorts before the first line of that timestamp and after every earlier
//! one, which is where the follower puts a gap marker (`follow`).
//!
//! # Rotated away: telling a gap from a resume
//!
//! The kubelet serves every line still in the current log file from
//! `sinceTime` on, and a rotated-away file is simply not served (only the
//! current file is: `kubectl logs` has the same limit). A resume from a
//! line's position `P` asks for `P`'s second, so while `P`'s line is still
//! served the first line of the answer is at or before `P`. When the first
//! timed line served is *later* than `P`, the file holding `P` rotated away
//! while kubeherald was not reading: the lines between `P` and that first
//! line may be lost ([`Counter::checking_rotation`], [`Counter::take_gap`]).
//!
//! Limits of this heuristic: a rotation that cut exactly after `P` loses
//! nothing and is still reported (a gap of zero lines, said as a gap); the
//! follower does not check after a stream that ended cleanly (EOF) while
//! the container ran, since the kubelet ends a follow on rotation after the
//! old file was sent to its end (SPEC §10), which would make every rotation
//! look like a gap; lines written to the old file between such an EOF and
//! the rotation are then not seen. Runtimes that write timestamps out of
//! order can make a first line look later than `P`. A position without a
//! line (`seq_at_timestamp` 0: a marker, "from now") is never checked.

use crate::logs::Checkpoint;

/// Nanoseconds in a second.
const NANOS: i64 = 1_000_000_000;

/// How every gap marker's message starts (`follow`).
pub const GAP_MARKER_PREFIX: &str = "[kubeherald] gap: ";

/// Parses an RFC 3339 timestamp with 0–9 fractional digits (`Z` or a
/// `±HH:MM` offset) into nanoseconds since the Unix epoch.
pub fn parse_timestamp(text: &[u8]) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let bytes = text.get(range)?;
        let mut value = 0i64;
        for &b in bytes {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + i64::from(b - b'0');
        }
        Some(value)
    };
    if text.len() < 20
        || text[4] != b'-'
        || text[7] != b'-'
        || !matches!(text[10], b'T' | b't')
        || text[13] != b':'
        || text[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    // Go accepts no leap second in RFC 3339 either.
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut nanos = 0i64;
    if text[at] == b'.' {
        at += 1;
        let start = at;
        while at < text.len() && text[at].is_ascii_digit() {
            at += 1;
        }
        let count = at - start;
        if count == 0 || count > 9 {
            return None;
        }
        nanos = digits(start..at)? * 10i64.pow((9 - count) as u32);
    }
    let offset_seconds = match text.get(at..)? {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let hours = digits2(*h1, *h2)?;
            let minutes = digits2(*m1, *m2)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(NANOS)?.checked_add(nanos)
}

fn digits2(a: u8, b: u8) -> Option<i64> {
    (a.is_ascii_digit() && b.is_ascii_digit())
        .then(|| i64::from(a - b'0') * 10 + i64::from(b - b'0'))
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (`civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `sinceTime` for whole `seconds` since the epoch: `2026-01-02T03:04:05Z`.
pub fn since_time(seconds: i64) -> String {
    let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
    let rest = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Splits `TIMESTAMP MESSAGE` (without the newline); `None` when the line
/// does not start with a parseable timestamp, and then the whole line is
/// the message.
pub fn split_line(line: &[u8]) -> (Option<i64>, &[u8]) {
    // The longest RFC3339Nano with an offset is 35 bytes.
    let window = &line[..line.len().min(40)];
    if let Some(space) = window.iter().position(|&b| b == b' ')
        && let Some(timestamp) = parse_timestamp(&line[..space])
    {
        return (Some(timestamp), &line[space + 1..]);
    }
    (None, line)
}

/// What a resumed stream skips while it catches up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipRule {
    /// Nothing: the stream starts at the container's first line.
    Nothing,
    /// Every line at or before this position (appended or shipped).
    Through(Checkpoint),
    /// Only CloudWatch's last event is known (no checkpoint): lines before
    /// its millisecond are skipped; of the lines of that very millisecond,
    /// those up to the last one whose message is `message` are skipped (all
    /// of them shipped if none matches: a duplicate rather than a gap).
    CloudWatch { timestamp_ms: i64, message: String },
}

impl SkipRule {
    /// `sinceTime` seconds of a request resuming after this rule.
    pub fn since_seconds(&self) -> Option<i64> {
        match self {
            SkipRule::Nothing => None,
            SkipRule::Through(position) => Some(position.since_time_seconds()),
            SkipRule::CloudWatch { timestamp_ms, .. } => Some(timestamp_ms.div_euclid(1000)),
        }
    }
}

/// One parsed line with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub timestamp: i64,
    pub seq: u32,
    pub message: String,
}

/// What [`Counter::push`] decided for a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// New: append it.
    Keep(Parsed),
    /// Already appended or shipped.
    Skip,
    /// Held until the CloudWatch millisecond is settled ([`Counter::settle`]).
    Held,
}

/// Counts positions along one stream (one request) and applies the skip
/// rule while catching up.
#[derive(Debug)]
pub struct Counter {
    rule: SkipRule,
    catching_up: bool,
    last_timestamp: Option<i64>,
    seq: u32,
    /// Lines of the CloudWatch millisecond, undecided.
    held: Vec<Parsed>,
    /// Timestamps given to lines that had none (counted by the caller).
    pub unparsable: u64,
    /// The first timed line is still to be compared with the resume point.
    check_rotation: bool,
    /// (resume point, first line served) when the resume point's line was
    /// no longer served; taken by the caller.
    gap: Option<(i64, i64)>,
}

impl Counter {
    /// A counter for a stream requested after `rule` (with its `sinceTime`).
    pub fn new(rule: SkipRule) -> Counter {
        let catching_up = rule != SkipRule::Nothing;
        Counter {
            rule,
            catching_up,
            last_timestamp: None,
            seq: 0,
            held: Vec::new(),
            unparsable: 0,
            check_rotation: false,
            gap: None,
        }
    }

    /// Compares the first timed line with the resume point and records a
    /// gap when that point's line is no longer served (see "Rotated away").
    pub fn checking_rotation(mut self, check: bool) -> Counter {
        self.check_rotation = check;
        self
    }

    /// The gap found by the rotation check, once: (resume point, first line
    /// served), in nanoseconds. The first line served is kept.
    pub fn take_gap(&mut self) -> Option<(i64, i64)> {
        self.gap.take()
    }

    /// Whether the line at `timestamp` (the first timed line of the answer)
    /// is later than the resume point, whose line would have been served.
    fn check_first(&mut self, timestamp: i64) {
        if !std::mem::take(&mut self.check_rotation) {
            return;
        }
        let resume_point = match &self.rule {
            SkipRule::Through(position) if position.seq_at_timestamp > 0 => {
                (timestamp > position.timestamp_ns).then_some(position.timestamp_ns)
            }
            // A marker stands at a time of no line ("from now", the end of
            // a pod): nothing is served at it.
            SkipRule::CloudWatch { message, .. } if message.starts_with(GAP_MARKER_PREFIX) => None,
            SkipRule::CloudWatch { timestamp_ms, .. } => {
                let ms = timestamp.div_euclid(1_000_000);
                (ms > *timestamp_ms).then(|| timestamp_ms.saturating_mul(1_000_000))
            }
            SkipRule::Through(_) | SkipRule::Nothing => None,
        };
        self.gap = resume_point.map(|from| (from, timestamp));
    }

    /// Whether lines are held for [`settle`](Self::settle).
    pub fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// Takes one line (without newline) and decides what becomes of it.
    /// `fallback` is the timestamp of a line without one when no line
    /// before it had one either.
    pub fn push(&mut self, line: &[u8], fallback: i64) -> Verdict {
        let (timestamp, message) = split_line(line);
        let timestamp = match timestamp {
            Some(timestamp) => {
                self.check_first(timestamp);
                timestamp
            }
            None => {
                // Kept with the previous line's time, so it stays in order.
                self.unparsable += 1;
                self.last_timestamp.unwrap_or(fallback)
            }
        };
        if self.last_timestamp == Some(timestamp) {
            self.seq = self.seq.saturating_add(1);
        } else {
            self.last_timestamp = Some(timestamp);
            self.seq = 1;
        }
        let parsed = Parsed {
            timestamp,
            seq: self.seq,
            message: String::from_utf8_lossy(message).into_owned(),
        };
        if !self.catching_up {
            return Verdict::Keep(parsed);
        }
        match &self.rule {
            SkipRule::Nothing => Verdict::Keep(parsed),
            SkipRule::Through(position) => {
                if position.already_shipped(parsed.timestamp, parsed.seq) {
                    Verdict::Skip
                } else {
                    self.catching_up = false;
                    Verdict::Keep(parsed)
                }
            }
            SkipRule::CloudWatch { timestamp_ms, .. } => {
                let ms = parsed.timestamp.div_euclid(1_000_000);
                if ms < *timestamp_ms {
                    Verdict::Skip
                } else if ms == *timestamp_ms {
                    self.held.push(parsed);
                    Verdict::Held
                } else {
                    // Past the millisecond: the caller settles the held
                    // lines first, then keeps this one.
                    self.catching_up = false;
                    Verdict::Keep(parsed)
                }
            }
        }
    }

    /// Decides the held lines of the CloudWatch millisecond: those after
    /// the last one whose message matches CloudWatch's last event are new.
    /// Called when a later line arrives, when the stream ends, or when it
    /// has been quiet for a while.
    pub fn settle(&mut self) -> Vec<Parsed> {
        let mut held = std::mem::take(&mut self.held);
        if let SkipRule::CloudWatch { message, .. } = &self.rule {
            // An empty line is shipped as a single space; a long one in
            // parts, the last part being what CloudWatch shows.
            let matches = |line: &Parsed| {
                line.message == *message
                    || (message == " " && line.message.is_empty())
                    || (!message.is_empty() && line.message.ends_with(message.as_str()))
            };
            if let Some(last) = held.iter().rposition(matches) {
                held.drain(..=last);
            }
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(timestamp_ns: i64, seq_at_timestamp: u32) -> Checkpoint {
        Checkpoint {
            timestamp_ns,
            seq_at_timestamp,
        }
    }

    const T0: i64 = 1_767_323_045; // 2026-01-02T03:04:05Z

    #[test]
    fn timestamps_with_any_fraction_parse_to_nanoseconds() {
        let cases: [(&str, i64); 7] = [
            ("2026-01-02T03:04:05Z", T0 * NANOS),
            ("2026-01-02T03:04:05.1Z", T0 * NANOS + 100_000_000),
            ("2026-01-02T03:04:05.00031676Z", T0 * NANOS + 316_760),
            ("2026-01-02T03:04:05.123456789Z", T0 * NANOS + 123_456_789),
            ("2026-01-02T04:04:05+01:00", T0 * NANOS),
            ("1970-01-01T00:00:00Z", 0),
            ("1969-12-31T23:59:59.5Z", -NANOS / 2),
        ];
        for (text, want) in cases {
            assert_eq!(parse_timestamp(text.as_bytes()), Some(want), "{text}");
        }
        for bad in [
            "",
            "2026-01-02T03:04:05",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05.1234567890Z",
            "2026-02-30T03:04:05Z",
            "2026-01-02 03:04:05Z",
            "2026-01-02T24:04:05Z",
            "hello world, not a time",
        ] {
            assert_eq!(parse_timestamp(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn since_time_formats_whole_seconds() {
        assert_eq!(since_time(T0), "2026-01-02T03:04:05Z");
        assert_eq!(since_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(since_time(951_782_400), "2000-02-29T00:00:00Z");
        for seconds in [-86_401, 0, 68_169_600, T0, 4_102_444_800] {
            let text = since_time(seconds);
            assert_eq!(parse_timestamp(text.as_bytes()), Some(seconds * NANOS));
        }
    }

    #[test]
    fn lines_are_split_and_unparsable_ones_kept_whole() {
        assert_eq!(
            split_line(b"2026-01-02T03:04:05.5Z hello world"),
            (Some(T0 * NANOS + 500_000_000), &b"hello world"[..])
        );
        assert_eq!(
            split_line(b"2026-01-02T03:04:05Z "),
            (Some(T0 * NANOS), &b""[..])
        );
        assert_eq!(split_line(b"no time here"), (None, &b"no time here"[..]));
        assert_eq!(split_line(b""), (None, &b""[..]));
    }

    fn kept(counter: &mut Counter, lines: &[&str]) -> Vec<(i64, u32, String)> {
        let mut out = Vec::new();
        for line in lines {
            if let Verdict::Keep(p) = counter.push(line.as_bytes(), 0) {
                out.push((p.timestamp, p.seq, p.message));
            }
        }
        out
    }

    #[test]
    fn seq_counts_lines_sharing_a_timestamp_and_resume_skips_through_the_position() {
        let lines = [
            "2026-01-02T03:04:05.1Z a",
            "2026-01-02T03:04:05.1Z b",
            "2026-01-02T03:04:05.1Z c",
            "2026-01-02T03:04:05.2Z d",
            "garbage without a time",
            "2026-01-02T03:04:06Z e",
        ];
        let mut first = Counter::new(SkipRule::Nothing);
        let all = kept(&mut first, &lines);
        let t = T0 * NANOS + 100_000_000;
        assert_eq!(
            all.iter().map(|l| (l.0, l.1)).collect::<Vec<_>>(),
            [
                (t, 1),
                (t, 2),
                (t, 3),
                (t + 100_000_000, 1),
                (t + 100_000_000, 2),
                (T0 * NANOS + NANOS, 1)
            ]
        );
        assert_eq!(first.unparsable, 1);
        assert_eq!(all[4].2, "garbage without a time");
        // Resumed after "b": the second is re-delivered, a and b skipped.
        let mut resumed = Counter::new(SkipRule::Through(at(t, 2)));
        let again = kept(&mut resumed, &lines);
        assert_eq!(again, all[2..].to_vec());
        // Once past the position, nothing more is skipped (out-of-order times).
        let mut late = Counter::new(SkipRule::Through(at(t, 1)));
        let got = kept(
            &mut late,
            &[
                "2026-01-02T03:04:05.1Z a",
                "2026-01-02T03:04:05.1Z b",
                "2026-01-02T03:04:04Z late",
            ],
        );
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn a_resume_point_no_longer_served_is_a_gap_once() {
        let p = at(T0 * NANOS + 100_000_000, 2);
        // Still served: the answer starts at or before the resume point.
        let mut served = Counter::new(SkipRule::Through(p)).checking_rotation(true);
        kept(
            &mut served,
            &[
                "2026-01-02T03:04:05.1Z a",
                "2026-01-02T03:04:05.1Z b",
                "2026-01-02T03:04:09Z c",
            ],
        );
        assert_eq!(served.take_gap(), None);
        // Rotated away: the first line served is later; said once.
        let mut rotated = Counter::new(SkipRule::Through(p)).checking_rotation(true);
        let got = kept(
            &mut rotated,
            &["2026-01-02T03:04:09Z c", "2026-01-02T03:04:10Z d"],
        );
        assert_eq!(got.len(), 2, "nothing after the resume point is skipped");
        assert_eq!(rotated.take_gap(), Some((p.timestamp_ns, (T0 + 4) * NANOS)));
        assert_eq!(rotated.take_gap(), None);
        // Not asked to check (after a clean EOF), or a position of no line.
        let mut unchecked = Counter::new(SkipRule::Through(p));
        kept(&mut unchecked, &["2026-01-02T03:04:09Z c"]);
        assert_eq!(unchecked.take_gap(), None);
        let from_now = at(T0 * NANOS, 0);
        let mut marker = Counter::new(SkipRule::Through(from_now)).checking_rotation(true);
        kept(&mut marker, &["2026-01-02T03:04:09Z c"]);
        assert_eq!(marker.take_gap(), None);
        // CloudWatch's last event: compared by millisecond.
        let rule = SkipRule::CloudWatch {
            timestamp_ms: T0 * 1000 + 100,
            message: "b".into(),
        };
        let mut same_ms = Counter::new(rule.clone()).checking_rotation(true);
        same_ms.push(b"2026-01-02T03:04:05.1005Z b", 0);
        assert_eq!(same_ms.take_gap(), None);
        let mut later = Counter::new(rule).checking_rotation(true);
        later.push(b"2026-01-02T03:04:07Z c", 0);
        assert_eq!(
            later.take_gap(),
            Some(((T0 * 1000 + 100) * 1_000_000, (T0 + 2) * NANOS))
        );
        // CloudWatch's last event is a marker: no line was at its time.
        let mut after_marker = Counter::new(SkipRule::CloudWatch {
            timestamp_ms: T0 * 1000 + 100,
            message: format!("{GAP_MARKER_PREFIX}the pod was deleted ..."),
        })
        .checking_rotation(true);
        after_marker.push(b"2026-01-02T03:04:07Z c", 0);
        assert_eq!(after_marker.take_gap(), None);
    }

    #[test]
    fn cloudwatch_millisecond_is_settled_by_message() {
        let rule = SkipRule::CloudWatch {
            timestamp_ms: T0 * 1000 + 100,
            message: "b".into(),
        };
        assert_eq!(rule.since_seconds(), Some(T0));
        let mut counter = Counter::new(rule.clone());
        assert_eq!(
            counter.push(b"2026-01-02T03:04:05.05Z old", 0),
            Verdict::Skip
        );
        assert_eq!(counter.push(b"2026-01-02T03:04:05.1Z a", 0), Verdict::Held);
        assert_eq!(
            counter.push(b"2026-01-02T03:04:05.1001Z b", 0),
            Verdict::Held
        );
        assert_eq!(
            counter.push(b"2026-01-02T03:04:05.1002Z c", 0),
            Verdict::Held
        );
        assert!(counter.is_holding());
        let settled = counter.settle();
        assert_eq!(
            settled
                .iter()
                .map(|p| p.message.as_str())
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert!(matches!(
            counter.push(b"2026-01-02T03:04:05.2Z d", 0),
            Verdict::Keep(_)
        ));
        // No match: everything of that millisecond is shipped again.
        let mut counter = Counter::new(SkipRule::CloudWatch {
            timestamp_ms: T0 * 1000 + 100,
            message: "zzz".into(),
        });
        counter.push(b"2026-01-02T03:04:05.1Z a", 0);
        assert_eq!(counter.settle().len(), 1);
    }
}
