//! The `streamcast` command: parse the command line, set up logging, hand
//! over to the subcommand (`cli`). Errors print once, with their causes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    streamcast::telemetry::init_logging(args.log_json);
    match cli::run(args.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
