//! `http_request`: everything of a request but a JSON body, through the real app: the key
//! in the path (percent-decoded by the router), the query (a scan's continuation token
//! `after`, `limit`, `consistency`, `max_lag`, `index`/`wait`, a watch's `resume` token,
//! a put's `lease`), `Last-Event-ID`, the lease id in a lease route's path, and the
//! `Authorization` header.
//!
//! Input: a selector byte, then up to five fields separated by `\n`: the path after the
//! route's prefix, the query, `Last-Event-ID`, `Authorization`, and a put's value. The
//! selector's low three bits pick the route (kv get, put, delete; watch; lease get,
//! keep-alive, revoke; or the path as it is, with the method from bits 3-4); bit 7 sends
//! it to the app with tokens. Bytes that make no valid URI or header are dropped, as
//! hyper drops such a request before any handler sees it.
//!
//! Beyond [`check_answer`] and [`check_grants`]: the key the backend gets is exactly the
//! percent-decoding of the path (and nothing reaches it when that is not UTF-8); a scan's
//! `after` and `limit` are the query's; a watch's key is within the key limit and its
//! resume token prints back to itself; a lease id from the path is the one it names.

use aspen_api::lease::{LeaseId, LeaseOp};
use aspen_api::limits::{DEFAULT_SCAN_LIMIT, MAX_KEY_BYTES};
use aspen_api::types::ReadRequest;
use aspen_api::watch::ResumeToken;
use aspen_api::Command;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Uri};

use super::{caller, check_answer, check_grants, send, Exchange, Seen};

/// The routes, in selector order: method, path prefix, path suffix.
const ROUTES: [(Method, &str, &str); 7] = [
    (Method::GET, "/v1/kv/", ""),
    (Method::PUT, "/v1/kv/", ""),
    (Method::DELETE, "/v1/kv/", ""),
    (Method::GET, "/v1/watch/", ""),
    (Method::GET, "/v1/lease/", ""),
    (Method::POST, "/v1/lease/", "/keepalive"),
    (Method::DELETE, "/v1/lease/", ""),
];

/// Methods of a request to a path as it is.
const METHODS: [Method; 4] = [Method::GET, Method::PUT, Method::DELETE, Method::POST];

/// The fuzz body: see the module docs for the input's shape.
pub fn http_request(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(5, |b| *b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let (path, query, last_event_id, authorization, value) =
        (next(), next(), next(), next(), next());
    let route = ROUTES.get(usize::from(selector & 7));
    let (method, prefix, suffix) = match route {
        Some((method, prefix, suffix)) => (method.clone(), *prefix, *suffix),
        None => (METHODS[usize::from(selector >> 3 & 3)].clone(), "", ""),
    };
    let mut target = [prefix.as_bytes(), path, suffix.as_bytes()].concat();
    if !query.is_empty() {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    let mut request = Request::builder().method(method).uri(uri.clone());
    let headers = [
        ("last-event-id", last_event_id),
        (header::AUTHORIZATION.as_str(), authorization),
    ];
    let mut authorization = None;
    for (name, value) in headers {
        if value.is_empty() {
            continue;
        }
        let Ok(value) = HeaderValue::from_bytes(value) else {
            return;
        };
        if name == header::AUTHORIZATION {
            authorization = Some(value.as_bytes().to_vec());
        }
        request = request.header(name, value);
    }
    let Ok(request) = request.body(Body::from(value.to_vec())) else {
        return;
    };
    let guarded = selector & 0x80 != 0;
    let exchange = send(request, guarded);
    check_answer(&exchange);
    if guarded {
        check_grants(caller(authorization.as_deref()), uri.path(), &exchange);
    }
    if route.is_some() {
        check_route(&uri, prefix, suffix, &exchange);
    }
}

/// The route's parameters reached the backend as the request gave them.
fn check_route(uri: &Uri, prefix: &str, suffix: &str, exchange: &Exchange) {
    let raw = uri.path().strip_prefix(prefix).expect("the route's prefix");
    let raw = raw.strip_suffix(suffix).unwrap_or(raw);
    let decoded = percent_encoding::percent_decode_str(raw).decode_utf8();
    let Ok(decoded) = decoded else {
        assert!(
            exchange.seen.is_empty(),
            "a path that is not UTF-8 reached {:?}",
            exchange.seen
        );
        return;
    };
    let query = uri.query().unwrap_or_default();
    let last = |name: &str| {
        form_urlencoded::parse(query.as_bytes())
            .filter(|(n, _)| n == name)
            .last()
            .map(|(_, v)| v.into_owned())
    };
    for seen in &exchange.seen {
        match seen {
            Seen::Read(ReadRequest::Get { key }) => assert_eq!(*key, decoded),
            Seen::Read(ReadRequest::Scan {
                prefix,
                after,
                limit,
            }) => {
                assert_eq!(*prefix, decoded);
                assert_eq!(*after, last("after"), "the continuation token");
                let given = last("limit").map(|l| l.parse::<usize>().expect("parsed"));
                assert_eq!(*limit, given.unwrap_or(DEFAULT_SCAN_LIMIT));
            }
            Seen::Write(command) => check_put(command, &decoded),
            Seen::Watch(request) => {
                // A blocking read (`index`) waits through a watch of the read's keys.
                assert_eq!(request.filter.key, decoded);
                assert!(request.filter.key.len() <= MAX_KEY_BYTES || prefix == "/v1/kv/");
                let token = request.resume.to_string();
                assert_eq!(token.parse::<ResumeToken>().as_ref(), Ok(&request.resume));
            }
            Seen::Lease(LeaseOp::KeepAlive(id) | LeaseOp::Get(id) | LeaseOp::Revoke(id)) => {
                assert_eq!(decoded.parse::<LeaseId>().as_ref(), Ok(id));
                assert_eq!(id.to_string().parse::<LeaseId>().as_ref(), Ok(id));
            }
            Seen::Lease(op) => panic!("{} made {op:?}", uri.path()),
        }
    }
}

/// A put or delete of the key in the path, possibly with the query's lease.
fn check_put(command: &Command, key: &str) {
    let inner = match command {
        Command::Leased {
            attach, command, ..
        } => {
            assert_eq!(attach.len(), 1);
            assert_eq!(attach[0].0, key);
            command.as_ref()
        }
        other => other,
    };
    match inner {
        Command::Set { key: k, .. }
        | Command::Delete { key: k }
        | Command::SetBlob { key: k, .. } => assert_eq!(k, key),
        other => panic!("a put or delete of {key:?} made {other:?}"),
    }
}
