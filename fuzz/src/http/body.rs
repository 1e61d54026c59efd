//! `http_body`: a JSON body posted to `/v1/batch`, `/v1/cas`, `/v1/cad`, `/v1/txn` or
//! `/v1/lease`, through the real app: the handlers' own reading, parsing and validation.
//!
//! Input: the first byte picks the route (`byte % 5`) and the caller (`byte / 5 % 4`: no
//! `[auth]`, no token, [`READ_TOKEN`], [`WRITE_TOKEN`]); the rest is the body.
//!
//! Beyond [`check_answer`] and [`check_grants`]: a command from a JSON body reaches the
//! backend already validated (within every documented limit, and never a lease command),
//! as the command its route describes; a 2xx answer means the backend ran exactly one
//! operation, and a granted lease's TTL was in range.

use aspen_api::lease::LeaseOp;
use aspen_api::limits::{
    MAX_COMMAND_VALUE_BYTES, MAX_INLINE_VALUE_BYTES, MAX_KEYS_PER_COMMAND, MAX_KEY_BYTES,
    MAX_LEASE_TTL_SECS,
};
use aspen_api::Command;
use axum::body::Body;
use axum::http::{header, Method, Request};

use super::{check_answer, check_grants, send, Seen, READ_TOKEN, WRITE_TOKEN};

/// The JSON routes, in selector order.
const ROUTES: [&str; 5] = ["/v1/batch", "/v1/cas", "/v1/cad", "/v1/txn", "/v1/lease"];

/// The fuzz body: see the module docs for the input's shape.
pub fn http_body(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = ROUTES[usize::from(selector) % ROUTES.len()];
    let (guarded, token) = match selector / 5 % 4 {
        0 => (false, None),
        1 => (true, None),
        2 => (true, Some(READ_TOKEN)),
        _ => (true, Some(WRITE_TOKEN)),
    };
    let mut request = Request::builder().method(Method::POST).uri(route);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
        .body(Body::from(body.to_vec()))
        .expect("a fixed route and header make a request");
    let exchange = send(request, guarded);
    check_answer(&exchange);
    if guarded {
        check_grants(token, route, &exchange);
    }
    if (200..300).contains(&exchange.status) {
        assert_eq!(exchange.seen.len(), 1, "one operation per request");
    }
    for seen in &exchange.seen {
        match seen {
            Seen::Write(command) => check_command(route, command),
            Seen::Lease(LeaseOp::Grant { ttl_secs, .. }) if exchange.status == 200 => {
                assert!(
                    (1..=MAX_LEASE_TTL_SECS).contains(ttl_secs),
                    "ttl {ttl_secs}"
                );
            }
            Seen::Lease(LeaseOp::Grant { .. }) => {}
            other => panic!("{route} asked the backend for {other:?}"),
        }
    }
}

/// A command from a JSON body: validated, within the limits, the kind its route makes.
fn check_command(route: &str, command: &Command) {
    command
        .validate()
        .unwrap_or_else(|e| panic!("{route} passed on an invalid command ({e}): {command:?}"));
    let inner = match command {
        Command::Leased { command, .. } => command.as_ref(),
        other => other,
    };
    let kind_ok = match route {
        "/v1/batch" => match inner {
            Command::SetMulti { .. } | Command::DeleteMulti { .. } => true,
            Command::ConditionalSetMulti { preconditions, .. } => preconditions.is_empty(),
            _ => false,
        },
        "/v1/cas" => match inner {
            Command::CompareAndSwap { .. } => true,
            // `expected_blob`: the swap as a transaction comparing the key by hash.
            Command::ConditionalSetMulti {
                preconditions,
                writes,
                deletes,
            } => by_blob(preconditions) && writes.len() == 1 && deletes.is_empty(),
            _ => false,
        },
        "/v1/cad" => match inner {
            Command::CompareAndDelete { .. } => true,
            Command::ConditionalSetMulti {
                preconditions,
                writes,
                deletes,
            } => by_blob(preconditions) && writes.is_empty() && deletes.len() == 1,
            _ => false,
        },
        "/v1/txn" => matches!(inner, Command::ConditionalSetMulti { .. }),
        _ => false,
    };
    assert!(kind_ok, "{route} made {command:?}");
    let keys = command.keys();
    assert!((1..=MAX_KEYS_PER_COMMAND).contains(&keys.len()));
    assert!(keys.iter().all(|k| (1..=MAX_KEY_BYTES).contains(&k.len())));
    let values = values(inner);
    assert!(values.iter().all(|v| *v <= MAX_INLINE_VALUE_BYTES));
    assert!(values.iter().sum::<usize>() <= MAX_COMMAND_VALUE_BYTES);
}

/// One precondition, comparing a key with a blob reference.
fn by_blob(preconditions: &[aspen_api::Precondition]) -> bool {
    matches!(preconditions, [aspen_api::Precondition::BlobEquals { .. }])
}

/// The lengths of the values a key command carries (written and expected).
fn values(command: &Command) -> Vec<usize> {
    match command {
        Command::Set { value, .. } => vec![value.len()],
        Command::SetMulti { writes } => writes.iter().map(|(_, v)| v.len()).collect(),
        Command::CompareAndSwap {
            expected,
            new_value,
            ..
        } => vec![expected.as_ref().map_or(0, |v| v.len()), new_value.len()],
        Command::CompareAndDelete { expected, .. } => vec![expected.len()],
        Command::ConditionalSetMulti {
            preconditions,
            writes,
            ..
        } => preconditions
            .iter()
            .map(|p| match p {
                aspen_api::Precondition::Equals { value, .. } => value.len(),
                _ => 0,
            })
            .chain(writes.iter().map(|(_, v)| v.len()))
            .collect(),
        _ => vec![],
    }
}
