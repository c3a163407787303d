//! The `xquik-dm` binary: parse the command line, run one command, print its
//! report, and turn the outcome into the exit status of SPEC §2. Errors are
//! printed here and nowhere else.

use std::process::ExitCode;

use xquik_dm::cli::{self, Args};
use xquik_dm::{commands, logging};

fn main() -> ExitCode {
    // reqwest is built without a default TLS provider (ring keeps the build
    // lean); it must be installed before the first client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let args = match Args::parse_args() {
        Ok(args) => args,
        // --help and --version are successes, printed as clap renders them.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("xquik-dm: error: {}", cli::usage_error(&e));
            return ExitCode::from(2);
        }
    };
    let config = match args.into_config(std::env::var("XQUIK_API_KEY").ok()) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    logging::init(config.log, config.verbose);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&xquik_dm::Error::io("<tokio runtime>", e)),
    };
    match runtime.block_on(config.invocation.run()) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = report.write_to(&mut stdout) {
                return fail(&commands::stdout_error(e));
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => fail(&e),
    }
}

fn fail(e: &xquik_dm::Error) -> ExitCode {
    eprintln!("xquik-dm: error: {e}");
    ExitCode::from(e.exit_code())
}
