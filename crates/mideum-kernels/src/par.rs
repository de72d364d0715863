//! A persistent thread pool for the forward pass: workers are started once and woken for each
//! parallel loop, instead of spawning threads per operation.
//!
//! `ThreadPool::for_each(n, f)` calls `f(i)` for every `i < n`, spread over the workers and the
//! calling thread through one shared counter, and returns when all calls are done.
//! `ThreadPool::for_each_static(n, f)` gives each thread one contiguous range of indices to run
//! in order (a decode matmul then streams one contiguous stretch of weight rows per thread,
//! which the hardware prefetchers follow) and lets a thread that finishes early take over the
//! back half of another's remaining range, so a slow or descheduled thread does not hold the
//! loop.
//!
//! Between loops the workers spin on a generation counter for [`SPIN_IDLE`] before they sleep,
//! which bridges the short single-threaded steps between the ~250 loops of a forward pass.
//!
//! Each worker is pinned to a CPU of its own when the process may use at least as many CPUs
//! as the pool has threads (`MIDEUM_PIN=0` turns this off); see `pin_plan`.

use std::any::Any;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// How long an idle thread spins (workers waiting for the next loop, the caller waiting for
/// the workers to finish) before it sleeps on a futex. Measured in time, not iterations (the
/// old pool's 1,024 `pause`s were ~36 µs here and would be a few µs on a CPU whose `pause`
/// is short). Long enough to bridge the single-threaded steps between the loops of one
/// forward pass (SwiGLU, likely the longest, estimated at tens of µs, not timed). Not longer:
/// with more runnable threads than cores (builds next to the server), decode measured here at
/// 2 threads was ~25% slower with a 300 µs spin than with 30 µs, since a spinning thread burns the time slice (and, under
/// a fair scheduler, the share) that a thread with work needs. Spinning threads do not yield:
/// that was slower still (a yielding thread loses its place to whatever else runs on its core,
/// a sleeping one is woken promptly).
pub const SPIN_IDLE: Duration = Duration::from_micros(50);

/// Spin iterations between two reads of the clock while spinning (~2 µs of `pause`).
const SPIN_CHECK: u32 = 64;

/// Spins until `ready()` or [`SPIN_IDLE`] has passed; returns whether `ready()` held.
#[inline]
fn spin_until(ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(SPIN_CHECK) && start.elapsed() > SPIN_IDLE {
            return false;
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Indices handed out one at a time from a shared counter.
    Dynamic,
    /// One contiguous range per thread, stolen from the back when a thread runs out.
    Static,
}

/// The loop being run: the closure (lifetime erased) and how its indices are handed out.
#[derive(Clone, Copy)]
struct Loop {
    job: *const Job,
    n_tasks: usize,
    mode: Mode,
}

/// Keeps each hot atomic on its own cache line pair (Zen and Intel prefetch lines in pairs).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

struct Shared {
    /// Bumped (by the caller) to start a loop; workers spin on it.
    generation: Padded<AtomicU64>,
    /// Workers that have not yet finished the current loop.
    running: Padded<AtomicUsize>,
    /// Next index of a [`Mode::Dynamic`] loop.
    next: Padded<AtomicUsize>,
    /// Per thread (0 = the caller), the indices `front..back` of its range in a
    /// [`Mode::Static`] loop not yet taken, packed as `front << 32 | back`.
    ranges: Box<[Padded<AtomicU64>]>,
    /// The current loop. Written only by the caller while no worker is inside a loop
    /// (`running == 0`), before the `generation` bump that publishes it.
    current: UnsafeCell<Loop>,
    /// Set when a call of the current loop panicked: the remaining indices are skipped.
    failed: AtomicBool,
    /// The first panic of the current loop, re-raised on the calling thread.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    shutdown: AtomicBool,
    /// Workers asleep (or about to sleep) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// The caller is asleep (or about to sleep) on `done`.
    caller_waiting: AtomicBool,
    done_lock: Mutex<()>,
    done: Condvar,
}

// SAFETY: every field but `current` is Sync. `current` is written only by the caller of a
// loop while `running == 0` (no worker reads it then), and each worker reads it only after
// seeing the new generation (Acquire, pairing with the caller's SeqCst bump after the write)
// and before it decrements `running`; the caller's `call_lock` serialises loops. The raw
// closure pointer inside is only dereferenced while the loop's caller keeps it alive.
unsafe impl Sync for Shared {}
// SAFETY: as above; the pointer is only used under that protocol, from any thread.
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// The CPUs of the threads when the pool pins its workers: worker `i` runs on `cpus[i]`;
    /// `cpus[0]` is left to the caller, which is not pinned (see [`pin_plan`]).
    cpus: Option<Vec<core_affinity::CoreId>>,
    /// Serialises callers: one parallel loop at a time.
    call_lock: Mutex<()>,
}

