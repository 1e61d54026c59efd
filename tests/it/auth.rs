//! Bearer tokens end to end, on a real cluster and through a real router: without a token
//! or with an unknown one a request is refused 401 and changes nothing; a token may do
//! exactly what its grants say (403 otherwise, nothing changed), for point reads, scans,
//! watches, writes, transactions, leases and admin endpoints; the open paths stay open;
//! the CLI sends the token from `--token` or `ASPEN_TOKEN`, and curl from its header; a
//! router's reload replaces its tokens.

use crate::support;

use std::process::Command as Process;
use std::time::Duration;

use aspen_api::client::WatchOptions;
use aspen_api::json::{JsonPrecondition, JsonWrite, TxnRequest};
use aspen_api::server::auth::token_sha256;
use aspen_api::{AspenClient, Consistency, ErrorCode};
use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
use aspen_config::{AuthConfig, TokenConfig};
use aspen_router::RunningRouter;

const ADMIN: &str = "aspen_admin_token";
const WRITER: &str = "aspen_writer_token";
const READER: &str = "aspen_reader_token";

fn token(name: &str, text: &str, read: &[&str], write: &[&str], admin: bool) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        sha256: aspen_api::codec::hex(&token_sha256(text)),
        read: read.iter().map(|p| p.to_string()).collect(),
        write: write.iter().map(|p| p.to_string()).collect(),
        admin,
    }
}

/// An admin with every key, a writer of `config/` who may read `svc/`, a reader of `svc/`.
fn auth() -> AuthConfig {
    AuthConfig {
        tokens: vec![
            token("admin", ADMIN, &[], &[""], true),
            token("writer", WRITER, &["svc/"], &["config/"], false),
            token("reader", READER, &["svc/"], &[], false),
        ],
        ..AuthConfig::default()
    }
}

async fn start_cluster(dir: &std::path::Path) -> LocalCluster {
    let spec = LocalClusterSpec {
        cluster: "us-1".into(),
        data_dir: dir.to_path_buf(),
        nodes: 3,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: support::fast_raft(),
        kv_clients: support::kv_clients(),
    };
    let mut bound = LocalCluster::bind(spec).await.unwrap();
    for config in bound.configs_mut() {
        config.auth = Some(auth());
    }
    let cluster = bound.start().await.unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    cluster
}

fn code(result: Result<impl std::fmt::Debug, aspen_api::ClientError>) -> Option<ErrorCode> {
    result.expect_err("refused").code()
}

