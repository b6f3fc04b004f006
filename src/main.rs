//! `linesight` binary: parse the command line, hand over to [`linesight::cli::run`].

use clap::Parser;

fn main() {
    let cli = linesight::cli::Cli::parse();
    match linesight::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