/// One CPU per thread from the calling thread's allowed set, or `None` when pinning is off
/// (`MIDEUM_PIN=0`), the set cannot be read, or it has fewer CPUs than `n_threads` (two pinned
/// threads sharing a CPU could never move apart; unpinned, the OS can still spread them).
///
/// Only the workers are pinned, each to a CPU of its own (`1..n_threads` of the plan), so a
/// worker never migrates in the middle of a loop and loses its caches. The calling thread is
/// left alone: it belongs to the application (a server's scheduler thread, a benchmark's main
/// thread), and a thread it spawned later would inherit a one-CPU mask. With the workers'
/// CPUs busy, the OS keeps it on the remaining one.
fn pin_plan(n_threads: usize) -> Option<Vec<core_affinity::CoreId>> {
    if n_threads < 2 || std::env::var("MIDEUM_PIN").is_ok_and(|v| v == "0") {
        return None;
    }
    let cpus = core_affinity::get_core_ids()?;
    (cpus.len() >= n_threads).then(|| cpus.into_iter().take(n_threads).collect())
}

/// Packs a range of task indices (each below 2³²) into one atomic word.
fn pack(front: usize, back: usize) -> u64 {
    ((front as u64) << 32) | back as u64
}

fn unpack(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xFFFF_FFFF) as usize)
}

/// Indices `[lo, hi)` of thread `id`'s range when `n` tasks are split over `threads`.
fn static_range(n: usize, threads: usize, id: usize) -> (usize, usize) {
    (id * n / threads, (id + 1) * n / threads)
}

impl ThreadPool {
    /// A pool using `n_threads` threads in total (the caller counts as one).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: Padded(AtomicU64::new(0)),
            running: Padded(AtomicUsize::new(0)),
            next: Padded(AtomicUsize::new(0)),
            ranges: (0..n_threads).map(|_| Padded(AtomicU64::new(0))).collect(),
            current: UnsafeCell::new(Loop {
                job: std::ptr::null::<fn(usize)>() as *const Job,
                n_tasks: 0,
                mode: Mode::Dynamic,
            }),
            failed: AtomicBool::new(false),
            panic: Mutex::new(None),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_waiting: AtomicBool::new(false),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
        });
        let cpus = pin_plan(n_threads);
        let workers = (1..n_threads)
            .map(|id| {
                let s = Arc::clone(&shared);
                let cpu = cpus.as_ref().map(|c| c[id]);
                std::thread::Builder::new()
                    .name(format!("mideum-pool-{id}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            if !core_affinity::set_for_current(cpu) {
                                tracing::debug!(
                                    thread = id,
                                    cpu = cpu.id,
                                    "could not pin pool thread"
                                );
                            }
                        }
                        worker(&s, id)
                    })
                    .unwrap_or_else(|e| panic!("cannot start pool thread {id}: {e}"))
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            cpus,
            call_lock: Mutex::new(()),
        }
    }

    /// Whether the pool's worker threads were pinned to CPUs of their own.
    pub fn is_pinned(&self) -> bool {
        self.cpus.is_some()
    }

    /// Number of threads including the caller.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for `i in 0..n_tasks` in parallel and waits for all of them. Indices are
    /// handed out one at a time from a shared counter, so cheap tasks of very different cost
    /// balance well; prefer [`ThreadPool::for_each_static`] for many small tasks.
    ///
    /// If a call of `f` panics, the indices not yet started are skipped, the other threads
    /// finish the calls they are in, and the first panic is resumed on the calling thread.
    /// `f` must not call back into the same pool (that would deadlock).
    pub fn for_each(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        self.run(n_tasks, f, Mode::Dynamic)
    }

    /// As [`ThreadPool::for_each`], but thread `p` of `P` (the caller is thread 0) first runs
    /// the indices `p·n/P .. (p+1)·n/P` in increasing order; a thread that runs out takes the
    /// back half of what is left of another thread's range and runs that in increasing order,
    /// until no index is left. Every index runs exactly once.
    pub fn for_each_static(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        // Ranges are packed into 32-bit halves; a loop that large gains nothing from them.
        let mode = if n_tasks <= u32::MAX as usize {
            Mode::Static
        } else {
            Mode::Dynamic
        };
        self.run(n_tasks, f, mode)
    }

    fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync), mode: Mode) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = self.call_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: erases the closure's lifetime. Workers dereference the pointer only between
        // seeing this loop's generation and decrementing `running`, and this function waits
        // for `running == 0` before returning (also when a call panics: see `run_loop`).
        let job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) }
            as *const Job;
        // SAFETY: `running == 0` here (the previous loop waited for it and loops are
        // serialised by `call_lock`), so no worker reads `current` now.
        unsafe { *sh.current.get() = Loop { job, n_tasks, mode } };
        match mode {
            Mode::Dynamic => sh.next.store(0, Ordering::Relaxed),
            Mode::Static => {
                for (id, r) in sh.ranges.iter().enumerate() {
                    let (lo, hi) = static_range(n_tasks, self.n_threads, id);
                    r.store(pack(lo, hi), Ordering::Relaxed);
                }
            }
        }
        sh.failed.store(false, Ordering::Relaxed);
        sh.running.store(self.workers.len(), Ordering::Relaxed);
        // Publishes everything above to the workers that see the new generation.
        sh.generation.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            // Taking the lock orders this notify after a sleeper's last check of the
            // generation (it holds the lock from that check until it waits).
            let _g = sh.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        let lp = Loop { job, n_tasks, mode };
        // SAFETY: `f` is alive for this whole call.
        unsafe { run_loop(sh, &lp, 0, self.n_threads) };
        wait_done(sh);
        let panic = sh.panic.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = panic {
            resume_unwind(p);
        }
    }
}