/// The checks every server with `auth()` must pass, at `url`.
async fn check_grants(url: &str) {
    let anonymous = AspenClient::new(url);
    let admin = AspenClient::new(url).with_token(ADMIN);
    let writer = AspenClient::new(url).with_token(WRITER);
    let reader = AspenClient::new(url).with_token(READER);
    let wrong = AspenClient::new(url).with_token("aspen_not_a_token");
    admin.put("svc/a", b"1").await.unwrap();

    // No token, or an unknown one: 401, nothing read or written.
    assert_eq!(
        code(anonymous.put("svc/a", b"x").await),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(wrong.put("svc/a", b"x").await),
        Some(ErrorCode::Unauthorized)
    );
    assert_eq!(
        code(anonymous.get("svc/a", Consistency::Linearizable).await),
        Some(ErrorCode::Unauthorized)
    );

    // The reader reads svc/ and nothing else, and writes nothing.
    let entry = reader
        .get("svc/a", Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(entry.unwrap().value.as_deref(), Some("1"));
    assert_eq!(
        code(reader.put("svc/a", b"x").await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(reader.get("config/x", Consistency::Linearizable).await),
        Some(ErrorCode::Forbidden)
    );
    assert!(reader
        .scan("svc/", None, None, Consistency::Linearizable)
        .await
        .is_ok());
    assert_eq!(
        code(reader.scan("", None, None, Consistency::Linearizable).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(
            reader
                .scan("sv", None, None, Consistency::Linearizable)
                .await
        ),
        Some(ErrorCode::Forbidden)
    );
    let everything = WatchOptions {
        prefix: true,
        ..WatchOptions::default()
    };
    assert_eq!(
        code(reader.watch("", &everything).await),
        Some(ErrorCode::Forbidden)
    );
    assert!(reader.watch("svc/", &everything).await.is_ok());
    assert_eq!(
        code(reader.lease_grant(10, Some("svc/l")).await),
        Some(ErrorCode::Forbidden)
    );

    // The writer writes config/, checks svc/ in a transaction, and no more.
    writer.put("config/x", b"2").await.unwrap();
    let txn = |write: &str| TxnRequest {
        preconditions: vec![JsonPrecondition {
            key: "svc/a".into(),
            exists: None,
            not_exists: None,
            equals: Some("1".into()),
            equals_base64: None,
            mod_revision: None,
            equals_blob: None,
        }],
        writes: vec![JsonWrite::new(write, b"3")],
        deletes: vec![],
    };
    assert!(writer.txn(&txn("config/y")).await.is_ok());
    assert_eq!(
        code(writer.txn(&txn("svc/b")).await),
        Some(ErrorCode::Forbidden)
    );
    assert_eq!(
        code(writer.put("svc/a", b"x").await),
        Some(ErrorCode::Forbidden)
    );
    writer.lease_grant(10, Some("config/l")).await.unwrap();
    assert_eq!(
        code(writer.lease_grant(10, Some("svc/l")).await),
        Some(ErrorCode::Forbidden)
    );

    // Nothing refused changed anything.
    let a = admin.get("svc/a", Consistency::Linearizable).await.unwrap();
    assert_eq!(a.unwrap().value.as_deref(), Some("1"));
    let b = admin.get("svc/b", Consistency::Linearizable).await.unwrap();
    assert!(b.is_none(), "the refused transaction wrote nothing");

    // Open paths need no token; everything else does.
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    for path in ["/healthz", "/metrics"] {
        let status = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path} is open");
    }
    let status = http.get(format!("{url}/v1/status")).send().await.unwrap();
    assert_eq!(status.status(), 401);
    assert_eq!(
        status.headers()["www-authenticate"],
        "Bearer realm=\"aspen\""
    );
    assert!(admin.any_status().await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_serves_each_token_exactly_its_grants_and_nobody_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path()).await;
    let url = cluster.url(1);
    check_grants(&url).await;

    // Membership changes need the admin grant; with it the request gets past auth to
    // its own validation.
    let http = aspen_api::client::http_client(Duration::from_secs(10));
    let promote = |token: &'static str| {
        http.post(format!("{url}/v1/cluster/promote"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(r#"{"node_id": 99}"#)
            .send()
    };
    assert_eq!(promote(WRITER).await.unwrap().status(), 403);
    assert_ne!(promote(ADMIN).await.unwrap().status(), 403);

    // The CLI: --token, ASPEN_TOKEN, and a clear refusal without.
    let aspen = |env_token: Option<&str>, args: &[&str]| {
        let mut command = Process::new(env!("CARGO_BIN_EXE_aspen"));
        command
            .args(args)
            .args(["--endpoint", &url])
            .env_remove("ASPEN_TOKEN");
        if let Some(t) = env_token {
            command.env("ASPEN_TOKEN", t);
        }
        command.output().unwrap()
    };
    let out = aspen(None, &["kv", "put", "config/cli", "v", "--token", WRITER]);
    assert!(out.status.success(), "{out:?}");
    let out = aspen(Some(READER), &["kv", "get", "svc/a"]);
    assert!(out.status.success(), "{out:?}");
    let out = aspen(None, &["kv", "get", "svc/a"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("unauthorized"), "{said}");

    // curl with the header, as the docs show.
    let curl = |token: &str| {
        Process::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{url}/v1/kv/svc/a"))
            .output()
            .unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&curl(READER).stdout), "200");
    assert_eq!(String::from_utf8_lossy(&curl("nope").stdout), "401");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_with_auth_serves_each_token_exactly_its_grants() {
    let dir = tempfile::tempdir().unwrap();
    let us1 = start_cluster(&dir.path().join("us-1")).await;
    let us2 = support::start_named_cluster("us-2", 3, support::fast_raft()).await;
    let members = |c: &LocalCluster| c.members().to_vec();
    let mut config = aspen_config::RouterConfig::dev(
        "us",
        support::client_key_file(),
        vec![
            aspen_config::ClusterConfig {
                name: "us-1".into(),
                region: "us".into(),
                nodes: members(&us1),
            },
            aspen_config::ClusterConfig {
                name: "us-2".into(),
                region: "us".into(),
                nodes: members(&us2.cluster),
            },
        ],
        vec![
            aspen_config::RouteConfig {
                prefix: "".into(),
                cluster: "us-1".into(),
            },
            aspen_config::RouteConfig {
                prefix: "svc-b/".into(),
                cluster: "us-2".into(),
            },
        ],
    );
    config.iroh_bind_addr = "127.0.0.1:0".parse().unwrap();
    config.auth = Some(auth());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let router = RunningRouter::start(&config, listener).await.unwrap();
    check_grants(&router.url()).await;

    // A reload replaces the tokens: the reader's goes, a new one comes; an invalid
    // [auth] is refused and the tokens in force stay.
    let url = router.url();
    let reader = AspenClient::new(&url).with_token(READER);
    let newcomer = AspenClient::new(&url).with_token("aspen_new_token");
    let mut next = config.clone();
    next.auth = Some(AuthConfig {
        tokens: vec![
            token("admin", ADMIN, &[], &[""], true),
            token("newcomer", "aspen_new_token", &["svc/"], &[], false),
        ],
        ..AuthConfig::default()
    });
    router.reload(&next).unwrap();
    assert_eq!(
        code(reader.get("svc/a", Consistency::Linearizable).await),
        Some(ErrorCode::Unauthorized)
    );
    assert!(newcomer
        .get("svc/a", Consistency::Linearizable)
        .await
        .is_ok());
    let mut invalid = next.clone();
    invalid.auth.as_mut().unwrap().tokens.clear();
    let refused = router.reload(&invalid).unwrap_err();
    assert!(refused.contains("auth.tokens"), "{refused}");
    assert!(newcomer
        .get("svc/a", Consistency::Linearizable)
        .await
        .is_ok());
    router.shutdown().await;
    us1.shutdown().await;
    us2.cluster.shutdown().await;
}
