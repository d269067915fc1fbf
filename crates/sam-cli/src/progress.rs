//! Progress bars: one look for every executable.

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar of `total` steps drawn by indicatif's `template` (e.g.
/// `"{msg} [{bar:40}] {pos}/{len} ({eta} left)"`), filled with `=>`; indicatif's default look
/// if the template does not parse.
pub fn progress_bar(total: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(bar_style(template));
    bar
}

/// The style of [`progress_bar`].
pub fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_take_their_length_and_survive_a_bad_template() {
        let bar = progress_bar(7, "{msg} [{bar:40}] {pos}/{len}");
        assert_eq!(bar.length(), Some(7));
        let bar = progress_bar(3, "{unclosed");
        bar.inc(1);
        assert_eq!(bar.position(), 1);
    }
}
