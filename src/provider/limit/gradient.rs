//! The limit's arithmetic, driven by samples and the times given to it (no clock, no
//! locks): see the module above for the rule it follows.

use std::time::Duration;
use tokio::time::Instant;

/// Answers the short-term latency averages over.
pub const SHORT_SAMPLES: f64 = 50.0;
/// How long the baseline remembers a minimum (it keeps this window and the last).
pub const BASELINE_WINDOW: Duration = Duration::from_secs(30);
/// How much slower than the baseline answers may come before the limit shrinks: with
/// a baseline that is a minimum, 2 leaves room for a provider's usual spread and still
/// stops requests queueing for more than the provider's own latency.
pub const TOLERANCE: f64 = 2.0;
/// Beyond the tolerance, the share of the way to its new estimate the limit moves per
/// round trip (within it, the limit grows the whole √limit).
pub const SMOOTHING: f64 = 0.2;
/// The factor a timeout or 429 multiplies the limit by.
pub const BACKOFF: f64 = 0.9;
/// Above the floor, slow start ends once the short-term latency is this many times
/// what it was at the floor (as TCP's HyStart ends slow start on a rise of the delay,
/// before the losses).
pub const SLOW_START_EXIT: f64 = 1.25;
/// Latency alone never holds the limit below this: slow start goes on up to it, and
/// the gradient never takes the limit under it. Timeouts, 429s and the memory budget
/// do, and lower it for the rest of the pass to where they took the limit.
///
/// Requests queueing in this process read as a provider queueing them: a pass whose
/// machine is its bottleneck held 50 to 180 in flight against a provider answering in
/// 1 ms, each answer costing more CPU (more wakeups, fewer answers per poll) for fewer
/// sends/s than at 128 (README, "Benchmark": 2 cores, fixed 48 20% slower, 96 to 256
/// the same). Slow start still begins at 20 and grows only with answers, so a provider
/// that fails from the start is not met by 128 places at once.
pub const FLOOR: f64 = 128.0;

/// What one request came to, as the limit sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// Answered (whatever the answer said) after this long.
    Answered(Duration),
    /// Too much: it timed out, or the provider said 429.
    Overloaded,
    /// Says nothing about load (a connection refused, a 5xx: the breaker's business).
    Ignored,
}

/// The bounds and the starting point of the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitSettings {
    pub min: usize,
    pub max: usize,
    /// The configured rate (requests/s), if any: the limit starts at, and stays under,
    /// twice `rate × latency`.
    pub rate: Option<f64>,
    /// Adaptive; when false the limit is `max`, always (the old fixed `--concurrency`).
    pub adaptive: bool,
    /// The resident memory (bytes) above which the limit backs off and stops growing
    /// (see [`Gradient::over_memory`]); `None` for no budget.
    pub memory_budget: Option<u64>,
}

impl LimitSettings {
    /// A fixed limit of `n`.
    pub fn fixed(n: usize) -> Self {
        Self {
            min: n.max(1),
            max: n.max(1),
            rate: None,
            adaptive: false,
            memory_budget: None,
        }
    }
}

/// The limit's arithmetic.
#[derive(Debug, Clone)]
pub struct Gradient {
    settings: LimitSettings,
    limit: f64,
    /// Short-term latency, seconds; `None` before the first answer.
    short: Option<f64>,
    /// Answers seen (the short average is a plain mean until it has `SHORT_SAMPLES`).
    answers: u64,
    /// The lowest short-term latency in this window and in the one before, and when
    /// this window started.
    baseline: [f64; 2],
    window_started: Option<Instant>,
    /// Growing by [`SLOW_START_STEP`] per answer, until the first sign of queueing.
    slow_start: bool,
    /// When the limit may next back off (one back-off per latency).
    backoff_after: Option<Instant>,
    /// The highest the limit may go given the memory the process holds: lowered by
    /// [`Gradient::over_memory`], never raised (`INFINITY` until then).
    memory_ceiling: f64,
    /// Below this, latency does not hold the limit back ([`FLOOR`], lowered to where a
    /// back-off took the limit).
    floor: f64,
    /// The short-term latency when slow start passed the floor: above the floor, slow
    /// start ends once answers come [`SLOW_START_EXIT`] times slower than that.
    short_at_floor: Option<f64>,
}

