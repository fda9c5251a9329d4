//! `cairnctl`, the admin CLI of `cairnd`: a thin `main` over [`cairn_daemon::ctl`], which
//! documents the subcommands and the exit codes (also in `cairnctl --help`).

use std::io::Write;
use std::process::ExitCode;

use cairn_daemon::ctl;

fn main() -> ExitCode {
    match ctl::run(std::env::args_os()) {
        Ok(code) => code,
        // `cairnctl events | head`: the reader has all it wanted.
        Err(err) if ctl::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            // If stderr is gone too there is no one left to tell.
            let _ = writeln!(std::io::stderr(), "{}", ctl::error_line(&err));
            ExitCode::from(ctl::exit_code(&err))
        }
    }
}
