//! Progress reporting for long jobs: an indicatif bar with ETA on a
//! terminal, and a log line every 10 % otherwise (CI logs, pipes).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Progress of `len` items of work.
pub struct Progress {
    bar: ProgressBar,
    what: String,
    len: usize,
    done: usize,
    log_lines: bool,
}

impl Progress {
    /// Starts reporting `len` items of `what` (e.g. "features", "eval").
    pub fn new(len: usize, what: &str) -> Self {
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        let log_lines = !std::io::stderr().is_terminal();
        Progress { bar, what: what.into(), len, done: 0, log_lines }
    }

    /// Marks one more item done.
    pub fn inc(&mut self) {
        self.done += 1;
        self.bar.inc(1);
        let step = (self.len / 10).max(1);
        if self.log_lines && (self.done.is_multiple_of(step) || self.done == self.len) {
            let eta = self.bar.eta().as_secs();
            log::info!("{}: {}/{} (ETA {eta} s)", self.what, self.done, self.len);
        }
    }

    /// Prints a message without tearing the bar.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.bar.suspend(f)
    }

    /// Removes the bar.
    pub fn finish(self) {
        self.bar.finish_and_clear();
    }
}

/// A spinner with elapsed time for one long step of unknown length (e.g.
/// TensorRT building its engine); on a pipe the message is logged once.
pub fn spinner(message: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        log::info!("{message}");
        return ProgressBar::hidden();
    }
    let spinner = ProgressBar::new_spinner();
    spinner.set_style(ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"));
    spinner.set_message(message.to_string());
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    spinner
}
