//! Pictures: `r2rc graph --format dot` clusters and shapes, `r2rc diff --format dot` marks
//! of widened and deepened students, `--focus`, and `--format svg` through Graphviz (only
//! where `dot` is installed; its absence is tested by emptying PATH).

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, command, r2rc};

/// Runs r2rc, which must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    String::from_utf8(common::ok(args).stdout).unwrap()
}

/// Runs r2rc with PATH set to `path` only.
fn r2rc_on_path(args: &[&str], path: &Path) -> Output {
    command(args).env("PATH", path).output().unwrap()
}

/// The attribute list of the node called `name`.
fn node<'a>(dot: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\" [");
    dot.lines()
        .find(|l| l.trim_start().starts_with(&key))
        .unwrap_or_else(|| panic!("no node {name} in\n{dot}"))
}

fn has_dot() -> bool {
    Command::new("dot").arg("-V").output().is_ok()
}

#[test]
fn graph_dot_clusters_rows_and_blocks_with_shapes() {
    let dot = ok(&["graph", "examples/resnet_cifar10.arch"]);
    assert!(dot.starts_with("digraph \"ResNetCifar10\" {"));
    for label in ["conv1", "conv2_x", "conv2_1", "conv2_2", "conv3_1", "head"] {
        assert!(
            dot.contains(&format!("label=\"{label}\";")),
            "no cluster {label}"
        );
    }
    assert_eq!(dot.matches("subgraph cluster_").count(), 4 + 4);
    assert!(node(&dot, "conv1").contains("conv 7x7, 8, stride 2\\n8x16x16"));
    assert!(node(&dot, "conv3_1.downsample.0").contains("conv 1x1, 16, stride 2\\n16x4x4"));
    assert!(node(&dot, "head.fc").contains("10-d fc\\n10"));
    // Shortcuts are dashed edges into port 1 of the add.
    assert!(dot.contains("\"conv2_x.pool\" -> \"conv2_1.add\" [style=dashed"));
    assert!(dot.contains("\"conv2_1.bn2\" -> \"conv2_1.add\";"));
    // Every node of the graph is drawn once, every edge once.
    let json: serde_json::Value = serde_json::from_str(&ok(&[
        "graph",
        "examples/resnet_cifar10.arch",
        "--format",
        "json",
    ]))
    .unwrap();
    let nodes = json["nodes"].as_array().unwrap();
    for n in nodes {
        let name = n["name"].as_str().unwrap();
        assert_eq!(dot.matches(&format!("  \"{name}\" [")).count(), 1, "{name}");
    }
    assert_eq!(dot.matches(" -> ").count(), nodes.len() - 1 + 4);
    assert!(!dot.contains("fillcolor=\"#b6e3a8\""), "nothing is new");
}

#[test]
fn graph_dot_of_every_example_is_balanced() {
    let names = common::example_names();
    assert!(names.len() >= 9, "{names:?}");
    for ex in names {
        let dot = ok(&["graph", &format!("examples/{ex}.arch")]);
        assert_eq!(dot.matches('{').count(), dot.matches('}').count(), "{ex}");
        assert!(dot.trim_end().ends_with('}'), "{ex}");
    }
}

#[test]
fn focus_draws_one_block_with_its_neighbours_as_context() {
    let dot = ok(&[
        "graph",
        "examples/resnet_cifar10.arch",
        "--focus",
        "conv2_1",
    ]);
    assert!(node(&dot, "conv2_1.conv1").contains("fillcolor"));
    assert!(node(&dot, "conv2_x.pool").contains("dashed"));
    assert!(node(&dot, "conv2_2.conv1").contains("dashed"));
    assert!(!dot.contains("\"conv3_1.conv1\""));
    assert!(!dot.contains("\"conv1\" ->"));
    let o = r2rc(&[
        "graph",
        "examples/resnet_cifar10.arch",
        "--focus",
        "conv9_9",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--focus conv9_9: no row, block or layer"),
        "{err}"
    );
    assert!(err.contains("conv2_1"), "{err}");
}

#[test]
fn diff_dot_marks_widened_layers_with_old_and_new_widths() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w");
    ok(&[
        "widen",
        "examples/resnet_cifar10.arch",
        "--layer",
        "conv2_1",
        "--by",
        "2",
        "-o",
        out.to_str().unwrap(),
    ]);
    let b = out.join("resnet_cifar10.arch");
    let dot = ok(&[
        "diff",
        "examples/resnet_cifar10.arch",
        b.to_str().unwrap(),
        "--format",
        "dot",
    ]);
    let orange = "fillcolor=\"#ffcc80\"";
    let c1 = node(&dot, "conv2_1.conv1");
    assert!(c1.contains("conv 3x3, 16\\n16x8x8\\nout 8 -> 16") && c1.contains(orange));
    assert!(node(&dot, "conv2_1.bn1").contains("channels 8 -> 16"));
    assert!(node(&dot, "conv2_1.act1").contains(orange));
    let c2 = node(&dot, "conv2_1.conv2");
    assert!(c2.contains("in 8 -> 16") && c2.contains(orange) && !c2.contains("out "));
    for same in ["conv2_1.bn2", "conv2_1.add", "conv2_2.conv1", "conv1"] {
        assert!(
            !node(&dot, same).contains("penwidth"),
            "{same} is unchanged"
        );
    }
    assert!(dot.contains("0 new (green), 4 widened (orange), 0 changed (yellow)"));
    // The text diff is still the default.
    let text = ok(&["diff", "examples/resnet_cifar10.arch", b.to_str().unwrap()]);
    assert!(text.starts_with("--- examples/resnet_cifar10.arch"));
}

