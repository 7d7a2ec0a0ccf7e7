//! The `tollgate` command line: argument definitions (clap) and dispatch to each command.

mod bot_auth;
pub mod connect;
pub mod maintenance;
pub mod policy;
pub mod quota_store;
pub mod run;
pub mod serve;

use clap::{Parser, Subcommand};

/// Exit status for usage errors and invalid policies (clap uses 2 for usage errors too).
pub const EXIT_USAGE: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Run untrusted code in a sandbox whose only way out is a policy-enforcing HTTP proxy",
    long_about = None,
    after_help = "tollgate's log goes to stderr (with `run --log FILE`, to FILE). TOLLGATE_LOG=debug \
                  shows tollgate's debug lines and keeps libraries at warn; name one to hear \
                  it: TOLLGATE_LOG=debug,hyper=debug."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate team policies, evaluate a request against one, print the policy schema.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run a command in a sandbox whose only way out is the policy-enforcing proxy.
    Run(Box<run::RunArgs>),
    /// Remove what killed supervisors left behind (cgroups, eBPF map entries).
    Gc,
    /// Check that this host can build every wall, and say how to fix what it cannot; and
    /// where team quotas are counted (--redis-url, TOLLGATE_REDIS_URL), reaching that store.
    Doctor(maintenance::DoctorArgs),
    /// Web Bot Auth: print the public key directory of a team's signing key.
    #[command(subcommand, name = "bot-auth")]
    BotAuth(bot_auth::BotAuthCommand),
    /// The node service: launches executions for unprivileged callers on a Unix socket
    /// (`tollgate run --connect`), with team policies from a directory and metrics.
    Serve(Box<serve::ServeArgs>),
    /// The worker process of one execution launched by the node service (internal: started
    /// by `tollgate serve` with the execution on descriptor 3).
    #[command(name = "__execution", hide = true)]
    Execution,
}

/// Runs the parsed command and returns the process exit status.
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Policy(command) => policy::run(command),
        Command::Run(args) => run::run(*args),
        Command::Gc => maintenance::gc(),
        Command::Doctor(args) => maintenance::doctor(args),
        Command::BotAuth(command) => bot_auth::run(command),
        Command::Serve(args) => crate::serve::run(*args),
        Command::Execution => crate::run::service::worker_main(),
    }
}

/// Writes one line to stdout. A closed pipe (`tollgate policy schema | head`) is not an
/// error worth a panic: the reader has what it wanted.
pub fn print(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}
