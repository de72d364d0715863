//! Download progress: a callback trait the downloader reports to, a no-op, and terminal bars
//! (one per file and a total, with speed and ETA, redrawn on a timer so they keep moving
//! while a slow server trickles bytes).

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

/// What a pull reports. Calls come from several download threads at once.
pub trait Progress: Send + Sync {
    /// `bytes` in `files` files are to be fetched (bytes already on disk included).
    fn begin(&self, _repo: &str, _bytes: u64, _files: usize) {}
    /// A file starts (or restarts, after a failed hash check) with `done` bytes on disk.
    fn file_begin(&self, _file: &str, _size: Option<u64>, _done: u64) {}
    /// `done` bytes of `file` are on disk now (absolute, not a delta).
    fn file_progress(&self, _file: &str, _done: u64) {}
    fn file_end(&self, _file: &str) {}
    /// Something worth telling the user (a retry, a resumed download).
    fn note(&self, _msg: &str) {}
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// indicatif bars on stderr; plain lines when stderr is not a terminal.
pub struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    files: Mutex<HashMap<String, (ProgressBar, u64)>>,
    tty: bool,
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Bars {
        let tty = std::io::stderr().is_terminal();
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let total = multi.add(ProgressBar::new(0));
        total.set_style(
            ProgressStyle::with_template(
                "{prefix:>12.bold} [{bar:30.green/dim}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        total.set_prefix("total");
        total.enable_steady_tick(Duration::from_millis(200));
        Bars {
            multi,
            total,
            files: Mutex::new(HashMap::new()),
            tty,
        }
    }

    fn update_total(&self, files: &HashMap<String, (ProgressBar, u64)>) {
        self.total
            .set_position(files.values().map(|(_, d)| *d).sum());
    }
}

impl Progress for Bars {
    fn begin(&self, repo: &str, bytes: u64, files: usize) {
        self.total.set_length(bytes);
        if !self.tty {
            eprintln!(
                "pulling {repo}: {files} files, {}",
                crate::human_bytes(bytes)
            );
        }
    }

    fn file_begin(&self, file: &str, size: Option<u64>, done: u64) {
        let bar = self
            .multi
            .insert_before(&self.total, ProgressBar::new(size.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12.dim} [{bar:30.cyan/dim}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let short: String = file
            .chars()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        bar.set_prefix(short);
        bar.set_position(done);
        bar.enable_steady_tick(Duration::from_millis(200));
        if let Ok(mut m) = self.files.lock() {
            if let Some((old, _)) = m.insert(file.to_string(), (bar, done)) {
                old.finish_and_clear();
            }
            self.update_total(&m);
        }
    }

    fn file_progress(&self, file: &str, done: u64) {
        if let Ok(mut m) = self.files.lock() {
            if let Some(e) = m.get_mut(file) {
                e.0.set_position(done);
                e.1 = done;
            }
            self.update_total(&m);
        }
    }

    fn file_end(&self, file: &str) {
        if let Ok(m) = self.files.lock() {
            if let Some((bar, done)) = m.get(file) {
                bar.finish_with_message("done");
                if !self.tty {
                    eprintln!("  {file} ({})", crate::human_bytes(*done));
                }
            }
        }
    }

    fn note(&self, msg: &str) {
        if self.tty {
            let _ = self.multi.println(msg);
        } else {
            eprintln!("{msg}");
        }
    }

    fn finish(&self) {
        self.total.finish();
        if let Ok(m) = self.files.lock() {
            for (b, _) in m.values() {
                b.finish();
            }
        }
    }
}