#[test]
fn diff_dot_marks_the_inserted_block_using_the_reports_renames() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("d");
    ok(&[
        "deepen",
        "examples/resnet_cifar10.arch",
        "--after",
        "conv2_1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let b = out.join("resnet_cifar10.arch");
    let b = b.to_str().unwrap();
    let green = "fillcolor=\"#b6e3a8\"";
    // report.json next to B says conv2_2 was renamed conv2_3: the new block is conv2_2.
    let dot = ok(&["diff", "examples/resnet_cifar10.arch", b, "--format", "dot"]);
    assert!(node(&dot, "conv2_2.conv1").contains(green));
    assert!(node(&dot, "conv2_2.add").contains("doublecircle"));
    assert!(!node(&dot, "conv2_3.conv1").contains(green));
    assert!(dot.contains("7 new (green), 0 widened (orange)"));
    // Without the report, names alone make the last block look new.
    std::fs::remove_file(out.join("report.json")).unwrap();
    let dot = ok(&["diff", "examples/resnet_cifar10.arch", b, "--format", "dot"]);
    assert!(node(&dot, "conv2_3.conv1").contains(green));
    assert!(!node(&dot, "conv2_2.conv1").contains(green));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"name_map\": [1]}").unwrap();
    let o = r2rc(&[
        "diff",
        "examples/resnet_cifar10.arch",
        b,
        "--format",
        "dot",
        "--report",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("`name_map` is not an object"));
}

#[test]
fn diff_of_identical_files_marks_nothing() {
    let dot = ok(&[
        "diff",
        "examples/smallconv.arch",
        "examples/smallconv.arch",
        "--format",
        "dot",
    ]);
    assert!(dot.contains("0 new (green), 0 widened (orange), 0 changed (yellow)"));
    assert!(!dot.contains("penwidth"));
}

#[test]
fn svg_is_rendered_by_graphviz_when_it_is_installed() {
    if !has_dot() {
        eprintln!("skipped: Graphviz's dot is not installed");
        return;
    }
    let svg = ok(&["graph", "examples/smallconv.arch", "--format", "svg"]);
    assert!(svg.contains("<svg") && svg.contains("</svg>"));
    assert!(svg.contains("fc1"));
    let svg = ok(&[
        "diff",
        "examples/smallconv.arch",
        "examples/smallconv.arch",
        "--format",
        "svg",
    ]);
    assert!(svg.contains("<svg"));
}

#[test]
fn svg_without_graphviz_says_so_and_exits_2() {
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec!["graph", "examples/smallconv.arch", "--format", "svg"],
        vec![
            "diff",
            "examples/smallconv.arch",
            "examples/smallconv.arch",
            "--format",
            "svg",
        ],
    ] {
        let o = r2rc_on_path(&args, empty.path());
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(
                "--format svg needs Graphviz's `dot` program, which was not found on PATH"
            ),
            "{err}"
        );
        assert!(err.contains("apt-get install graphviz"), "{err}");
    }
    // The dot text itself needs no Graphviz.
    let o = r2rc_on_path(
        &["graph", "examples/smallconv.arch", "--format", "dot"],
        empty.path(),
    );
    assert!(o.status.success());
}

