//! The `sam-train` executable: a thin shell over the sam_trainer crates.
use clap::Parser;

/// sam-train (sam_trainer).
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
