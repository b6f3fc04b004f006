//! `linesight` binary: parse the command line, hand over to [`linesight::cli::run`].

use clap::Parser;

fn main() {
    linesight::memory::keep_frame_buffers();
    let cli = linesight::cli::Cli::parse();
    match linesight::cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // A closed stdout (`linesight inspect … | head`) is the reader's choice, not a failure.
            let broken_pipe = e.chain().any(|cause| {
                cause
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                std::process::exit(0);
            }
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