#[test]
fn unknown_diff_format_is_a_usage_error() {
    let o = r2rc(&[
        "diff",
        "examples/smallconv.arch",
        "examples/smallconv.arch",
        "--format",
        "gif",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("use text, dot, svg or png"));
}

/// png is binary: without `-o FILE` it is refused before anything runs (no Graphviz
/// needed to say so), with a hint naming `-o FILE`.
#[test]
fn png_needs_an_output_file() {
    let empty = tempfile::tempdir().unwrap();
    for args in [
        vec!["graph", "examples/smallconv.arch", "--format", "png"],
        vec![
            "diff",
            "examples/resnet_cifar10.arch",
            "examples/resnet_cifar18.arch",
            "--format",
            "png",
        ],
    ] {
        for path in [None, Some(empty.path())] {
            let o = match path {
                None => r2rc(&args),
                Some(p) => r2rc_on_path(&args, p),
            };
            assert_eq!(o.status.code(), Some(2), "{args:?}");
            assert!(o.stdout.is_empty(), "{args:?} wrote to stdout");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("--format png is binary image data")
                    && err.contains("write it to a file with `-o FILE`"),
                "{err}"
            );
        }
    }
}

/// `-o FILE` takes every format of graph and diff; an existing FILE needs --force and an
/// input is never overwritten.
#[test]
fn graph_and_diff_write_to_an_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let dot = out("g.dot");
    let o = r2rc(&["graph", "examples/smallconv.arch", "-o", &dot]);
    assert!(o.status.success() && o.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&dot).unwrap(),
        ok(&["graph", "examples/smallconv.arch"])
    );
    let json = out("g.json");
    ok(&[
        "graph",
        "examples/smallconv.arch",
        "--format",
        "json",
        "--output",
        &json,
    ]);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["nodes"].is_array());
    let (a, b) = (
        "examples/resnet_cifar10.arch",
        "examples/resnet_cifar18.arch",
    );
    let text = out("d.txt");
    ok(&["diff", a, b, "-o", &text]);
    assert_eq!(std::fs::read_to_string(&text).unwrap(), ok(&["diff", a, b]));
    let ddot = out("d.dot");
    ok(&["diff", a, b, "--format", "dot", "-o", &ddot]);
    assert!(std::fs::read_to_string(&ddot)
        .unwrap()
        .starts_with("digraph"));

    // An existing file: refused without --force, replaced with it.
    let o = r2rc(&["graph", "examples/resnet_cifar10.arch", "-o", &dot]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("pass --force"));
    ok(&[
        "graph",
        "examples/resnet_cifar10.arch",
        "-o",
        &dot,
        "--force",
    ]);
    assert!(std::fs::read_to_string(&dot)
        .unwrap()
        .contains("ResNetCifar10"));
    // Never an input, even with --force.
    let copy = out("net.arch");
    std::fs::copy("examples/smallconv.arch", &copy).unwrap();
    for args in [
        vec!["graph", copy.as_str(), "-o", copy.as_str(), "--force"],
        vec!["diff", a, copy.as_str(), "-o", copy.as_str(), "--force"],
    ] {
        let o = r2rc(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("is also an input"));
    }
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read("examples/smallconv.arch").unwrap()
    );

    // png through Graphviz, where it is installed.
    if has_dot() {
        let png = out("g.png");
        ok(&[
            "graph",
            "examples/smallconv.arch",
            "--format",
            "png",
            "-o",
            &png,
        ]);
        let dpng = out("d.png");
        ok(&["diff", a, b, "--format", "png", "-o", &dpng]);
        for p in [png, dpng] {
            assert!(
                std::fs::read(&p).unwrap().starts_with(b"\x89PNG\r\n\x1a\n"),
                "{p}"
            );
        }
    }
}

/// The help a user reads first: export's summary names --torch, graph and diff offer -o.
#[test]
fn help_lists_torch_export_and_output_files() {
    let top = ok(&["--help"]);
    let export = top
        .lines()
        .find(|l| l.trim_start().starts_with("export"))
        .unwrap_or_else(|| panic!("no export line in\n{top}"));
    assert!(
        export.contains("--onnx") && export.contains("--json") && export.contains("--torch"),
        "{export}"
    );
    for cmd in ["graph", "diff"] {
        let help = ok(&[cmd, "--help"]);
        assert!(help.contains("-o, --output <FILE>"), "{cmd}:\n{help}");
        assert!(help.contains("--force"), "{cmd}:\n{help}");
        assert!(help.contains("png"), "{cmd}:\n{help}");
    }
}