/// What slow start adds per answer: two, so the limit triples every round trip (768
/// from 20 within four). Doubling (one per answer, as TCP) took about 1.6 s at 300 ms:
/// a pass over 30,000 sends then finished 1.4 s after one at a fixed 768, 89% of its
/// sends/s. Overshooting by a round trip's growth costs one back-off, where the
/// gradient takes it back; answers that fail (5xx) are no samples, so this does not
/// speed up a storm.
pub const SLOW_START_STEP: f64 = 2.0;

/// Where the limit starts before any answer: slow start triples it every round trip
/// (768 within four). Not higher: the breaker judges only once its first window (10 s)
/// has passed (and again at the end of the pass), and under a 5xx storm more places
/// from the start spend more sends' retries before it opens: at 64, over a fifth of a
/// 500-send backlog was through its retries by then under stress-ng
/// (`a_5xx_storm_opens_the_breaker`). At 300 ms, 64 would reach 768 about 0.5 s sooner.
const START: usize = 20;

impl Gradient {
    pub fn new(settings: LimitSettings) -> Self {
        let start = if settings.adaptive {
            START
        } else {
            settings.max
        };
        Self {
            limit: start.clamp(settings.min.max(1), settings.max.max(1)) as f64,
            settings,
            short: None,
            answers: 0,
            baseline: [f64::INFINITY; 2],
            window_started: None,
            slow_start: true,
            backoff_after: None,
            memory_ceiling: f64::INFINITY,
            floor: FLOOR,
            short_at_floor: None,
        }
    }

    /// The process holds more memory than its budget, and more than when this was
    /// last said: the limit backs off (as for a timeout) and never grows back past
    /// where it now stands. Requests in flight are most of what a pass holds (a
    /// connection, its buffers, the answer), so fewer of them hold less; memory that
    /// stops growing once over the budget costs nothing more.
    pub fn over_memory(&mut self) {
        if !self.settings.adaptive {
            return;
        }
        self.back_off();
        self.memory_ceiling = self.memory_ceiling.min(self.limit.floor().max(1.0));
        self.bound();
    }

