//! The conditional writes of `aspen kv`: `cas`, `cad` and `txn`. A precondition that does
//! not hold is an expected outcome, not an error: the command prints what the key
//! actually holds (and for `txn`, which precondition failed) and exits with
//! [`EXIT_PRECONDITION_FAILED`]. With `--json` the output is the API's 409 body.

use std::process::ExitCode;

use aspen_api::client::{CasOutcome, TxnOutcome};
use aspen_api::json::{
    CadRequest, CasRequest, ErrorBody, JsonKeyState, JsonPrecondition, JsonWrite, TxnRequest,
};
use aspen_api::{AspenClient, ErrorCode};
use clap::Args;

use super::print_write;
use crate::cli::endpoint::explain;
use crate::cli::parse::{self, KeyRevision, KeyValue};
use crate::cli::{render, EXIT_PRECONDITION_FAILED};

/// Arguments of `aspen kv cas`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("condition").required(true).args(["expected", "absent"]))]
pub struct CasArgs {
    /// The key.
    #[arg(value_parser = parse::key)]
    key: String,
    /// The value to write when the condition holds.
    #[arg(long = "new", value_name = "VALUE")]
    new_value: String,
    /// The value the key must hold now.
    #[arg(long, value_name = "VALUE")]
    expected: Option<String>,
    /// The key must not exist now (create-if-absent).
    #[arg(long)]
    absent: bool,
}

/// Arguments of `aspen kv cad`.
#[derive(Debug, Args)]
pub struct CadArgs {
    /// The key.
    #[arg(value_parser = parse::key)]
    key: String,
    /// The value the key must hold for the delete to happen.
    #[arg(long, value_name = "VALUE")]
    expected: String,
}

/// Arguments of `aspen kv txn` (the precondition order is documented on the command).
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("parts").required(true).multiple(true)
    .args(["require_exists", "require_absent", "require_equals", "require_mod_revision", "set", "delete"]))]
pub struct TxnArgs {
    /// The key must exist (repeatable).
    #[arg(long, value_name = "KEY", value_parser = parse::key)]
    require_exists: Vec<String>,
    /// The key must not exist (repeatable).
    #[arg(long, value_name = "KEY", value_parser = parse::key)]
    require_absent: Vec<String>,
    /// The key must hold exactly VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse::key_value)]
    require_equals: Vec<KeyValue>,
    /// The key's mod_revision must be REVISION; 0 means it must not exist (repeatable).
    #[arg(long, value_name = "KEY=REVISION", value_parser = parse::key_revision)]
    require_mod_revision: Vec<KeyRevision>,
    /// A key to set when every precondition holds, as KEY=VALUE (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse::key_value)]
    set: Vec<KeyValue>,
    /// A key to delete when every precondition holds (repeatable).
    #[arg(long, value_name = "KEY", value_parser = parse::key)]
    delete: Vec<String>,
}

impl TxnArgs {
    fn into_request(self) -> TxnRequest {
        let mut preconditions = Vec::new();
        let base = |key: String| JsonPrecondition {
            key,
            ..Default::default()
        };
        for key in self.require_exists {
            preconditions.push(JsonPrecondition {
                exists: Some(true),
                ..base(key)
            });
        }
        for key in self.require_absent {
            preconditions.push(JsonPrecondition {
                not_exists: Some(true),
                ..base(key)
            });
        }
        for kv in self.require_equals {
            preconditions.push(JsonPrecondition {
                equals: Some(kv.value),
                ..base(kv.key)
            });
        }
        for kr in self.require_mod_revision {
            preconditions.push(JsonPrecondition {
                mod_revision: Some(kr.revision),
                ..base(kr.key)
            });
        }
        TxnRequest {
            preconditions,
            writes: self
                .set
                .iter()
                .map(|kv| JsonWrite::new(&kv.key, kv.value.as_bytes()))
                .collect(),
            deletes: self.delete,
        }
    }
}

/// `aspen kv cas`.
pub async fn cas(client: &AspenClient, args: CasArgs, json: bool) -> anyhow::Result<ExitCode> {
    let expected = if args.absent {
        None
    } else {
        args.expected.as_deref().map(str::as_bytes)
    };
    let request = CasRequest::new(&args.key, expected, args.new_value.as_bytes());
    match client.cas(&request).await.map_err(|e| explain(e, client))? {
        CasOutcome::Applied(answer) => print_write(
            &answer,
            json,
            &format!("swapped {}", render::quote(&args.key)),
        ),
        CasOutcome::Mismatch(actual) => mismatch("compare-and-swap", actual, json),
    }
}

/// `aspen kv cad`.
pub async fn cad(client: &AspenClient, args: CadArgs, json: bool) -> anyhow::Result<ExitCode> {
    let request = CadRequest::new(&args.key, args.expected.as_bytes());
    match client.cad(&request).await.map_err(|e| explain(e, client))? {
        CasOutcome::Applied(answer) => print_write(
            &answer,
            json,
            &format!("deleted {}", render::quote(&args.key)),
        ),
        CasOutcome::Mismatch(actual) => mismatch("compare-and-delete", actual, json),
    }
}

/// `aspen kv txn`.
pub async fn txn(client: &AspenClient, args: TxnArgs, json: bool) -> anyhow::Result<ExitCode> {
    let request = args.into_request();
    match client.txn(&request).await.map_err(|e| explain(e, client))? {
        TxnOutcome::Applied(answer) => {
            let what = format!(
                "transaction applied ({} precondition(s) held; set {} key(s), deleted {})",
                request.preconditions.len(),
                request.writes.len(),
                answer.deleted_count.unwrap_or(0)
            );
            print_write(&answer, json, &what)
        }
        TxnOutcome::Failed(failure) => {
            let message = format!(
                "transaction not applied: precondition {} ({}) did not hold: {}; nothing was changed",
                failure.index,
                render::precondition(&failure.precondition),
                render::key_state(&failure.actual)
            );
            if json {
                let mut body = ErrorBody::new(ErrorCode::PreconditionFailed, message);
                body.failed = Some(*failure);
                render::json(&body)?;
            } else {
                eprintln!("{message}");
            }
            Ok(ExitCode::from(EXIT_PRECONDITION_FAILED))
        }
    }
}

/// Reports a CAS / CAD whose expected value did not match.
fn mismatch(what: &str, actual: JsonKeyState, json: bool) -> anyhow::Result<ExitCode> {
    let message = format!(
        "{what} not applied: {}; nothing was changed",
        render::key_state(&actual)
    );
    if json {
        let mut body = ErrorBody::new(ErrorCode::PreconditionFailed, message);
        body.actual = Some(actual);
        render::json(&body)?;
    } else {
        eprintln!("{message}");
    }
    Ok(ExitCode::from(EXIT_PRECONDITION_FAILED))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txn_preconditions_are_sent_in_documented_order() {
        let args = TxnArgs {
            require_exists: vec!["e".into()],
            require_absent: vec!["a".into()],
            require_equals: vec![parse::key_value("q=v").unwrap()],
            require_mod_revision: vec![parse::key_revision("m=3").unwrap()],
            set: vec![parse::key_value("s=1").unwrap()],
            delete: vec!["d".into()],
        };
        let request = args.into_request();
        let keys: Vec<&str> = request
            .preconditions
            .iter()
            .map(|p| p.key.as_str())
            .collect();
        assert_eq!(keys, ["e", "a", "q", "m"]);
        assert_eq!(request.preconditions[3].mod_revision, Some(3));
        assert_eq!(request.writes[0].value.as_deref(), Some("1"));
        assert_eq!(request.deletes, ["d"]);
    }
}
