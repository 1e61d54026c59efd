//! TLS on the HTTP API end to end, on a real node with `[tls]` (mutual: a client
//! certificate is required) and `[auth]`: the CLI with --cacert, --client-cert,
//! --client-key and a token, over HTTP/1.1 and HTTP/2, and curl; a client without a certificate, and plain
//! HTTP, get nothing.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command as Process, Output};
use std::time::Duration;

use aspen_api::server::auth::token_sha256;
use aspen_cluster_node::local_cluster::{LocalCluster, LocalClusterSpec};
use aspen_config::{AuthConfig, TlsConfig, TokenConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

const TOKEN: &str = "aspen_tls_test_token";

/// PEM files of a CA, a server certificate for 127.0.0.1 and a client certificate, both
/// signed by the CA, under `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Each certificate its own subject: with the CA's, a leaf looks self-signed to OpenSSL.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Aspen test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].clone());
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["client".into()]);
    let write = |name: &str, pem: &str| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server-key.pem", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client-key.pem", &client_key),
    }
}

fn run(args: &[&str]) -> Output {
    Process::new(env!("CARGO_BIN_EXE_aspen"))
        .args(args)
        .env_remove("ASPEN_TOKEN")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_mutual_tls_and_a_token_serves_the_cli_and_curl_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let spec = LocalClusterSpec {
        cluster: "tls".into(),
        data_dir: dir.path().join("data"),
        nodes: 1,
        first_http: "127.0.0.1:0".parse().unwrap(),
        raft: support::fast_raft(),
        kv_clients: support::kv_clients(),
    };
    let mut bound = LocalCluster::bind(spec).await.unwrap();
    for config in bound.configs_mut() {
        config.tls = Some(TlsConfig {
            cert_file: pki.server_cert.clone(),
            key_file: pki.server_key.clone(),
            client_ca_file: Some(pki.ca.clone()),
        });
        config.auth = Some(AuthConfig {
            tokens: vec![TokenConfig {
                name: "tls".into(),
                sha256: aspen_api::codec::hex(&token_sha256(TOKEN)),
                read: vec![],
                write: vec!["".into()],
                admin: false,
            }],
            ..AuthConfig::default()
        });
    }
    let cluster = bound.start().await.unwrap();
    cluster
        .wait_for_leader(Duration::from_secs(20))
        .await
        .unwrap();
    let url = cluster.url(1).replacen("http://", "https://", 1);
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let tls_args = [
        "--endpoint",
        &url,
        "--cacert",
        &ca,
        "--client-cert",
        &cert,
        "--client-key",
        &key,
        "--token",
        TOKEN,
    ];

    // The CLI over HTTP/1.1, then over HTTP/2 (by ALPN).
    let put = run(&[&["kv", "put", "greeting", "hello"][..], &tls_args].concat());
    assert!(put.status.success(), "{put:?}");
    let get = run(&[&["kv", "get", "greeting", "--http2"][..], &tls_args].concat());
    assert!(get.status.success(), "{get:?}");
    assert!(text(&get.stdout).contains("hello"), "{}", text(&get.stdout));

    // curl with the CA, the client certificate and the token; then without the token.
    let curl = |extra: &[&str]| {
        Process::new("curl")
            .args([
                "-sS",
                "-w",
                "\n%{http_code}",
                "--cacert",
                &ca,
                "--cert",
                &cert,
                "--key",
                &key,
            ])
            .args(extra)
            .arg(format!("{url}/v1/kv/greeting"))
            .output()
            .unwrap()
    };
    let out = curl(&["-H", &format!("Authorization: Bearer {TOKEN}")]);
    let answer = text(&out.stdout);
    assert!(
        answer.ends_with("\n200") && answer.contains("hello"),
        "{answer} {}",
        text(&out.stderr)
    );
    assert!(text(&curl(&[]).stdout).ends_with("\n401"));

    // No client certificate: the handshake fails, nothing is read. Plain HTTP: the same.
    let bare = run(&[
        "kv",
        "get",
        "greeting",
        "--endpoint",
        &url,
        "--cacert",
        &ca,
        "--token",
        TOKEN,
    ]);
    assert!(!bare.status.success(), "{bare:?}");
    let plain = run(&[
        "kv",
        "get",
        "greeting",
        "--endpoint",
        &cluster.url(1),
        "--token",
        TOKEN,
    ]);
    assert!(!plain.status.success(), "{plain:?}");
    // A client that trusts another CA (here its own certificate) refuses the server.
    let wrong_ca = run(&[
        &["kv", "get", "greeting"][..],
        &[
            "--endpoint",
            &url,
            "--cacert",
            &cert,
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "--token",
            TOKEN,
        ],
    ]
    .concat());
    assert!(!wrong_ca.status.success(), "{wrong_ca:?}");
    cluster.shutdown().await;
}
