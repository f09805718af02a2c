//! The per-target state machine: rise/fall counting and the probe
//! schedule, pure and driven by the `now` it is given (tests run it on a
//! virtual clock).
//!
//! A target starts **up**, as keepalived starts real servers (unless
//! `alpha`): a server that is listed is presumed to serve, so a restart of
//! Sluice does not take every server out of rotation for `rise` intervals.
//! An up target goes down after `fall` consecutive failures; a down one
//! comes back after `rise` consecutive successes; a result that agrees with
//! the current state resets the opposite streak. The first probe is due at
//! once; each next one `interval` after the start of the previous, never
//! while one is in flight.

use std::time::{Duration, Instant};

/// A change of a target's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// It went down.
    Down,
    /// It came back up.
    Up,
}

/// Rise/fall counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RiseFall {
    up: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl Default for RiseFall {
    fn default() -> RiseFall {
        RiseFall {
            up: true,
            streak: 0,
        }
    }
}

impl RiseFall {
    /// Whether the target is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Counts one probe result; the transition it caused, if any.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Transition> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { fall } else { rise };
        if self.streak < needed.max(1) {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(if ok { Transition::Up } else { Transition::Down })
    }
}

/// When a target's probes run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    next: Instant,
    in_flight: bool,
}

impl Schedule {
    /// The first probe due at `now`.
    pub fn new(now: Instant) -> Schedule {
        Schedule {
            next: now,
            in_flight: false,
        }
    }

    /// Whether a probe should start at `now`.
    pub fn due(&self, now: Instant) -> bool {
        !self.in_flight && now >= self.next
    }

    /// A probe started at `now`; the next is due `interval` later.
    pub fn start(&mut self, now: Instant, interval: Duration) {
        self.in_flight = true;
        self.next = now + interval;
    }

    /// The probe in flight finished.
    pub fn finish(&mut self) {
        self.in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut h = RiseFall::default();
        assert!(h.is_up(), "starts up");
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert!(h.is_up());
        assert_eq!(h.record(false, 2, 3), Some(Transition::Down));
        assert!(!h.is_up());
        assert_eq!(h.record(false, 2, 3), None, "already down");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(Transition::Up));
        assert!(h.is_up());
    }

    #[test]
    fn an_agreeing_result_resets_the_streak() {
        let mut h = RiseFall::default();
        for _ in 0..10 {
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(false, 2, 3), None);
            assert_eq!(h.record(true, 2, 3), None, "flapping never falls");
        }
        assert!(h.is_up());
        h.record(false, 2, 1);
        assert!(!h.is_up(), "fall 1: one failure");
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(false, 3, 1), None, "a failure resets the rise");
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), None);
        assert_eq!(h.record(true, 3, 1), Some(Transition::Up));
    }

    /// Interval 2 s, probes taking 300 ms, fall 3: the server that dies
    /// just before t=10 s is probed at 10, 12, 14 and is down at 14.3 s,
    /// i.e. within fall × interval of its death; back at 20.5 s, it passes
    /// the probes at 22 and 24 and rise 2 brings it up at 24.3 s.
    #[test]
    fn transitions_on_a_virtual_clock() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let interval = Duration::from_secs(2);
        let mut s = Schedule::new(at(0));
        let mut h = RiseFall::default();
        let serving = |ms: u64| !(9_900..20_500).contains(&ms);
        let mut log = Vec::new();
        let mut ms = 0;
        while ms <= 30_000 {
            let now = at(ms);
            if s.due(now) {
                s.start(now, interval);
                assert!(!s.due(now), "one probe in flight at a time");
                // The probe ends 300 ms later (next loop steps).
                let ok = serving(ms);
                let done = ms + 300;
                assert!(!s.due(at(done)));
                s.finish();
                if let Some(t) = h.record(ok, 2, 3) {
                    log.push((done, t));
                }
            }
            ms += 100;
        }
        assert_eq!(
            log,
            vec![(14_300, Transition::Down), (24_300, Transition::Up)]
        );
    }

    #[test]
    fn the_first_probe_is_due_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0);
        assert!(s.due(t0));
        s.start(t0, Duration::from_secs(5));
        s.finish();
        assert!(!s.due(t0 + Duration::from_millis(4_999)));
        assert!(s.due(t0 + Duration::from_secs(5)));
    }
}
