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
        .with_target(false)
        .init();
    let cli = tollgate::cli::Cli::parse();
    std::process::exit(tollgate::cli::run(cli));
}
