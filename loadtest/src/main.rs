use std::process::ExitCode;

use clap::Parser;
use viche_load::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    viche_load::clock::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("viche-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(viche_load::run::main(cli));
    // Sessions still open are dropped with the runtime, not waited for.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("viche-load: {e:#}");
            ExitCode::from(2)
        }
    }
}