    /// A back-off, for a timeout, a 429 or memory: slow start ends, the limit loses
    /// [`BACKOFF`], and latency may hold it there ([`FLOOR`] lowered to it).
    fn back_off(&mut self) {
        self.slow_start = false;
        self.limit *= BACKOFF;
        self.floor = self.floor.min(self.limit);
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).clamp(self.settings.min.max(1), self.settings.max.max(1))
    }

    /// Takes one request's sample; `in_flight` is how many were open when it ended
    /// (itself included), `now` when it ended.
    pub fn sample(&mut self, sample: Sample, in_flight: usize, now: Instant) {
        if !self.settings.adaptive {
            return;
        }
        match sample {
            Sample::Ignored => {}
            Sample::Overloaded => {
                if self.backoff_after.is_none_or(|t| now >= t) {
                    self.back_off();
                    let wait = Duration::from_secs_f64(self.short.unwrap_or(0.1));
                    self.backoff_after = Some(now + wait);
                }
            }
            Sample::Answered(rtt) => self.answered(rtt.as_secs_f64().max(1e-6), in_flight, now),
        }
        self.bound();
    }

    fn answered(&mut self, rtt: f64, in_flight: usize, now: Instant) {
        self.answers += 1;
        let n = (self.answers as f64).min(SHORT_SAMPLES);
        let short = match self.short {
            None => rtt,
            Some(short) => short + (rtt - short) / n,
        };
        self.short = Some(short);
        let started = *self.window_started.get_or_insert(now);
        if now.duration_since(started) >= BASELINE_WINDOW {
            self.baseline = [f64::INFINITY, self.baseline[0]];
            self.window_started = Some(now);
            // The baseline may have moved (a provider that became slower): probe again
            // as at the start, from the latency now.
            self.slow_start = true;
            self.short_at_floor = None;
        }
        self.baseline[0] = self.baseline[0].min(short);
        let baseline = self.baseline[0].min(self.baseline[1]);
        // Limited by something else: probing higher would measure nothing.
        if (in_flight as f64) < self.limit / 2.0 {
            return;
        }
        let ratio = short / baseline;
        // Under the floor, slow start goes on whatever the latency says; above it, until
        // answers come slower than at the floor (requests queue somewhere) or than the
        // baseline allows.
        if self.slow_start && self.limit < self.floor {
            self.limit += SLOW_START_STEP;
            return;
        }
        let at_floor = *self.short_at_floor.get_or_insert(short);
        if self.slow_start && ratio <= TOLERANCE && short <= SLOW_START_EXIT * at_floor {
            self.limit += SLOW_START_STEP;
            return;
        }
        self.slow_start = false;
        // One step per round trip (`limit` answers), spread over its answers: the whole
        // way to `limit + √limit` while nothing queues past the tolerance, a SMOOTHING
        // share of the way to where the gradient points beyond it.
        let gradient = (TOLERANCE / ratio).clamp(0.5, 1.0);
        let new = self.limit * gradient + self.limit.sqrt();
        let share = if gradient < 1.0 { SMOOTHING } else { 1.0 };
        let step = share * (new - self.limit) / self.limit;
        // Latency alone never takes the limit under the floor.
        self.limit = (self.limit + step).max(self.floor.min(self.limit));
    }

    fn bound(&mut self) {
        let min = self.settings.min.max(1) as f64;
        let mut max = (self.settings.max.max(1) as f64)
            .min(self.memory_ceiling)
            .max(min);
        // Little's law: `rate × latency` requests are in flight at the rate; twice that
        // leaves room for the latency to vary without holding memory for nothing.
        if let (Some(rate), Some(short)) = (self.settings.rate, self.short) {
            max = max.min((2.0 * rate * short).ceil().max(min));
        }
        self.limit = self.limit.clamp(min, max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adaptive(max: usize) -> LimitSettings {
        LimitSettings {
            min: 1,
            max,
            rate: None,
            adaptive: true,
            memory_budget: None,
        }
    }

    /// Drives `g` as a pass with unlimited work would: `limit` requests in flight, each
    /// answered after `rtt(in_flight)`. Answers the limits seen, one per sample.
    fn drive(g: &mut Gradient, samples: usize, rtt: impl Fn(usize) -> Duration) -> Vec<usize> {
        let start = Instant::now();
        (0..samples)
            .map(|i| {
                let in_flight = g.limit();
                let now = start + Duration::from_millis(i as u64);
                g.sample(Sample::Answered(rtt(in_flight)), in_flight, now);
                g.limit()
            })
            .collect()
    }

    /// A server that answers `capacity` requests at once in `latency`; more only queue
    /// (the latency grows with what is in flight).
    fn queueing(capacity: usize, latency: Duration) -> impl Fn(usize) -> Duration {
        move |in_flight| latency * in_flight.max(capacity) as u32 / capacity as u32
    }

    /// The lowest and highest limits of the second half of a run.
    fn settled(seen: &[usize]) -> (usize, usize) {
        let half = &seen[seen.len() / 2..];
        (*half.iter().min().unwrap(), *half.iter().max().unwrap())
    }

    /// The answer at which slow start (two more per answer) ended, and the limit then.
    fn slow_start_end(seen: &[usize]) -> (usize, usize) {
        let end = seen.windows(2).position(|w| w[1] < w[0] + 2);
        let end = end.expect("slow start never ended");
        (end, seen[end])
    }

    #[test]
    fn a_steady_provider_lets_the_limit_grow_to_its_maximum() {
        let mut g = Gradient::new(adaptive(1_000));
        assert_eq!(g.limit(), START);
        let seen = drive(&mut g, 4_000, |_| Duration::from_millis(300));
        assert_eq!(*seen.last().unwrap(), 1_000);
        // Doubling every round trip, it gets there in about a thousand answers (at
        // 300 ms and hundreds in flight, a second or two).
        assert!(
            seen.iter().position(|&l| l == 1_000).unwrap() < 1_000,
            "{seen:?}"
        );
    }

    #[test]
    fn answers_that_vary_widely_do_not_hold_the_limit_back() {
        // Between 100 and 300 ms, in no order (a cheap deterministic scramble).
        let mut i = 0u64;
        let mut g = Gradient::new(adaptive(1_000));
        let seen: Vec<usize> = (0..6_000)
            .map(|n| {
                i = i
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let rtt = Duration::from_millis(100 + (i >> 33) % 201);
                let in_flight = g.limit();
                g.sample(
                    Sample::Answered(rtt),
                    in_flight,
                    Instant::now() + Duration::from_millis(n),
                );
                g.limit()
            })
            .collect();
        assert_eq!(*seen.last().unwrap(), 1_000, "{:?}", &seen[5_900..]);
    }

    #[test]
    fn queueing_beyond_capacity_holds_the_limit_near_the_knee() {
        // A server that serves 100 at once in 10 ms; more only queue.
        let mut g = Gradient::new(adaptive(5_000));
        let seen = drive(&mut g, 20_000, queueing(100, Duration::from_millis(10)));
        let (lo, hi) = settled(&seen);
        // Never under the capacity (the pass gets all the server gives), never more
        // than twice the latency at the capacity (what queues stays bounded).
        assert!(lo >= 100 && hi <= 400, "settled between {lo} and {hi}");
    }

    #[test]
    fn latency_alone_never_takes_the_limit_under_the_floor() {
        // Ten at once in 1 ms; more only queue, as in a pass whose own machine is the
        // bottleneck against a provider answering in 1 ms.
        let busy = || queueing(10, Duration::from_millis(1));
        let mut g = Gradient::new(adaptive(1_000));
        let (lo, hi) = settled(&drive(&mut g, 20_000, busy()));
        assert!(
            lo == FLOOR as usize && hi <= 2 * FLOOR as usize,
            "settled between {lo} and {hi}"
        );
        // Under a ceiling below the floor, the ceiling holds.
        let mut g = Gradient::new(adaptive(64));
        assert_eq!(settled(&drive(&mut g, 20_000, busy())), (64, 64));
    }

    #[test]
    fn slow_start_ends_once_answers_slow_down_past_the_floor() {
        // 300 at once in 10 ms; more only queue. Slow start ends once answers are a
        // quarter slower than at the floor (at about 450 in flight: the short-term
        // average lags), not at twice the baseline (600, and more by that lag).
        let mut g = Gradient::new(adaptive(5_000));
        let seen = drive(&mut g, 2_000, queueing(300, Duration::from_millis(10)));
        let (_, exit) = slow_start_end(&seen);
        assert!((300..=500).contains(&exit), "slow start ended at {exit}");
    }

    #[test]
    fn past_slow_start_and_within_the_tolerance_the_limit_grows_by_its_root_per_round_trip() {
        // Answers 30% slower above 200 in flight (a pass's own machine getting busy)
        // end slow start there; within the tolerance the limit then grows by √limit
        // per round trip: from about 250 to 800 in some 12,500 answers (a 50 ms
        // provider at 8,000 sends/s: under two seconds). A fifth of that, as the
        // gradient's smoothing, took five times as long: 10,000 answers left it near 400.
        let mut g = Gradient::new(adaptive(800));
        let seen = drive(&mut g, 20_000, |in_flight| {
            Duration::from_millis(if in_flight <= 200 { 10 } else { 13 })
        });
        let (exit, limit) = slow_start_end(&seen);
        assert!((200..=400).contains(&limit), "slow start ended at {limit}");
        let at_max = seen
            .iter()
            .position(|&l| l == 800)
            .expect("never reached 800");
        assert!(
            at_max - exit < 15_000,
            "800 after {} answers past slow start",
            at_max - exit
        );
        assert!(seen[at_max..].iter().all(|&l| l == 800));
    }

    #[test]
    fn timeouts_take_the_limit_under_the_floor() {
        let mut g = Gradient::new(adaptive(1_000));
        drive(&mut g, 4_000, |_| Duration::from_millis(100));
        let t = Instant::now();
        for i in 0..30 {
            g.sample(
                Sample::Overloaded,
                1_000,
                t + Duration::from_millis(150 * i),
            );
        }
        // 1,000 × 0.9^30.
        assert_eq!(g.limit(), 42);
    }

    #[test]
    fn a_provider_that_becomes_slower_is_learnt_within_two_windows() {
        let mut g = Gradient::new(adaptive(1_000));
        let start = Instant::now();
        let at = |t_ms: u64, g: &mut Gradient, ms: u64| {
            let in_flight = g.limit();
            g.sample(
                Sample::Answered(Duration::from_millis(ms)),
                in_flight,
                start + Duration::from_millis(t_ms),
            );
            g.limit()
        };
        let fast: Vec<usize> = (0..2_000).map(|i| at(i, &mut g, 50)).collect();
        assert_eq!(*fast.last().unwrap(), 1_000);
        // Six times slower from 2 s on, an answer every 10 ms: it reads as queueing and
        // the limit comes down, until the old baseline has left both windows; then it
        // grows back.
        let slow: Vec<usize> = (0..7_000)
            .map(|i| at(2_000 + 10 * i, &mut g, 300))
            .collect();
        // About a tenth less per round trip (a thousand answers here).
        let lowest = *slow.iter().min().unwrap();
        assert!(lowest < 700, "{lowest}");
        assert_eq!(*slow.last().unwrap(), 1_000);
    }

    #[test]
    fn timeouts_back_off_once_per_latency() {
        let mut g = Gradient::new(adaptive(1_000));
        drive(&mut g, 4_000, |_| Duration::from_millis(100));
        assert_eq!(g.limit(), 1_000);
        let t = Instant::now();
        // Ten timeouts at once count once.
        for _ in 0..10 {
            g.sample(Sample::Overloaded, 1_000, t);
        }
        assert_eq!(g.limit(), 900);
        // A latency later, once more.
        g.sample(Sample::Overloaded, 900, t + Duration::from_millis(150));
        assert_eq!(g.limit(), 810);
        // Failures that say nothing about load leave it.
        g.sample(Sample::Ignored, 810, t + Duration::from_millis(300));
        assert_eq!(g.limit(), 810);
    }

    #[test]
    fn a_limit_half_unused_does_not_grow() {
        let mut g = Gradient::new(adaptive(1_000));
        let t = Instant::now();
        for i in 0..1_000 {
            g.sample(
                Sample::Answered(Duration::from_millis(50)),
                5,
                t + Duration::from_millis(i),
            );
        }
        assert_eq!(g.limit(), START);
    }

    #[test]
    fn with_a_rate_the_limit_stays_near_what_littles_law_needs() {
        let mut g = Gradient::new(LimitSettings {
            rate: Some(500.0),
            ..adaptive(10_000)
        });
        drive(&mut g, 5_000, |_| Duration::from_millis(300));
        // 500/s × 0.3 s = 150 in flight; twice that at most.
        assert_eq!(g.limit(), 300);
    }

    #[test]
    fn over_its_memory_budget_the_limit_backs_off_and_stays_under() {
        let mut g = Gradient::new(adaptive(1_000));
        drive(&mut g, 4_000, |_| Duration::from_millis(300));
        assert_eq!(g.limit(), 1_000);
        g.over_memory();
        assert_eq!(g.limit(), 900);
        // Steady answers would grow it again; the memory ceiling holds it.
        drive(&mut g, 4_000, |_| Duration::from_millis(300));
        assert_eq!(g.limit(), 900);
        // Still growing over the budget: lower again.
        g.over_memory();
        assert_eq!(g.limit(), 810);
        // A fixed limit is the user's choice: memory does not move it.
        let mut fixed = Gradient::new(LimitSettings::fixed(32));
        fixed.over_memory();
        assert_eq!(fixed.limit(), 32);
    }

    #[test]
    fn a_fixed_limit_never_moves() {
        let mut g = Gradient::new(LimitSettings::fixed(32));
        let seen = drive(&mut g, 100, |n| Duration::from_millis(n as u64));
        assert!(seen.iter().all(|&l| l == 32));
        g.sample(Sample::Overloaded, 32, Instant::now());
        assert_eq!(g.limit(), 32);
    }
}