/// Waits (spinning, then sleeping) until every worker has finished the current loop.
fn wait_done(sh: &Shared) {
    if spin_until(|| sh.running.load(Ordering::Acquire) == 0) {
        return;
    }
    let mut g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.caller_waiting.store(true, Ordering::SeqCst);
    while sh.running.load(Ordering::SeqCst) != 0 {
        g = sh.done.wait(g).unwrap_or_else(|e| e.into_inner());
    }
    sh.caller_waiting.store(false, Ordering::Relaxed);
}

/// Takes the first index of a range, if any is left.
fn take_front(r: &AtomicU64) -> Option<usize> {
    let mut cur = r.load(Ordering::Relaxed);
    loop {
        let (front, back) = unpack(cur);
        if front >= back {
            return None;
        }
        match r.compare_exchange_weak(
            cur,
            pack(front + 1, back),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(front),
            Err(v) => cur = v,
        }
    }
}

/// Takes the back half (rounded up) of a range, if any index is left, as `(lo, hi)`.
fn steal_half(r: &AtomicU64) -> Option<(usize, usize)> {
    let mut cur = r.load(Ordering::Relaxed);
    loop {
        let (front, back) = unpack(cur);
        if front >= back {
            return None;
        }
        let mid = back - (back - front).div_ceil(2);
        match r.compare_exchange_weak(cur, pack(front, mid), Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((mid, back)),
            Err(v) => cur = v,
        }
    }
}

/// Runs thread `id`'s share of loop `lp`, catching a panic of the closure so that the loop
/// still completes (the panic is stored for the caller to resume).
///
/// # Safety
/// `lp.job` points at a closure that stays alive until this returns.
unsafe fn run_loop(sh: &Shared, lp: &Loop, id: usize, threads: usize) {
    // SAFETY: the caller guarantees the closure is alive.
    let f: &Job = unsafe { &*lp.job };
    let n = lp.n_tasks;
    let res = catch_unwind(AssertUnwindSafe(|| match lp.mode {
        Mode::Dynamic => loop {
            if sh.failed.load(Ordering::Relaxed) {
                break;
            }
            let i = sh.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            f(i);
        },
        Mode::Static => {
            let own = &sh.ranges[id];
            loop {
                while let Some(i) = take_front(own) {
                    if sh.failed.load(Ordering::Relaxed) {
                        return;
                    }
                    f(i);
                }
                // Out of work: move the back half of another thread's range into this
                // thread's (empty) range and run it front to back, so that stolen rows are
                // streamed forwards too, and can in turn be stolen from.
                let stolen = (1..threads)
                    .map(|d| (id + d) % threads)
                    .find_map(|other| steal_half(&sh.ranges[other]));
                match stolen {
                    // Only this thread stores into its own range, and only while it is empty
                    // (nobody else changes an empty range), so a plain store is enough.
                    Some((lo, hi)) => own.store(pack(lo, hi), Ordering::Relaxed),
                    None => return,
                }
            }
        }
    }));
    if let Err(p) = res {
        sh.failed.store(true, Ordering::Relaxed);
        let mut slot = sh.panic.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(p);
        }
    }
}

