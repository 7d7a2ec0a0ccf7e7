use clap::Parser;
use tollgate::logging;

fn main() {
    let cli = match tollgate::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // `tollgate run` reserves small exit statuses for the command; its own usage errors
            // are tollgate errors (125), like GNU timeout's and env's.
            let is_run = std::env::args().nth(1).as_deref() == Some("run");
            if is_run && error.use_stderr() {
                let _ = error.print();
                std::process::exit(tollgate::run::status::TOLLGATE_ERROR);
            }
            error.exit();
        }
    };
    // After parsing, so that `run --log FILE` can keep every line for the file. A worker of
    // the node service (`__execution`) learns of its `--log` from its channel, and installs
    // the log itself then (`run::service`).
    match &cli.command {
        tollgate::cli::Command::Execution => {}
        tollgate::cli::Command::Run(args) if args.log.is_some() => {
            logging::init(logging::Destination::LogFile)
        }
        _ => logging::init(logging::Destination::Stderr),
    }
    let status = tollgate::cli::run(cli);
    logging::release();
    std::process::exit(status);
}
