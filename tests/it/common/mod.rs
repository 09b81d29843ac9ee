//! Helpers the test modules share: the examples (paths, sources, compiled graphs, f64
//! teachers), running the binary from the crate root, writing weights with `r2rc init`, and
//! reading outputs back.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use r2rc::ir::Graph;
use r2rc::params::{self, DType, Params};
use r2rc::transform::{resize_input, Amount, Init, Method, Target, WidenArgs};

/// The crate root: cargo runs the tests there, and the binary is run from there too.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `examples/NAME.arch`, relative to the crate root, as a user writes it on the command line.
pub fn ex(name: &str) -> String {
    format!("examples/{name}.arch")
}

/// `examples/NAME.arch` as an absolute path.
pub fn example_path(name: &str) -> PathBuf {
    root().join(ex(name))
}

/// The source text of `examples/NAME.arch`.
pub fn example_source(name: &str) -> String {
    std::fs::read_to_string(example_path(name)).unwrap()
}

/// `examples/NAME.arch` compiled with its defaults.
pub fn example(name: &str) -> Graph {
    example_with(name, &[])
}

/// `examples/NAME.arch` compiled with `--set` overrides.
pub fn example_with(name: &str, sets: &[(&str, &str)]) -> Graph {
    let sets: Vec<(String, String)> = sets
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    r2rc::lower::compile(&example_source(name), &sets)
        .unwrap_or_else(|e| panic!("examples/{name}.arch: {e:?}"))
}

/// `examples/NAME.arch`, with ImageNet-sized nets run at 64x64 so proofs stay fast: every
/// layer remains, and the last stage keeps 2x2 pixels (train-mode BN over 2 images x 1
/// pixel would amplify rounding noise by 1/std of two nearly equal numbers).
pub fn example_small(name: &str) -> Graph {
    let g = example(name);
    if g.input_shape()[1] > 64 {
        resize_input(&g, &[3, 64, 64]).unwrap()
    } else {
        g
    }
}

/// The `.arch` files in the folder `dir` (relative to the crate root), sorted.
pub fn arch_files(dir: &str) -> Vec<PathBuf> {
    let dir = root().join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "arch"))
        .collect();
    v.sort();
    v
}

/// The names of the examples, `examples/*.arch` without the extension, sorted.
pub fn example_names() -> Vec<String> {
    arch_files("examples")
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect()
}

/// Whether G is a transformer: some value is a token sequence, or is read by a transformer
/// op (embedding, norm, attention...). Growing transformers is refused today.
pub fn is_transformer(g: &Graph) -> bool {
    g.g.node_weights().any(|n| n.op.is_sequence())
}

/// Whether running G in f64 in a test costs too much CI time (ResNeXt-101 32x8d, 16.4 G
/// multiply-accumulates a 224x224 image): its counts are checked, not its outputs.
pub fn too_heavy_to_run(g: &Graph) -> bool {
    r2rc::stats::layer_stats(g).1.macs > 10_000_000_000
}

/// The names of the convolutional examples, `examples/*.arch` less the transformers
/// (`gpt2`, `tinyllama`, `vit_b16`), sorted: the ones widening and deepening apply to
/// (ResNeXt, DenseNet and pre-activation ResNets included).
pub fn conv_example_names() -> Vec<String> {
    example_names()
        .into_iter()
        .filter(|n| !is_transformer(&example(n)))
        .collect()
}

/// A teacher with random biases and BN statistics, held in f64 for a 1e-9 proof.
pub fn teacher(g: &Graph, seed: u64) -> Params {
    params::init(g, seed, true).with_dtype(DType::F64)
}

/// One representative deepening site per convolutional example (deepening transformers is
/// refused today) for the methods that fit anywhere a block does, one whose readers are
/// convs or fc layers for NetMorph-dense, and one on a non-negative value for
/// Net2DeeperNet: (example, site, site for NetMorph-dense, site for Net2DeeperNet). Under
/// `preact` every block output is un-normalised (read by BNs, maybe negative), so the last
/// two are inside a block, after the next layer's BN-ReLU.
pub const DEEPEN_SITES: &[(&str, &str, &str, &str)] = &[
    (
        "densenet121",
        "dense1_1",
        "dense1_1.conv1",
        "dense2_1.conv1",
    ),
    (
        "preact_resnet18",
        "conv2_1",
        "conv2_1.conv1",
        "conv3_1.conv1",
    ),
    ("resnet18", "conv4_1", "conv4_2", "conv4_1"),
    ("resnet34", "conv3_2", "conv2_3", "conv3_2"),
    ("resnet50", "conv3_1", "conv2_3", "conv3_1"),
    ("resnet_cifar10", "conv2_1", "conv2_2", "conv2_1"),
    ("resnet_cifar18", "conv3_2", "conv3_4", "conv3_2"),
    ("resnext101_32x8d", "conv4_1", "conv2_3", "conv4_1"),
    ("resnext50_32x4d", "conv3_1", "conv2_3", "conv3_1"),
    ("smallconv", "conv1", "pool1", "conv1"),
];

/// `r2rc ARGS`, to be run from the crate root.
pub fn command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut c = Command::new(env!("CARGO_BIN_EXE_r2rc"));
    c.args(args).current_dir(root());
    c
}

/// Runs `r2rc ARGS` from the crate root.
pub fn r2rc(args: &[&str]) -> Output {
    command(args).output().unwrap()
}

/// Runs `r2rc ARGS`: its exit code, stdout and stderr.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = r2rc(args);
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

/// Runs `r2rc ARGS` and fails the test, with its stderr, unless it succeeds.
pub fn ok(args: &[&str]) -> Output {
    let o = r2rc(args);
    assert!(
        o.status.success(),
        "r2rc {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Writes weights for ARCH to PATH with `r2rc init ARCH -o PATH EXTRA...`, which must
/// succeed.
pub fn init_weights(arch: &str, path: &Path, extra: &[&str]) {
    let mut a = vec!["init", arch, "-o", s(path)];
    a.extend_from_slice(extra);
    ok(&a);
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The names in a folder, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A JSON file, parsed.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tensors of a weights output (a file or a sharded folder) as bytes, sorted by name.
pub fn tensors(path: &Path) -> Vec<(String, Vec<u8>)> {
    let src = r2rc::shards::Source::open(path).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = src
        .tensors
        .keys()
        .map(|k| (k.clone(), src.bytes(k).unwrap().to_vec()))
        .collect();
    v.sort();
    v
}

/// The JSON header of a safetensors file.
pub fn safetensors_header(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + n]).unwrap()
}

/// Widening TARGET by AMOUNT with METHOD, new weights matched to the old ones, no noise.
pub fn widen_args(target: Target, amount: Amount, method: Method) -> WidenArgs {
    WidenArgs {
        target,
        amount,
        method,
        init: Init::Match,
        noise: None,
    }
}

/// Fails unless a rewrite's report.json has the fields CLI.md gives it.
pub fn assert_report_fields(report: &serde_json::Value) {
    for f in [
        "method",
        "site",
        "name_map",
        "params_before",
        "params_after",
        "macs_before",
        "macs_after",
        "evidence",
    ] {
        assert!(report.get(f).is_some(), "report.json lacks {f}");
    }
}
