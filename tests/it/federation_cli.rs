//! `aspen federation keygen` and `info` as an operator runs them: the secret file, the ids
//! printed, and an import block that pastes into another region's config as it is.

use std::path::Path;

use aspen_config::ImportConfig;

use crate::support::process::run_aspen as aspen;

/// The value of `name = "..."` in `aspen federation keygen`'s output.
fn printed(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} = \"")))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no {name} in {out}"))
        .to_string()
}

/// The two snippets `aspen federation info` prints: the `[[federation.import]]` block
/// (parsed as other regions' configs parse it) and the `readers` entry.
fn info_snippets(out: &str) -> (ImportConfig, String) {
    let block: String = out
        .lines()
        .skip_while(|l| *l != "[[federation.import]]")
        .take_while(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    let parsed: toml::Table = toml::from_str(&block).expect("the import block is TOML");
    let import = parsed["federation"]["import"][0]
        .clone()
        .try_into()
        .unwrap();
    let readers_line = out
        .lines()
        .find(|l| l.starts_with("readers = "))
        .expect("a readers line");
    let readers: toml::Table = toml::from_str(readers_line).unwrap();
    (import, readers["readers"][0].as_str().unwrap().to_string())
}

/// A node config of cluster us-1, node 1, bound at `bind`, with one peer.
fn write_config(dir: &Path, bind: &str, secret: &Path) -> String {
    let config = dir.join(format!(
        "node-{}.toml",
        bind.replace([':', '.', '[', ']'], "_")
    ));
    std::fs::write(
        &config,
        format!(
            r#"node_id = 1
cluster = "us-1"
data_dir = "{data}"
http_addr = "127.0.0.1:7001"
iroh_bind_addr = "{bind}"
relay = "disabled"

[[peers]]
node_id = 2
endpoint_id = "{peer}"
addrs = ["10.0.0.2:7401"]

[federation]
region = "us"
secret_file = "{secret}"
"#,
            data = dir.join("data").display(),
            peer = "ab".repeat(32),
            secret = secret.display(),
        ),
    )
    .unwrap();
    config.display().to_string()
}

#[test]
fn keygen_writes_a_secret_once_and_info_prints_an_import_block_that_parses() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("us-1.federation.key");
    let secret_arg = secret.to_str().unwrap();
    let (ok, out, err) = aspen(&["federation", "keygen", "--out", secret_arg]);
    assert!(ok, "{err}");
    let (namespace, author) = (printed(&out, "namespace"), printed(&out, "author"));
    let written = std::fs::read(&secret).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }
    // A second keygen would make another document: refused, the file kept.
    let (ok, _, err) = aspen(&["federation", "keygen", "--out", secret_arg]);
    assert!(!ok);
    assert!(err.contains(secret_arg), "{err}");
    assert_eq!(std::fs::read(&secret).unwrap(), written);

    let config = write_config(dir.path(), "10.0.0.1:7401", &secret);
    let (ok, out, err) = aspen(&["federation", "info", "--config", &config]);
    assert!(ok, "{err}");
    let (import, reader) = info_snippets(&out);
    assert_eq!(import.cluster, "us-1");
    assert_eq!(import.region, "us");
    assert_eq!((import.namespace, import.author), (namespace, author));
    let addrs: Vec<String> = import
        .nodes
        .iter()
        .map(|n| n.addrs[0].to_string())
        .collect();
    assert_eq!(addrs, ["10.0.0.1:7401", "10.0.0.2:7401"]);
    // This node's endpoint id is its identity, created by `info`, and the readers line.
    let own = &import.nodes[0].endpoint_id;
    assert_eq!(&reader, own);
    let (_, again, _) = aspen(&["federation", "info", "--config", &config]);
    assert_eq!(again, out, "the identity is kept, not made again");
}

#[test]
fn info_of_a_node_bound_to_every_interface_needs_the_address_others_dial() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("us-1.federation.key");
    let (ok, _, err) = aspen(&["federation", "keygen", "--out", secret.to_str().unwrap()]);
    assert!(ok, "{err}");
    for bind in ["0.0.0.0:7401", "[::]:7401", "10.0.0.1:0"] {
        let config = write_config(dir.path(), bind, &secret);
        let (ok, out, err) = aspen(&["federation", "info", "--config", &config]);
        assert!(!ok, "{bind}: {out}");
        assert!(
            err.contains("iroh_bind_addr") && err.contains("--addr"),
            "{bind}: {err}"
        );
    }
    let config = write_config(dir.path(), "0.0.0.0:7401", &secret);
    let (ok, _, err) = aspen(&[
        "federation",
        "info",
        "--config",
        &config,
        "--addr",
        "0.0.0.0:7401",
    ]);
    assert!(!ok);
    assert!(err.contains("--addr 0.0.0.0:7401"), "{err}");
    let (ok, out, err) = aspen(&[
        "federation",
        "info",
        "--config",
        &config,
        "--addr",
        "203.0.113.7:7401",
        "--addr",
        "[2001:db8::7]:7401",
    ]);
    assert!(ok, "{err}");
    let (import, _) = info_snippets(&out);
    let own: Vec<String> = import.nodes[0]
        .addrs
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(own, ["203.0.113.7:7401", "[2001:db8::7]:7401"]);
}
