//! Who may do what over HTTP: the bearer tokens of a process's `[auth]` config
//! ([`Policy`]), checked for every request by the layer [`guard`] puts on the whole app.
//!
//! - Without `[auth]` every request is served ([`Caller::Anyone`]): `aspen dev` on
//!   loopback.
//! - With it, a request to one of its `open_paths` is served to anyone; any other needs
//!   `Authorization: Bearer TOKEN` with a token the config lists (401 `unauthorized`
//!   otherwise, before anything runs). Tokens are known only by their SHA-256; the
//!   request's hash is compared with every listed one, in constant time.
//! - What a token may do is checked where a request becomes a command, a read, a watch or
//!   a lease operation: the KV handlers reach their backend only through [`Checked`],
//!   which asks the request's [`Caller`] first (403 `forbidden`, nothing done). A key is
//!   covered by a grant when it starts with the grant's prefix; a scan or watch of a
//!   prefix when the prefix does. `write` grants read too. Preconditions need read,
//!   written and deleted keys write, leases any write grant (and, for a grant with a
//!   routing key, write on that key).
//! - Admin endpoints (membership, debug) add [`require_admin`].

use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{KvBackend, LeaseReply, ReadAnswer, ReadOptions, Written};
use crate::command::{Command, Precondition};
use crate::error::{ApiError, ErrorCode};
use crate::lease::LeaseOp;
use crate::types::ReadRequest;
use crate::watch::WatchRequest;

/// One accepted token: the SHA-256 of its text and what it grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrants {
    /// Its name, for errors and logs.
    pub name: String,
    /// SHA-256 of the token's text.
    pub sha256: [u8; 32],
    /// Prefixes it may read.
    pub read: Vec<String>,
    /// Prefixes it may read and write.
    pub write: Vec<String>,
    /// Whether it may use admin endpoints.
    pub admin: bool,
}

/// A process's authentication rules (its config's `[auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Paths served without a token.
    pub open_paths: Vec<String>,
    /// The tokens accepted.
    pub tokens: Vec<Arc<TokenGrants>>,
}

/// Who sent a request, as the [`guard`] layer found it.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No `[auth]` (or an open path): everything is allowed.
    Anyone,
    /// A listed token: what it grants is allowed.
    Token(Arc<TokenGrants>),
}

impl Policy {
    /// The policy a config's `[auth]` describes (validated: every hash is 64 hex).
    pub fn from_config(config: &aspen_config::AuthConfig) -> Policy {
        let tokens = config
            .tokens
            .iter()
            .map(|t| {
                let mut sha256 = [0u8; 32];
                for (i, byte) in sha256.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(&t.sha256[2 * i..2 * i + 2], 16)
                        .expect("validated: 64 hex characters");
                }
                Arc::new(TokenGrants {
                    name: t.name.clone(),
                    sha256,
                    read: t.read.clone(),
                    write: t.write.clone(),
                    admin: t.admin,
                })
            })
            .collect();
        Policy {
            open_paths: config.open_paths.clone(),
            tokens,
        }
    }
}

/// The SHA-256 of `token`'s text, as `[auth]` stores it.
pub fn token_sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    digest
        .as_ref()
        .try_into()
        .expect("a SHA-256 digest is 32 bytes")
}

impl Policy {
    /// The token behind an `Authorization` header, or the 401 to answer.
    fn authenticate(&self, header: Option<&HeaderValue>) -> Result<Arc<TokenGrants>, ApiError> {
        let unauthorized = |why: &str| ApiError::new(ErrorCode::Unauthorized, why.to_string());
        let Some(value) = header else {
            return Err(unauthorized(
                "this server requires a token: send `Authorization: Bearer TOKEN` (aspen: \
                 --token or ASPEN_TOKEN)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                unauthorized("the Authorization header must be `Bearer TOKEN`, with a token")
            })?;
        let hash = token_sha256(token);
        // Every listed hash is compared, so the time taken says nothing about which one
        // (if any) matched.
        let mut found = None;
        for grants in &self.tokens {
            if bool::from(grants.sha256.ct_eq(&hash)) {
                found = Some(grants.clone());
            }
        }
        found.ok_or_else(|| unauthorized("the token is not one this server accepts"))
    }
}

/// A process's current policy (`None`: no `[auth]`), replaceable while it serves, as a
/// router's SIGHUP does; clones share it. Each request uses the policy current when it
/// arrives.
#[derive(Debug, Clone, Default)]
pub struct PolicyCell(Arc<RwLock<Option<Arc<Policy>>>>);

impl PolicyCell {
    /// A cell holding `policy`.
    pub fn new(policy: Option<Policy>) -> PolicyCell {
        PolicyCell(Arc::new(RwLock::new(policy.map(Arc::new))))
    }

    /// Replaces the policy; requests from now on use `policy`.
    pub fn set(&self, policy: Option<Policy>) {
        *self.0.write().expect("policy lock") = policy.map(Arc::new);
    }

