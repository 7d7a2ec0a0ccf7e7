//! `tollgate bot-auth jwks`: the public half of a team's Web Bot Auth key, as the JSON Web
//! Key Set to publish at `/.well-known/http-message-signatures-directory`.

use crate::proxy::secrets::TeamSecrets;
use crate::proxy::BotSigner;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub enum BotAuthCommand {
    /// Print the key directory (JWKS) for the policy's `bot_auth` key. Reads the key the
    /// way `tollgate run` does (environment variable or root-only file); prints only the
    /// public key and its RFC 7638 thumbprint.
    Jwks {
        /// The team policy whose `bot_auth` key to publish.
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
        #[command(flatten)]
        secrets: super::policy::SecretArgs,
    },
}

pub fn run(command: BotAuthCommand) -> i32 {
    match command {
        BotAuthCommand::Jwks { policy, secrets } => match secrets.rules() {
            Ok(rules) => jwks(&policy, &rules),
            Err(message) => {
                eprintln!("tollgate: {message}");
                super::EXIT_USAGE
            }
        },
    }
}

fn jwks(path: &std::path::Path, rules: &tollgate_policy::secrets::SecretRules) -> i32 {
    let policy = match crate::team_rules::load(path) {
        Ok(policy) => policy,
        Err(errors) => {
            eprintln!("{errors}");
            return super::EXIT_USAGE;
        }
    };
    let Some(bot) = &policy.bot_auth else {
        eprintln!(
            "tollgate: {} has no `bot_auth` section, so team {} signs nothing",
            path.display(),
            policy.team
        );
        return super::EXIT_USAGE;
    };
    match BotSigner::load(bot, &mut TeamSecrets::new(&policy.team, rules)) {
        Ok(signer) => {
            let text = serde_json::to_string_pretty(&signer.directory()).unwrap_or_default();
            super::print(&text);
            0
        }
        Err(error) => {
            eprintln!("tollgate: {error}");
            1
        }
    }
}
