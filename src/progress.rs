//! Progress bars on stderr, shown only when stderr is a terminal: the CLI's
//! rendering of the library's progress sink.

use std::io::IsTerminal;

use edgec_pipeline::progress::{Bar, Progress, Unit};
use indicatif::{ProgressBar, ProgressStyle};

/// Draws the library's progress as indicatif bars.
pub struct Bars;

struct IndicatifBar(ProgressBar);

impl Bar for IndicatifBar {
    fn inc(&self, n: u64) {
        self.0.inc(n);
    }

    fn set_position(&self, done: u64) {
        self.0.set_position(done);
    }

    fn set_message(&self, message: &str) {
        self.0.set_message(message.to_string());
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

impl Progress for Bars {
    fn bar(&self, total: u64, what: &str, unit: Unit) -> Box<dyn Bar> {
        if !std::io::stderr().is_terminal() {
            return Box::new(IndicatifBar(ProgressBar::hidden()));
        }
        let template = match unit {
            Unit::Items => "{prefix:>10} [{bar:30}] {pos}/{len} {wide_msg} ({eta})",
            Unit::Tokens => "{prefix:>10} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)",
        };
        let pb = ProgressBar::new(total);
        pb.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        Box::new(IndicatifBar(pb))
    }
}
