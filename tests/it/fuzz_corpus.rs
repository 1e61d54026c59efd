//! The fuzz targets on stable: every committed input of every target (its minimized
//! corpus in `fuzz/corpus/NAME/` and the inputs that once found a bug in
//! `fuzz/regressions/NAME/`) goes through the target's body in `aspen-fuzz`, so a change
//! that breaks what a fuzz run checked fails `cargo test` without nightly or cargo-fuzz.
//! The cargo-fuzz project must list exactly the targets of `aspen_fuzz::TARGETS`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use aspen_fuzz::corpus::{corpus_dir, fuzz_dir, inputs, regressions_dir};
use aspen_fuzz::TARGETS;

#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let mut failed: Vec<(PathBuf, String)> = Vec::new();
    let mut replayed = 0;
    for target in TARGETS {
        let corpus = inputs(&corpus_dir(target.name)).expect("readable corpus");
        assert!(
            !corpus.is_empty(),
            "{}: no committed corpus in {}; seed it and run scripts/fuzz.sh",
            target.name,
            corpus_dir(target.name).display()
        );
        let regressions = inputs(&regressions_dir(target.name)).expect("readable regressions");
        for path in corpus.iter().chain(&regressions) {
            let data = std::fs::read(path).expect("readable input");
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (target.body)(&data))) {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failed.push((path.clone(), message));
            }
            replayed += 1;
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {replayed} fuzz inputs broke their target: {failed:#?}",
        failed.len()
    );
}

#[test]
fn the_cargo_fuzz_project_has_exactly_the_listed_targets() {
    let project = fuzz_dir().join("targets");
    let manifest = std::fs::read_to_string(project.join("Cargo.toml")).expect("manifest");
    let manifest: toml::Table = manifest.parse().expect("valid TOML");
    let mut bins: Vec<&str> = manifest["bin"]
        .as_array()
        .expect("[[bin]] entries")
        .iter()
        .map(|bin| bin["name"].as_str().expect("a bin's name"))
        .collect();
    bins.sort_unstable();
    let mut listed: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
    listed.sort_unstable();
    assert_eq!(
        bins, listed,
        "fuzz/targets/Cargo.toml against aspen_fuzz::TARGETS"
    );
    for name in listed {
        let file = project.join("fuzz_targets").join(format!("{name}.rs"));
        let text = std::fs::read_to_string(&file).expect("a file per target");
        assert!(
            text.contains("aspen_fuzz::") && text.contains(&format!("::{name}(data)")),
            "{} must call its body aspen_fuzz::...::{name}",
            file.display()
        );
    }
}
