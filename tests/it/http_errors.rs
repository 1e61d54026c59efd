//! Bad input gets a clear JSON error, changes nothing, and the node keeps serving; every
//! limit is accepted at its boundary and refused one past it.

use crate::support;

use std::time::Duration;

use aspen_api::limits::{
    MAX_INLINE_VALUE_BYTES, MAX_KEYS_PER_COMMAND, MAX_KEY_BYTES, MAX_SCAN_LIMIT,
};
use serde_json::{json, Value};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn send(&self, method: reqwest::Method, path: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> (u16, Value) {
        self.send(reqwest::Method::PUT, &format!("/v1/kv/{key}"), value)
            .await
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body.as_bytes().to_vec())
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, vec![]).await
    }

    /// Every key in the store, as the full scan sees them.
    async fn key_count(&self) -> usize {
        let (status, body) = self.get("/v1/kv/?prefix=true&limit=10000").await;
        assert_eq!(status, 200, "{body}");
        body["kvs"].as_array().unwrap().len()
    }
}

fn assert_error(result: &(u16, Value), status: u16, code: &str, mentions: &str) {
    let (got, body) = result;
    assert_eq!(*got, status, "body: {body}");
    assert_eq!(body["error"]["code"], code, "body: {body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(mentions),
        "message {message:?} should mention {mentions:?}"
    );
}

async fn api() -> (support::TestCluster, Api) {
    let t = support::start_cluster().await;
    let api = Api {
        base: t.cluster.url(2),
        http: aspen_api::client::http_client(Duration::from_secs(15)),
    };
    (t, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_are_limited_to_1_to_1024_bytes() {
    let (t, api) = api().await;
    assert_eq!(
        api.put(&"k".repeat(MAX_KEY_BYTES), b"v".to_vec()).await.0,
        200
    );
    assert_error(
        &api.put(&"k".repeat(MAX_KEY_BYTES + 1), b"v".to_vec()).await,
        400,
        "bad_request",
        "1025 bytes",
    );
    assert_error(
        &api.put("", b"v".to_vec()).await,
        400,
        "bad_request",
        "empty",
    );
    assert_eq!(api.key_count().await, 1);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_value_over_the_inline_limit_is_kept_as_a_blob_not_refused() {
    let (t, api) = api().await;
    assert_eq!(
        api.put("big", vec![b'x'; MAX_INLINE_VALUE_BYTES]).await.0,
        200
    );
    assert_eq!(
        api.put("bigger", vec![b'x'; MAX_INLINE_VALUE_BYTES + 1])
            .await
            .0,
        200
    );
    assert_eq!(api.key_count().await, 2);
    assert_eq!(api.get("/healthz").await.0, 200);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_may_name_at_most_100_keys() {
    let (t, api) = api().await;
    let writes = |n: usize| {
        (0..n)
            .map(|i| json!({"key": format!("b/{i}"), "value": "v"}))
            .collect::<Vec<_>>()
    };
    let ok = json!({"writes": writes(MAX_KEYS_PER_COMMAND)}).to_string();
    assert_eq!(api.post("/v1/batch", &ok).await.0, 200);
    let too_many = json!({"writes": writes(MAX_KEYS_PER_COMMAND + 1)}).to_string();
    assert_error(
        &api.post("/v1/batch", &too_many).await,
        400,
        "bad_request",
        "101 keys",
    );
    let txn = json!({"preconditions": [{"key": "p", "not_exists": true}], "writes": writes(MAX_KEYS_PER_COMMAND)});
    assert_error(
        &api.post("/v1/txn", &txn.to_string()).await,
        400,
        "bad_request",
        "101 keys",
    );
    assert_eq!(api.key_count().await, MAX_KEYS_PER_COMMAND);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_bodies_are_refused_naming_the_problem_and_change_nothing() {
    let (t, api) = api().await;
    assert_error(
        &api.post("/v1/batch", "{not json").await,
        400,
        "bad_request",
        "malformed JSON",
    );
    assert_error(
        &api.post(
            "/v1/cas",
            r#"{"key":"a","expected":null,"new_value":"x","colour":1}"#,
        )
        .await,
        400,
        "bad_request",
        "colour",
    );
    assert_error(
        &api.post(
            "/v1/batch",
            r#"{"writes":[{"key":"a","value_base64":"@@@"}]}"#,
        )
        .await,
        400,
        "bad_request",
        "base64",
    );
    assert_error(
        &api.post(
            "/v1/batch",
            r#"{"writes":[{"key":"a","value":"x","value_base64":"eA=="}]}"#,
        )
        .await,
        400,
        "bad_request",
        "not both",
    );
    assert_error(
        &api.post("/v1/cas", r#"{"key":"a","new_value":"x"}"#).await,
        400,
        "bad_request",
        "expected",
    );
    assert_error(
        &api.post("/v1/txn", r#"{"preconditions":[{"key":"a"}]}"#)
            .await,
        400,
        "bad_request",
        "exactly one",
    );
    assert_error(
        &api.post(
            "/v1/batch",
            r#"{"writes":[{"key":"a","value":"1"},{"key":"a","value":"2"}]}"#,
        )
        .await,
        400,
        "bad_request",
        "more than once",
    );
    assert_error(
        &api.get("/v1/kv/a?colour=red").await,
        400,
        "bad_request",
        "colour",
    );
    assert_error(
        &api.get("/v1/kv/a?consistency=eventual").await,
        400,
        "bad_request",
        "consistency",
    );
    assert_error(&api.get("/v1/nope").await, 404, "not_found", "/v1/nope");
    assert_eq!(api.key_count().await, 0);
    assert_eq!(api.put("still-serving", b"yes".to_vec()).await.0, 200);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scan_limit_is_1_to_10000() {
    let (t, api) = api().await;
    assert_eq!(
        api.get(&format!("/v1/kv/x?prefix=true&limit={MAX_SCAN_LIMIT}"))
            .await
            .0,
        200
    );
    assert_error(
        &api.get(&format!(
            "/v1/kv/x?prefix=true&limit={}",
            MAX_SCAN_LIMIT + 1
        ))
        .await,
        400,
        "bad_request",
        "10001",
    );
    assert_error(
        &api.get("/v1/kv/x?prefix=true&limit=0").await,
        400,
        "bad_request",
        "limit",
    );
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cas_mismatch_is_409_with_the_actual_state_and_changes_nothing() {
    let (t, api) = api().await;
    api.put("c", b"1".to_vec()).await;
    let (status, body) = api
        .post("/v1/cas", r#"{"key":"c","expected":"0","new_value":"2"}"#)
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "precondition_failed");
    assert_eq!(body["actual"]["value"], "1");
    let (status, body) = api
        .post("/v1/cas", r#"{"key":"c","expected":null,"new_value":"2"}"#)
        .await;
    assert_eq!(status, 409, "{body}");
    let (_, entry) = api.get("/v1/kv/c").await;
    assert_eq!(entry["value"], "1");
    assert_eq!(entry["version"], 1);
    t.cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_path_that_is_not_utf8_gets_a_json_error_and_changes_nothing() {
    let (t, api) = api().await;
    assert_error(
        &api.put("%FF", b"v".to_vec()).await,
        400,
        "bad_request",
        "UTF-8",
    );
    assert_error(&api.get("/v1/kv/%FF").await, 400, "bad_request", "UTF-8");
    assert_error(
        &api.send(reqwest::Method::DELETE, "/v1/kv/%FF", vec![])
            .await,
        400,
        "bad_request",
        "UTF-8",
    );
    assert_eq!(api.key_count().await, 0);
    t.cluster.shutdown().await;
}
