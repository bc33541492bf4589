//! The process's allocator: jemalloc, with its settings built in, for every binary that
//! links this library (the job, and its tests).
//!
//! Why not glibc's malloc: a pass allocates and frees each answer's buffers, parsed
//! record and rows, hundreds of them in flight at once, and glibc's per-thread cache
//! holds only 7 chunks of a size, so most frees went to its locked bins. malloc and free
//! were a fifth of the job's CPU (perf). jemalloc cut the job's CPU per send by 15, 16
//! and 22% at 1, 50 and 300 ms with its peak RSS 2.5 to 3.6 MiB higher, still under the
//! 64 MiB the pass is held to (README, Benchmark). mimalloc saved as much at 1 ms but
//! less at 300 ms, for more memory.
//!
//! The settings ([`MALLOC_CONF`]):
//! - `narenas:1`: the pass runs on one thread (a current-thread runtime); more arenas
//!   only keep more free pages;
//! - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: freed pages go back to the system a
//!   second after they are freed, not ten, and straight away (no lazy second stage);
//!   the memory budget also asks for them at once ([`release_free_memory`]).
//!
//! `_RJEM_MALLOC_CONF` in the environment overrides them (jemalloc's own variable,
//! prefixed as this build of it is), e.g. `_RJEM_MALLOC_CONF=stats_print:true`.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read by it when it starts (its `malloc_conf` symbol: a
/// NUL-terminated string, named with the prefix this build of jemalloc uses).
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 47] = b"narenas:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Gives the free pages the allocator keeps back to the system: every arena's dirty
/// pages, at once. Called by the memory budget when the process is over it, before the
/// in-flight limit backs off ([`crate::provider::limit`]). If another thread's purge is
/// under way at that moment, jemalloc leaves the pages to it and this call returns at
/// once.
pub fn release_free_memory() {
    // 4096 is MALLCTL_ARENAS_ALL: every arena.
    let name = c"arena.4096.purge";
    // SAFETY: a valid NUL-terminated name of a command that reads and writes nothing.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    if status != 0 {
        tracing::debug!(status, "jemalloc did not purge its arenas");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads one of jemalloc's settings by name; `T` is the setting's C type.
    fn read<T: Copy + Default>(name: &std::ffi::CStr) -> Option<T> {
        let mut value = T::default();
        let mut len = std::mem::size_of::<T>();
        // SAFETY: `value` is `len` bytes, the size jemalloc writes for the settings read
        // here (checked by the caller's type); the name is NUL-terminated.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                (&mut value as *mut T).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (status == 0 && len == std::mem::size_of::<T>()).then_some(value)
    }

    /// The number of arenas jemalloc was started with.
    fn arenas() -> Option<u32> {
        read::<u32>(c"opt.narenas")
    }

    /// After how many milliseconds freed pages go back to the system.
    fn dirty_decay_ms() -> Option<isize> {
        read::<isize>(c"opt.dirty_decay_ms")
    }

    #[test]
    fn jemalloc_runs_with_the_settings_built_in() {
        // Unless the environment overrides them, as jemalloc allows.
        if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
            return;
        }
        assert_eq!(arenas(), Some(1));
        assert_eq!(dirty_decay_ms(), Some(1000));
    }

    /// Set in the child process [`freed_memory_is_given_back_on_request`] runs itself in.
    const ALONE: &str = "OTP_RECONCILE_ALLOC_TEST_ALONE";

    #[test]
    fn freed_memory_is_given_back_on_request() {
        // In a process of its own: the other tests' threads share the arena, and a purge
        // one of them has under way makes this one return without purging (seen once
        // in a full run of the library's tests).
        if std::env::var_os(ALONE).is_none() {
            let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "alloc::tests::freed_memory_is_given_back_on_request",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(ALONE, "1")
                .output()
                .expect("the test binary runs");
            let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let resident = || crate::provider::limit::resident_bytes().expect("statm");
        // 128 MiB in blocks of 4 KiB (a small size class, kept in the arena's slabs),
        // touched, then freed: jemalloc keeps their pages (a second's decay) until asked.
        // Measured: 143 MiB held, 134 after the free alone, 15 after the purge. If the
        // second has passed before the purge, the test proves less, but it does not
        // fail: it waits on nothing.
        let mut blocks: Vec<Vec<u8>> = (0..32_768).map(|_| vec![1u8; 4096]).collect();
        std::hint::black_box(&mut blocks);
        let held = resident();
        drop(blocks);
        release_free_memory();
        let after = resident();
        assert!(
            after + (64 << 20) < held,
            "held {held} bytes, {after} after the purge"
        );
    }
}
