//! The drover binary: the command line lives in `drover::cli`, the service in `drover::run`.

use std::process::ExitCode;

fn main() -> ExitCode {
    drover::cli::main()
}