    fn current(&self) -> Option<Arc<Policy>> {
        self.0.read().expect("policy lock").clone()
    }
}

/// `app` with every request's caller established first: under a policy, requests
/// without a valid token are answered 401 (unless their path is open); without one,
/// everyone is [`Caller::Anyone`]. Every app that serves the KV routes must be wrapped in
/// it: the handlers refuse a request that has no caller.
pub fn guard(app: axum::Router, policy: PolicyCell) -> axum::Router {
    app.layer(axum::middleware::from_fn_with_state(policy, authenticate))
}

async fn authenticate(
    State(policy): State<PolicyCell>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match &policy.current() {
        None => Caller::Anyone,
        Some(p) if p.open_paths.iter().any(|o| o == request.uri().path()) => Caller::Anyone,
        Some(p) => match p.authenticate(request.headers().get(header::AUTHORIZATION)) {
            Ok(grants) => Caller::Token(grants),
            Err(e) => {
                let mut response = super::HttpError::from(e).into_response();
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"aspen\""),
                );
                return response;
            }
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// A route layer for admin endpoints: 403 unless the caller may administer.
pub async fn require_admin(request: Request, next: Next) -> Response {
    let allowed = match request.extensions().get::<Caller>() {
        Some(caller) => caller.may_administer(),
        None => Err(no_caller()),
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(e) => super::HttpError::from(e).into_response(),
    }
}

fn no_caller() -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        "this server's app has no authentication layer (aspen_api::server::auth::guard)",
    )
}

impl Caller {
    fn forbidden(grants: &TokenGrants, what: String) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "token {:?} may not {what} (it may read under {:?}, write under {:?}{})",
                grants.name,
                grants.read,
                grants.write,
                if grants.admin { ", and administer" } else { "" }
            ),
        )
    }

    /// Whether the caller may read `key` (or every key under it, for a prefix).
    pub fn may_read(&self, key: &str) -> Result<(), ApiError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(g) if covered(&g.read, key) || covered(&g.write, key) => Ok(()),
            Caller::Token(g) => Err(Self::forbidden(g, format!("read {key:?}"))),
        }
    }

    /// Whether the caller may write `key`.
    pub fn may_write_key(&self, key: &str) -> Result<(), ApiError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(g) if covered(&g.write, key) => Ok(()),
            Caller::Token(g) => Err(Self::forbidden(g, format!("write {key:?}"))),
        }
    }

    /// Whether the caller may run `command`: write every key it writes or deletes, read
    /// every key a precondition reads.
    pub fn may_write(&self, command: &Command) -> Result<(), ApiError> {
        match command {
            Command::Leased { command, .. } => self.may_write(command),
            Command::ConditionalSetMulti {
                preconditions,
                writes,
                deletes,
            } => {
                for p in preconditions {
                    self.may_read(Precondition::key(p))?;
                }
                let written = writes.iter().map(|(k, _)| k).chain(deletes);
                written.into_iter().try_for_each(|k| self.may_write_key(k))
            }
            Command::SetBlob {
                key, preconditions, ..
            } => {
                for p in preconditions {
                    self.may_read(Precondition::key(p))?;
                }
                self.may_write_key(key)
            }
            other => other
                .keys()
                .into_iter()
                .try_for_each(|k| self.may_write_key(k)),
        }
    }

    /// Whether the caller may use leases: any write grant, and for a grant routed by a
    /// key, write on that key.
    pub fn may_lease(&self, op: &LeaseOp) -> Result<(), ApiError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(g) if g.write.is_empty() => {
                Err(Self::forbidden(g, "use leases".to_string()))
            }
            Caller::Token(_) => match op {
                LeaseOp::Grant { key: Some(key), .. } => self.may_write_key(key),
                _ => Ok(()),
            },
        }
    }

    /// Whether the caller may use admin endpoints.
    pub fn may_administer(&self) -> Result<(), ApiError> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::Token(g) if g.admin => Ok(()),
            Caller::Token(g) => Err(Self::forbidden(g, "use admin endpoints".to_string())),
        }
    }
}

/// Whether `key` (or prefix) starts with one of `prefixes`.
fn covered(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

/// A request's backend behind its caller's grants: the KV handlers take this, so no
/// write, read, watch or lease reaches the backend unchecked.
pub(super) struct Checked<B> {
    backend: Arc<B>,
    caller: Result<Caller, ApiError>,
}

impl<B: KvBackend> FromRequestParts<Arc<B>> for Checked<B> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<B>,
    ) -> Result<Self, Self::Rejection> {
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(no_caller);
        Ok(Checked {
            backend: state.clone(),
            caller,
        })
    }
}

impl<B> Checked<B> {
    fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller.as_ref().map_err(Clone::clone)
    }
}

impl<B: KvBackend> KvBackend for Checked<B> {
    async fn write(&self, command: Command) -> Result<Written, ApiError> {
        self.caller()?.may_write(&command)?;
        self.backend.write(command).await
    }

    async fn read(
        &self,
        request: ReadRequest,
        options: ReadOptions,
    ) -> Result<ReadAnswer, ApiError> {
        let key = match &request {
            ReadRequest::Get { key } => key,
            ReadRequest::Scan { prefix, .. } => prefix,
        };
        self.caller()?.may_read(key)?;
        self.backend.read(request, options).await
    }

    async fn watch(&self, request: WatchRequest) -> Result<super::WatchStream, ApiError> {
        self.caller()?.may_read(&request.filter.key)?;
        self.backend.watch(request).await
    }

    async fn lease(&self, op: LeaseOp) -> Result<LeaseReply, ApiError> {
        self.caller()?.may_lease(&op)?;
        self.backend.lease(op).await
    }

    async fn put_blob(&self, put: super::BlobPut) -> Result<Written, ApiError> {
        self.caller()?.may_write_key(&put.key)?;
        self.backend.put_blob(put).await
    }

    async fn read_blob(
        &self,
        key: &str,
        cluster: &str,
        blob: crate::BlobRef,
        range: (u64, u64),
    ) -> Result<super::ValueStream, ApiError> {
        self.caller()?.may_read(key)?;
        self.backend.read_blob(key, cluster, blob, range).await
    }

    fn observe(&self, op: &'static str, status: u16, seconds: f64) {
        self.backend.observe(op, status, seconds);
    }
}
