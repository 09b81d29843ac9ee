//! The front-end commands as users run them: exit codes, stdout, rendered diagnostics.

use crate::common::run;

#[test]
fn check_prints_totals() {
    let (code, out, _) = run(&["check", "examples/resnet18.arch"]);
    assert_eq!(code, 0);
    assert!(out.contains("trainable parameters: 11,689,512"), "{out}");
    assert!(out.contains("conv2_1.conv1"), "{out}");
}

#[test]
fn check_json_has_layers_and_totals() {
    let (code, out, _) = run(&[
        "check",
        "examples/resnet_cifar18.arch",
        "--set",
        "r=3/16",
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["layers"][1]["name"], "conv1");
    assert_eq!(v["layers"][1]["shape"], serde_json::json!([12, 16, 16]));
    assert!(v["totals"]["params"].as_u64().unwrap() > 23_794);
}

#[test]
fn print_is_canonical() {
    let (code, out, _) = run(&["print", "examples/resnet_cifar18.arch", "--set", "r=1/4"]);
    assert_eq!(code, 0);
    assert!(out.contains("[3x3, 16; 3x3, 16] x 4"), "{out}");
    assert!(out.contains("[3x3, 32, stride 2; 3x3, 32] x 4"), "{out}");
}

#[test]
fn graph_dot_lists_edges() {
    let (code, out, _) = run(&["graph", "examples/smallconv.arch", "--format", "dot"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("digraph \"SmallConv\""), "{out}");
    assert!(out.contains("fc2\\n10-d fc\\n10"), "{out}");
    assert!(out.contains(" -> "), "{out}");
}

#[test]
fn bad_file_gives_located_diagnostic_and_exit_2() {
    let (code, out, err) = run(&["check", "tests/fixtures/errors/size_column_lie.arch"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    assert!(
        err.contains("tests/fixtures/errors/size_column_lie.arch:3:8"),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_set_is_refused() {
    let (code, _, err) = run(&["check", "examples/resnet_cifar18.arch", "--set", "q=1"]);
    assert_eq!(code, 2);
    assert!(err.contains("no parameter `q`"), "{err}");
    let (code, _, err) = run(&["check", "examples/resnet_cifar18.arch", "--set", "r"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected NAME=EXPR"), "{err}");
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = run(&["check", "no/such/file.arch"]);
    assert_eq!(code, 2);
    assert!(err.contains("no/such/file.arch"), "{err}");
}

/// Names a user mistypes get the nearest valid spelling: a swap of neighbours is one edit,
/// so `conv_3x` is `conv3_x`, not `conv2_x`.
#[test]
fn mistyped_targets_suggest_the_nearest_name() {
    for args in [
        vec![
            "widen",
            "examples/resnet_cifar18.arch",
            "--layer",
            "conv_3x",
            "--by",
            "2",
        ],
        vec![
            "deepen",
            "examples/resnet_cifar18.arch",
            "--after",
            "conv_3x",
        ],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 2, "{args:?}");
        assert!(err.contains("did you mean `conv3_x`?"), "{args:?}: {err}");
    }
}

/// Refusals name a channel space by its first member, never by its internal number.
#[test]
fn refusals_name_spaces_not_ids() {
    let (code, _, err) = run(&[
        "widen",
        "examples/resnet_cifar10.arch",
        "--layer",
        "head.fc",
        "--by",
        "2",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("space `head.fc` (10 channels, rows head)"),
        "{err}"
    );
    assert!(
        !err.split(|c: char| !c.is_alphanumeric())
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w[0] == "space" && w[1].parse::<usize>().is_ok()),
        "{err}"
    );
    let (code, out, _) = run(&["spaces", "examples/resnet_cifar10.arch"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("space `input` (3 channels, rows input)"),
        "{out}"
    );
}

/// The syntax mistakes of a first file, on the command line: each names the fix.
#[test]
fn option_mistakes_name_the_fix() {
    for (fixture, says) in [
        ("option_with_equals", "did you mean `groups 32`?"),
        ("option_misspelt", "did you mean `stride S`?"),
        (
            "option_without_comma",
            "missing `,` before the option `stride`",
        ),
        ("unknown_activation", "activations: `relu`, `prelu`"),
    ] {
        let path = format!("tests/fixtures/errors/{fixture}.arch");
        let (code, _, err) = run(&["check", &path]);
        assert_eq!(code, 2, "{fixture}");
        assert!(err.contains(says), "{fixture}: {err}");
        assert!(!err.contains("the end of the file"), "{fixture}: {err}");
    }
}