/// Waits (spinning, then sleeping) for a generation other than `seen`; `None` on shutdown.
fn wait_for_loop(sh: &Shared, seen: u64) -> Option<u64> {
    if spin_until(|| {
        sh.generation.load(Ordering::Acquire) != seen || sh.shutdown.load(Ordering::Relaxed)
    }) {
        let g = sh.generation.load(Ordering::Acquire);
        return (g != seen).then_some(g);
    }
    let mut g = sh.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
    sh.sleepers.fetch_add(1, Ordering::SeqCst);
    let out = loop {
        let gen = sh.generation.load(Ordering::SeqCst);
        if gen != seen {
            break Some(gen);
        }
        if sh.shutdown.load(Ordering::SeqCst) {
            break None;
        }
        g = sh.wake.wait(g).unwrap_or_else(|e| e.into_inner());
    };
    sh.sleepers.fetch_sub(1, Ordering::SeqCst);
    out
}

fn worker(sh: &Shared, id: usize) {
    let mut seen = 0u64;
    let threads = sh.ranges.len();
    while let Some(gen) = wait_for_loop(sh, seen) {
        seen = gen;
        // SAFETY: the caller wrote `current` before bumping the generation this thread just
        // saw (Acquire), and does not write it again before `running` reaches zero.
        let lp = unsafe { *sh.current.get() };
        // SAFETY: the caller keeps the closure alive until `running` reaches zero, which
        // happens only after this call returns.
        unsafe { run_loop(sh, &lp, id, threads) };
        if sh.running.fetch_sub(1, Ordering::SeqCst) == 1
            && sh.caller_waiting.load(Ordering::SeqCst)
        {
            let _g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// Hands out disjoint mutable chunks of one output buffer to parallel tasks.
///
/// Each task index maps to a distinct, non-overlapping range, so writes never alias.
pub struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}
// SAFETY: callers only obtain non-overlapping ranges (checked in `range`'s contract), so
// sending the pointer to other threads cannot create aliasing mutable references.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        DisjointSlice {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _life: std::marker::PhantomData,
        }
    }

    /// # Safety
    /// No two live references returned by this method may overlap.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn range(&self, start: usize, end: usize) -> &mut [T] {
        assert!(
            start <= end && end <= self.len,
            "range {start}..{end} out of {}",
            self.len
        );
        // SAFETY: bounds checked above; disjointness is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), end - start) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinning_plans_one_distinct_cpu_per_thread_or_none() {
        assert!(pin_plan(1).is_none(), "a single thread is never pinned");
        assert!(
            pin_plan(usize::MAX).is_none(),
            "more threads than CPUs are not pinned"
        );
        let allowed = core_affinity::get_core_ids().map_or(0, |c| c.len());
        if allowed >= 2 && std::env::var("MIDEUM_PIN").map_or(true, |v| v != "0") {
            let plan = pin_plan(2).expect("two threads fit the allowed CPUs");
            assert_eq!(plan.len(), 2);
            assert_ne!(plan[0].id, plan[1].id);
            // Pinned workers still run every index exactly once.
            let pool = ThreadPool::new(2);
            assert!(pool.is_pinned());
            let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
            pool.for_each(100, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn runs_every_task_once() {
        let pool = ThreadPool::new(3);
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                pool.for_each(n, &|i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 20));
        }
    }

    #[test]
    fn disjoint_writes() {
        let pool = ThreadPool::new(2);
        let mut out = vec![0usize; 64];
        let d = DisjointSlice::new(&mut out);
        pool.for_each(8, &|i| {
            // SAFETY: task i owns 8*i..8*i+8.
            let s = unsafe { d.range(i * 8, i * 8 + 8) };
            s.iter_mut().enumerate().for_each(|(j, v)| *v = i * 8 + j);
        });
        assert!(out.iter().enumerate().all(|(i, &v)| i == v));
    }

    #[test]
    fn static_runs_every_task_once() {
        // Fewer tasks than threads, equal, more, not a multiple; interleaved with dynamic loops
        // so that both modes reuse the same workers.
        for threads in [1usize, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for n in [0usize, 1, 2, 3, 4, 5, 7, 64, 1001] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for rep in 0..10 {
                    let f = |i: usize| {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    };
                    if rep % 3 == 2 {
                        pool.for_each(n, &f);
                    } else {
                        pool.for_each_static(n, &f);
                    }
                }
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(
                        h.load(Ordering::Relaxed),
                        10,
                        "threads {threads} n {n} i {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn static_ranges_cover_all_indices_in_order() {
        for threads in 1..6 {
            for n in 0..40 {
                let mut next = 0;
                for id in 0..threads {
                    let (lo, hi) = static_range(n, threads, id);
                    assert_eq!(lo, next);
                    assert!(hi >= lo);
                    next = hi;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn stealing_finishes_a_blocked_threads_range() {
        // Thread 0's first index blocks until every other index has run: the loop can only
        // finish if the other thread steals the rest of thread 0's range from its back.
        let pool = ThreadPool::new(2);
        let n = 64;
        let done = AtomicUsize::new(0);
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let stolen_by = Mutex::new(Vec::new());
        let main = std::thread::current().id();
        pool.for_each_static(n, &|i| {
            hits[i].fetch_add(1, Ordering::Relaxed);
            if i == 0 {
                while done.load(Ordering::Acquire) < n - 1 {
                    std::hint::spin_loop();
                }
            } else {
                if i < n / 2 && std::thread::current().id() != main {
                    stolen_by.lock().unwrap().push(i);
                }
                done.fetch_add(1, Ordering::Release);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        // Whichever thread ran index 0, the other one ran all of 1..n.
        let stolen = stolen_by.into_inner().unwrap();
        assert!(stolen.is_empty() || stolen.len() == n / 2 - 1);
    }

    #[test]
    fn threads_run_contiguous_stretches_forwards() {
        // Each thread runs its own range front to back, and every stolen half front to back:
        // so its indices form runs of consecutive indices, one per range it worked on. A steal
        // takes half of what is left, so with two threads there are at most ~log2(n) steals.
        let pool = ThreadPool::new(2);
        let main = std::thread::current().id();
        let n = 200;
        for _ in 0..20 {
            let seen = Mutex::new(Vec::new());
            pool.for_each_static(n, &|i| {
                seen.lock()
                    .unwrap()
                    .push((std::thread::current().id() == main, i));
            });
            let seen = seen.into_inner().unwrap();
            assert_eq!(seen.len(), n);
            let mut runs = 0;
            for on_main in [true, false] {
                let mine: Vec<usize> = seen
                    .iter()
                    .filter(|&&(m, _)| m == on_main)
                    .map(|&(_, i)| i)
                    .collect();
                runs += 1 + mine.windows(2).filter(|w| w[1] != w[0] + 1).count();
            }
            assert!(runs <= 2 + 2 * 9, "{runs} runs: {seen:?}");
        }
    }

    #[test]
    fn panics_propagate_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        for stat in [false, true] {
            for bad in [0usize, 5, 99] {
                let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let f = |i: usize| {
                        if i == bad {
                            panic!("task {i} failed");
                        }
                    };
                    if stat {
                        pool.for_each_static(100, &f)
                    } else {
                        pool.for_each(100, &f)
                    }
                }));
                let msg = r
                    .expect_err("the panic reaches the caller")
                    .downcast::<String>()
                    .map(|s| *s)
                    .unwrap_or_default();
                assert_eq!(msg, format!("task {bad} failed"));
                // The pool still runs every index of the next loop.
                let hits = AtomicUsize::new(0);
                pool.for_each_static(50, &|_| {
                    hits.fetch_add(1, Ordering::Relaxed);
                });
                assert_eq!(hits.load(Ordering::Relaxed), 50);
            }
        }
    }

    #[test]
    fn sleeping_workers_wake_up() {
        let pool = ThreadPool::new(3);
        for _ in 0..3 {
            // Longer than the spin time: the workers (and, below, the caller) go to sleep.
            std::thread::sleep(SPIN_IDLE * 3);
            let hits = AtomicUsize::new(0);
            pool.for_each_static(3, &|i| {
                hits.fetch_add(1, Ordering::Relaxed);
                if i > 0 {
                    // Keeps the caller waiting past its spin time, so it sleeps too.
                    std::thread::sleep(SPIN_IDLE * 2);
                }
            });
            assert_eq!(hits.load(Ordering::Relaxed), 3);
        }
    }

    #[test]
    fn drop_joins_the_workers() {
        let pool = ThreadPool::new(4);
        pool.for_each_static(10, &|_| {});
        let weak = Arc::downgrade(&pool.shared);
        drop(pool);
        // Every worker held a reference to the shared state until it exited.
        assert!(weak.upgrade().is_none());
        // Also when the workers are asleep.
        let pool = ThreadPool::new(3);
        std::thread::sleep(SPIN_IDLE * 3);
        let weak = Arc::downgrade(&pool.shared);
        drop(pool);
        assert!(weak.upgrade().is_none());
    }
}
