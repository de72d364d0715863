//! A persistent thread pool for the forward pass: workers are started once and woken for each
//! parallel loop, instead of spawning threads per operation.
//!
//! `ThreadPool::for_each(n, f)` calls `f(i)` for every `i < n`, spread over the workers and the
//! calling thread, and returns when all calls are done.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

type Job = dyn Fn(usize) + Sync;

/// A job pointer with its lifetime erased; only valid while `for_each` is running.
#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync` and `for_each` does not return (so the closure stays alive)
// until every worker has finished with the pointer.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<JobPtr>,
    n_tasks: usize,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    next: AtomicUsize,
    active: AtomicUsize,
    done: Condvar,
    done_lock: Mutex<()>,
    /// Mirror of `State::generation` that idle workers spin on before they sleep, so that the
    /// back-to-back parallel loops of a forward pass do not pay a futex wake-up each.
    gen_hint: AtomicU64,
}

/// Spin iterations before sleeping (a few tens of microseconds): longer than the gap between
/// two matrix products of one forward pass, far shorter than the gap between requests.
const SPIN: u32 = 1 << 10;

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises callers: one parallel loop at a time.
    call_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool using `n_threads` threads in total (the caller counts as one).
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                n_tasks: 0,
                shutdown: false,
            }),
            wake: Condvar::new(),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            done: Condvar::new(),
            done_lock: Mutex::new(()),
            gen_hint: AtomicU64::new(0),
        });
        let workers = (1..n_threads)
            .map(|_| {
                let s = Arc::clone(&shared);
                std::thread::spawn(move || worker(&s))
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            call_lock: Mutex::new(()),
        }
    }

    /// Number of threads including the caller.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(i)` for `i in 0..n_tasks` in parallel and waits for all of them.
    pub fn for_each(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 {
            (0..n_tasks).for_each(f);
            return;
        }
        let _serial = self.call_lock.lock().unwrap_or_else(|e| e.into_inner());
        let sh = &*self.shared;
        // SAFETY: erases the closure's lifetime. Workers only dereference the pointer while
        // `active > 0`, and this function waits for `active == 0` before returning.
        let ptr =
            JobPtr(
                unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync + '_), &'static Job>(f) }
                    as *const Job,
            );
        sh.next.store(0, Ordering::SeqCst);
        sh.active.store(self.workers.len(), Ordering::SeqCst);
        {
            let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
            st.job = Some(ptr);
            st.n_tasks = n_tasks;
            st.generation += 1;
            sh.gen_hint.store(st.generation, Ordering::Release);
        }
        sh.wake.notify_all();
        run_tasks(sh, f, n_tasks);
        for _ in 0..SPIN {
            if sh.active.load(Ordering::Acquire) == 0 {
                break;
            }
            std::hint::spin_loop();
        }
        let mut g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
        while sh.active.load(Ordering::SeqCst) != 0 {
            g = sh.done.wait(g).unwrap_or_else(|e| e.into_inner());
        }
        drop(g);
        sh.state.lock().unwrap_or_else(|e| e.into_inner()).job = None;
    }
}

fn run_tasks(sh: &Shared, f: &(dyn Fn(usize) + Sync + '_), n_tasks: usize) {
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= n_tasks {
            break;
        }
        f(i);
    }
}

fn worker(sh: &Shared) {
    let mut seen = 0u64;
    loop {
        for _ in 0..SPIN {
            if sh.gen_hint.load(Ordering::Acquire) != seen {
                break;
            }
            std::hint::spin_loop();
        }
        let (job, n_tasks) = {
            let mut st = sh.state.lock().unwrap_or_else(|e| e.into_inner());
            while st.generation == seen && !st.shutdown {
                st = sh.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.shutdown {
                return;
            }
            seen = st.generation;
            (st.job, st.n_tasks)
        };
        if let Some(JobPtr(p)) = job {
            // SAFETY: `for_each` keeps the closure alive until `active` drops to zero, which
            // happens only after this call returns.
            let f: &Job = unsafe { &*p };
            run_tasks(sh, f, n_tasks);
        }
        if sh.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            let _g = sh.done_lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.done.notify_all();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .shutdown = true;
        self.shared.wake.notify_all();
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
}
