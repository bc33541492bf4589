//! The adaptive in-flight limit: how many provider requests a pass keeps open at once.
//!
//! A fixed `--concurrency` is wrong for most providers: 32 requests against one that
//! answers in 300 ms cap a pass at about 100 requests/s whatever `--rate` says, and 512
//! against one that answers in 1 ms only queue work in this process and the database.
//! The limit follows the latency, in the manner of Netflix's concurrency-limits
//! (gradient limiters) and TCP Vegas:
//!
//! - the short-term latency is an average over the last [`SHORT_SAMPLES`] answers (a
//!   provider whose answers vary between 100 and 300 ms reads as a steady 200);
//! - the baseline is the lowest short-term latency of the last one to two
//!   [`BASELINE_WINDOW`]s: what answers take when nothing queues. (Gradient2's long-term
//!   *average* follows the short-term one up as requests queue in this process, so a
//!   pass that is its own bottleneck would grow without end; a windowed minimum does
//!   not, and still learns, a window later, a provider that became slower.)
//! - `ratio = short / baseline`. Up to [`TOLERANCE`] nothing queues: the limit grows,
//!   by two per answer at first (tripling every round trip: a slow start, as TCP's), then,
//!   after the first sign of queueing, by about √limit per round trip;
//! - beyond it, `gradient = max(TOLERANCE / ratio, 0.5)` and the limit moves a
//!   [`SMOOTHING`] share of the way to `limit × gradient + √limit` per round trip;
//! - latency alone never holds it below [`FLOOR`] (128): slow start goes on up to it
//!   whatever the latency, and the gradient stops there. A pass whose own machine is
//!   the bottleneck sees its queueing as the provider's, and spent more CPU per send
//!   for fewer sends/s below it;
//! - above the floor, slow start ends too once the short-term latency is
//!   [`SLOW_START_EXIT`] times what it was at the floor (TCP's HyStart): a baseline
//!   learnt while the machine was already busy let slow start run on to 300 and more
//!   at 1 ms;
//! - a timeout or a 429 multiplies it by [`BACKOFF`], at most once per latency, and
//!   lowers the floor to where it took the limit;
//! - it does not grow while fewer than half its places are used (the pass is limited
//!   by something else: the rate, the claim, the end of the work);
//! - it stays within `[min, max]`: `max` is `--concurrency`, and with a rate limit it
//!   never exceeds twice what Little's law needs (`rate × latency`);
//! - with a memory budget (`--memory-budget`), the process's resident memory is read
//!   every [`MEMORY_CHECK_EVERY`]; over the budget, the allocator first gives back the
//!   free pages it keeps ([`crate::alloc::release_free_memory`]) and the memory is read
//!   again; still over and a step higher than at the last back-off, the limit backs off
//!   and never grows back past where it then stands.
//!
//! [`Gradient`] is the arithmetic alone, driven by samples and the times given to it,
//! so tests need no clock; [`Limiter`] holds it behind the permits the gate hands out.

mod gradient;

pub use gradient::{
    BACKOFF, BASELINE_WINDOW, FLOOR, Gradient, LimitSettings, SHORT_SAMPLES, SLOW_START_EXIT,
    SLOW_START_STEP, SMOOTHING, Sample, TOLERANCE,
};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often, at most, the limiter reads the process's resident memory.
pub const MEMORY_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Over the budget, the limit backs off again only once the memory has grown by
/// another `budget / MEMORY_STEPS` since the last back-off.
pub const MEMORY_STEPS: u64 = 16;

/// How the limiter reads the process's memory, and gives back what it freed. Plain
/// functions, so tests give their own.
#[derive(Debug, Clone, Copy)]
pub struct MemoryProbe {
    /// The resident memory, in bytes.
    pub resident: fn() -> Option<u64>,
    /// Gives the free memory the allocator keeps back to the system.
    pub reclaim: fn(),
}

impl MemoryProbe {
    /// This process's, from Linux and jemalloc.
    pub const PROCESS: Self = Self {
        resident: resident_bytes,
        reclaim: crate::alloc::release_free_memory,
    };
}

