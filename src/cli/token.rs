//! `aspen token new`: make a bearer token for a server's `[auth]`. Prints the token
//! (first line: hand it to the client, as `ASPEN_TOKEN`; it is shown only here) and then
//! the `[[auth.tokens]]` entry to add to the config of every node and router that should
//! accept it, which holds only the token's SHA-256.

use std::process::ExitCode;

use aspen_api::codec::hex;
use aspen_api::server::auth::token_sha256;
use aspen_config::TokenConfig;
use clap::{Args, Subcommand};

/// Arguments of `aspen token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a new random token and print it, then its config entry.
    New(NewArgs),
}

/// Arguments of `aspen token new`.
#[derive(Debug, Args)]
struct NewArgs {
    /// The token's name in the config, errors and logs (1 to 64 characters).
    #[arg(long)]
    name: String,
    /// A key prefix the token may read (repeat for more; "" is every key).
    #[arg(long, value_name = "PREFIX")]
    read: Vec<String>,
    /// A key prefix the token may read and write, leases included (repeat for more).
    #[arg(long, value_name = "PREFIX")]
    write: Vec<String>,
    /// Whether the token may change membership and use debug endpoints.
    #[arg(long)]
    admin: bool,
}

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// Runs `aspen token`.
pub async fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let TokenCommand::New(new) = args.command;
    let bytes: [u8; TOKEN_BYTES] = rand::random();
    let token = format!("aspen_{}", hex(&bytes));
    let entry = TokenConfig {
        name: new.name,
        sha256: hex(&token_sha256(&token)),
        read: new.read,
        write: new.write,
        admin: new.admin,
    };
    let auth = aspen_config::AuthConfig {
        tokens: vec![entry],
        ..aspen_config::AuthConfig::default()
    };
    // The same rules a config file is held to, so what is printed loads.
    auth.validate()?;
    #[derive(serde::Serialize)]
    struct Tokens<'a> {
        tokens: &'a [TokenConfig],
    }
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        auth: Tokens<'a>,
    }
    let toml = toml::to_string(&Entry {
        auth: Tokens {
            tokens: &auth.tokens,
        },
    })?;
    println!("{token}");
    println!();
    println!("# Add to the [auth] table of every node and router that should accept the token:");
    print!("{toml}");
    eprintln!(
        "the first line is the token, shown only now: give it to the client (ASPEN_TOKEN); \
         the config keeps only its SHA-256"
    );
    Ok(ExitCode::SUCCESS)
}
