use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() {
    let filter = std::env::var("TOLLGATE_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into a log file or pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
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
    std::process::exit(tollgate::cli::run(cli));
}