/// The places: at most `limit()` calls hold one at a time. A call (one item's request
/// with its retries, as a worker of a fixed `--concurrency` was) holds its place from
/// its first attempt to its outcome; each attempt's latency is a sample.
#[derive(Debug)]
pub struct Limiter {
    state: Mutex<State>,
    freed: Notify,
}

#[derive(Debug)]
struct State {
    gradient: Gradient,
    in_flight: usize,
    peak_limit: usize,
    memory: Option<Memory>,
}

/// The memory budget, and what the limiter last read of the process's memory.
#[derive(Debug)]
struct Memory {
    budget: u64,
    probe: MemoryProbe,
    next_check: Option<Instant>,
    /// The resident memory when the limit last backed off for it.
    backed_off_at: u64,
}

impl Memory {
    /// Whether the process is over its budget and has grown by a step since the last
    /// back-off.
    fn over(&mut self, now: Instant) -> bool {
        if self.next_check.is_some_and(|t| now < t) {
            return false;
        }
        self.next_check = Some(now + MEMORY_CHECK_EVERY);
        // Growth smaller than a step is the allocator's drift, not requests: backing
        // off for each would take the limit down to nothing while the memory stands.
        let step = self.budget / MEMORY_STEPS;
        // Over it, the allocator first gives back its free pages, and the memory is
        // read again: what the allocator keeps of answers already freed is not the
        // pass's.
        let rss = match (self.probe.resident)() {
            Some(rss) if rss > self.budget => {
                (self.probe.reclaim)();
                (self.probe.resident)().or(Some(rss))
            }
            rss => rss,
        };
        match rss {
            Some(rss) if rss > self.budget && rss >= self.backed_off_at + step => {
                self.backed_off_at = rss;
                true
            }
            _ => false,
        }
    }
}

/// One call's place under the limit; given back when dropped (a call abandoned
/// mid-flight included).
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Limiter {
    pub fn new(settings: LimitSettings) -> Self {
        Self::with_probe(settings, MemoryProbe::PROCESS)
    }

    /// The same, reading the process's memory with `probe` (tests give their own).
    pub fn with_probe(settings: LimitSettings, probe: MemoryProbe) -> Self {
        let gradient = Gradient::new(settings);
        let memory = settings
            .memory_budget
            .filter(|_| settings.adaptive)
            .map(|budget| Memory {
                budget,
                probe,
                next_check: None,
                backed_off_at: 0,
            });
        Self {
            state: Mutex::new(State {
                peak_limit: gradient.limit(),
                gradient,
                in_flight: 0,
                memory,
            }),
            freed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a place under the limit.
    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            // Registered as a waiter before looking, so a place freed between the look
            // and the wait is not missed (`notify_one` only reaches registered waiters,
            // or leaves a single permit).
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            {
                let mut state = self.state();
                if state.in_flight < state.gradient.limit() {
                    state.in_flight += 1;
                    return Permit { limiter: self };
                }
            }
            freed.await;
        }
    }

    /// Learns from one attempt that ended at `now`.
    pub fn sample(&self, sample: Sample, now: Instant) {
        let grew = {
            let mut state = self.state();
            let before = state.gradient.limit();
            let in_flight = state.in_flight;
            state.gradient.sample(sample, in_flight, now);
            if state.memory.as_mut().is_some_and(|m| m.over(now)) {
                state.gradient.over_memory();
            }
            let limit = state.gradient.limit();
            state.peak_limit = state.peak_limit.max(limit);
            limit.saturating_sub(before)
        };
        // As many waiters as there are new places look again, not all of them: with
        // hundreds waiting (a ceiling far above the limit), waking every one for each
        // place cost about 3% of the pass's CPU.
        for _ in 0..grew {
            self.freed.notify_one();
        }
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.state().gradient.limit()
    }

    /// The highest the limit reached.
    pub fn peak(&self) -> usize {
        self.state().peak_limit
    }
}

/// The process's resident memory (Linux `/proc/self/statm`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it answers -1 for an unknown name.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(page).ok().map(|page| pages * page)
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut state = self.limiter.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        drop(state);
        // One place freed: one waiter (or, if none waits yet, the next to look) takes
        // it. Waking all of them for one place would cost every release the whole queue.
        self.limiter.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An adaptive limit up to 100, without a memory budget.
    fn adaptive() -> LimitSettings {
        LimitSettings {
            min: 1,
            max: 100,
            rate: None,
            adaptive: true,
            memory_budget: None,
        }
    }

    #[tokio::test]
    async fn places_stop_at_the_limit_and_come_back_when_dropped() {
        let limiter = Limiter::new(LimitSettings::fixed(2));
        let a = limiter.acquire().await;
        let _b = limiter.acquire().await;
        let third = limiter.acquire();
        tokio::pin!(third);
        assert!(futures::poll!(third.as_mut()).is_pending());
        // Abandoned mid-flight: its place comes back all the same.
        drop(a);
        let _c = third.await;
        assert_eq!(limiter.state().in_flight, 2);
    }

    #[tokio::test]
    async fn every_place_given_back_lets_one_waiter_in() {
        let limiter = Limiter::new(LimitSettings::fixed(2));
        let a = limiter.acquire().await;
        let b = limiter.acquire().await;
        let (third, fourth) = (limiter.acquire(), limiter.acquire());
        tokio::pin!(third, fourth);
        assert!(futures::poll!(third.as_mut()).is_pending());
        assert!(futures::poll!(fourth.as_mut()).is_pending());
        drop((a, b));
        let (_c, _d) = tokio::join!(third, fourth);
        assert_eq!(limiter.state().in_flight, 2);
    }

    #[tokio::test]
    async fn a_limit_that_grows_lets_the_waiting_in() {
        let limiter = Limiter::new(adaptive());
        let start = limiter.limit();
        let held: Vec<_> = futures::future::join_all((0..start).map(|_| limiter.acquire())).await;
        let next = limiter.acquire();
        tokio::pin!(next);
        assert!(futures::poll!(next.as_mut()).is_pending());
        // Steady answers with every place used: slow start grows the limit.
        limiter.sample(Sample::Answered(Duration::from_millis(5)), Instant::now());
        assert_eq!(limiter.limit(), start + SLOW_START_STEP as usize);
        let _in = next.await;
        assert_eq!(limiter.peak(), start + SLOW_START_STEP as usize);
        drop(held);
    }

    #[tokio::test]
    async fn a_limit_grown_by_two_lets_two_waiters_in_and_the_rest_wait() {
        let limiter = Limiter::new(adaptive());
        let start = limiter.limit();
        let held: Vec<_> = futures::future::join_all((0..start).map(|_| limiter.acquire())).await;
        let (first, second, third) = (limiter.acquire(), limiter.acquire(), limiter.acquire());
        tokio::pin!(first, second, third);
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(second.as_mut()).is_pending());
        assert!(futures::poll!(third.as_mut()).is_pending());
        let answer = Sample::Answered(Duration::from_millis(5));
        limiter.sample(answer, Instant::now());
        assert_eq!(limiter.limit(), start + 2);
        // Two new places: the first two waiters take them; the third still waits.
        let _one = first.await;
        let _two = second.await;
        assert!(futures::poll!(third.as_mut()).is_pending());
        assert_eq!(limiter.state().in_flight, start + 2);
        limiter.sample(answer, Instant::now());
        let _three = third.await;
        assert_eq!(limiter.state().in_flight, start + 3);
        drop(held);
    }

    /// An adaptive limiter with a memory budget of 1,000 bytes, read with `probe`.
    fn within_1000_bytes(probe: MemoryProbe) -> Limiter {
        Limiter::with_probe(
            LimitSettings {
                memory_budget: Some(1_000),
                ..adaptive()
            },
            probe,
        )
    }

    static RSS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[tokio::test]
    async fn memory_over_the_budget_and_growing_takes_places_away() {
        use std::sync::atomic::Ordering;
        let limiter = within_1000_bytes(MemoryProbe {
            resident: || Some(RSS.load(Ordering::Relaxed)),
            reclaim: || {},
        });
        let start = limiter.limit();
        let _held: Vec<_> = futures::future::join_all((0..start).map(|_| limiter.acquire())).await;
        let t = Instant::now();
        let answer = Sample::Answered(Duration::from_millis(5));
        // Under the budget: slow start, SLOW_START_STEP more per answer.
        let step = SLOW_START_STEP as usize;
        RSS.store(900, Ordering::Relaxed);
        limiter.sample(answer, t);
        assert_eq!(limiter.limit(), start + step);
        // Over it, but read only once per MEMORY_CHECK_EVERY: the next answer within
        // that time still grows the limit.
        RSS.store(2_000, Ordering::Relaxed);
        limiter.sample(answer, t + Duration::from_millis(1));
        assert_eq!(limiter.limit(), start + 2 * step);
        let later = t + MEMORY_CHECK_EVERY + Duration::from_millis(1);
        limiter.sample(answer, later);
        let capped = limiter.limit();
        assert!(capped < start + 2 * step, "{capped}");
        // Over the budget, not growing: held where it is, not lowered further.
        for i in 2..10 {
            limiter.sample(answer, later + MEMORY_CHECK_EVERY * i);
        }
        assert_eq!(limiter.limit(), capped);
        // Drifting up by less than a step (budget / MEMORY_STEPS): held all the same.
        RSS.store(2_010, Ordering::Relaxed);
        limiter.sample(answer, later + MEMORY_CHECK_EVERY * 15);
        assert_eq!(limiter.limit(), capped);
        // Growing again: lower once more.
        RSS.store(3_000, Ordering::Relaxed);
        limiter.sample(answer, later + MEMORY_CHECK_EVERY * 20);
        assert!(limiter.limit() < capped);
    }

    static HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static FREED_BUT_KEPT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static RECLAIMS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[tokio::test]
    async fn memory_the_allocator_can_give_back_is_given_back_before_the_limit_backs_off() {
        use std::sync::atomic::Ordering;
        let limiter = within_1000_bytes(MemoryProbe {
            resident: || {
                Some(HELD.load(Ordering::Relaxed) + FREED_BUT_KEPT.load(Ordering::Relaxed))
            },
            reclaim: || {
                RECLAIMS.fetch_add(1, Ordering::Relaxed);
                FREED_BUT_KEPT.store(0, Ordering::Relaxed);
            },
        });
        let start = limiter.limit();
        let _held: Vec<_> = futures::future::join_all((0..start).map(|_| limiter.acquire())).await;
        let answer = Sample::Answered(Duration::from_millis(5));
        let step = SLOW_START_STEP as usize;
        let mut t = Instant::now();
        // Under the budget: nothing to give back, the allocator is left alone.
        HELD.store(900, Ordering::Relaxed);
        limiter.sample(answer, t);
        assert_eq!(RECLAIMS.load(Ordering::Relaxed), 0);
        assert_eq!(limiter.limit(), start + step);
        // Over it only by what was freed and kept: given back, and the limit grows on.
        FREED_BUT_KEPT.store(500, Ordering::Relaxed);
        t += MEMORY_CHECK_EVERY;
        limiter.sample(answer, t);
        assert_eq!(RECLAIMS.load(Ordering::Relaxed), 1);
        assert_eq!(limiter.limit(), start + 2 * step);
        // Over it by what the pass holds: given back all the same, then the limit backs
        // off.
        HELD.store(1_500, Ordering::Relaxed);
        FREED_BUT_KEPT.store(500, Ordering::Relaxed);
        t += MEMORY_CHECK_EVERY;
        limiter.sample(answer, t);
        assert_eq!(RECLAIMS.load(Ordering::Relaxed), 2);
        assert!(limiter.limit() < start + 2 * step, "{}", limiter.limit());
        assert_eq!(FREED_BUT_KEPT.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_resident_memory_of_this_process_is_read() {
        let rss = resident_bytes().expect("Linux /proc/self/statm");
        // A test binary holds more than a megabyte and less than a terabyte.
        assert!((1 << 20..1 << 40).contains(&rss), "{rss}");
    }
}
