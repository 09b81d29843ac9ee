//! `widen --method net2net --noise SIGMA` breaks the replicas' symmetry exactly
//! (HyperCloning-style): the consumer columns of a channel's copies get zero-sum noise, so
//! the replicas' outgoing weights differ, their sum is the noiseless column, and the
//! student proves like any other (f64, <= 1e-9) on a ResNet, across a flatten, on the tiny
//! Llama's MLPs and its normalised stream; `--noise-approx` keeps the Net2Net paper's
//! independent noise, measured and not proved.

use ndarray::{ArrayD, Axis, Ix3};
use r2rc::ir::Graph;
use r2rc::lower::compile;
use r2rc::params::{self, DType, Params};
use r2rc::patch::Step;
use r2rc::pipeline::{run as run_step, Proof, Stepped};
use r2rc::prove::ProveOptions;
use r2rc::transform::{std_of, Amount, Exactness, Method, Noise, Target};

use crate::common::{ex, example, init_weights, json, r2rc, s, tensors, text, widen_args};
use crate::transformer_widen::LLAMA;

const SIGMA: f64 = 0.1;

/// Random f64 weights with random biases, norm scales and statistics.
fn teacher(g: &Graph) -> Params {
    params::init(g, 7, true).with_dtype(DType::F64)
}

/// Net2Net widening of `target` by `amount` with `noise`, proved whole in f64.
fn grow(
    g: &Graph,
    p: &Params,
    (target, amount): (&Target, Amount),
    noise: Option<Noise>,
    seed: u64,
) -> Stepped {
    let mut a = widen_args(target.clone(), amount, Method::Net2net);
    a.noise = noise;
    let opts = ProveOptions::default();
    run_step(g, p, &Step::Widen(a), seed, Proof::Full(&opts), "t")
        .unwrap_or_else(|e| panic!("{} {amount:?} {noise:?}: {e}", target.show()))
}

/// Asserts `s` is exact and proved within 1e-9 in eval and train mode, and says which
/// noise it used.
fn assert_proved_exact(what: &str, s: &Stepped) -> f64 {
    let r = &s.report;
    assert_eq!(r.exactness, Exactness::Exact, "{what}");
    assert!(r.proved, "{what}");
    assert_eq!(r.evidence.len(), 2, "{what}: eval and train");
    let worst = r.evidence.iter().map(|e| e.max_rel_err).fold(0.0, f64::max);
    assert!(
        r.evidence.iter().all(|e| e.passed) && worst <= 1e-9,
        "{what}: {worst}"
    );
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("cancelling noise") && n.contains("the student is exact")),
        "{what}: {:?}",
        r.notes
    );
    worst
}

/// `t` as `[rows, channels, values per channel]` (a channel owns `cols` columns and their
/// kernel positions).
fn by_channel(t: &ArrayD<f64>, cols: usize) -> ndarray::Array3<f64> {
    let (o, ch) = (t.shape()[0], t.shape()[1] / cols);
    let block = t.len() / (o * ch);
    t.as_standard_layout()
        .into_owned()
        .into_shape_with_order((o, ch, block))
        .unwrap()
        .into_dimensionality::<Ix3>()
        .unwrap()
}

/// Consumer weight `name` of the noisy student against the noiseless one (same seed, so
/// the same replica map; `c` channels before, `cols` columns each): each new channel's
/// columns equal an old channel's in the noiseless student, which names the copies. In
/// the noisy one the copies' columns differ pairwise, sum to the noiseless sum, and the
/// columns of channels without copies are untouched. Returns the number of duplicated
/// channels and the noise's standard deviation in units of `SIGMA * std(teacher)`.
fn check_columns(
    plain: &Params,
    noisy: &Params,
    t: &Params,
    name: &str,
    c: usize,
    cols: usize,
) -> (usize, f64) {
    let (w, n) = (
        by_channel(&plain.tensors[name], cols),
        by_channel(&noisy.tensors[name], cols),
    );
    assert_eq!(w.shape(), n.shape(), "{name}");
    let total = w.shape()[1];
    assert!(total > c, "{name}: grew");
    let col = |a: &ndarray::Array3<f64>, ch: usize| a.index_axis(Axis(1), ch).to_owned();
    let mut sets: Vec<Vec<usize>> = (0..c).map(|i| vec![i]).collect();
    for j in c..total {
        let g = (0..c)
            .find(|&g| col(&w, g) == col(&w, j))
            .unwrap_or_else(|| panic!("{name}: new channel {j} copies no old channel"));
        sets[g].push(j);
    }
    let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let (mut dup, mut sq, mut count) = (0, 0.0, 0usize);
    for set in &sets {
        if set.len() == 1 {
            assert_eq!(col(&n, set[0]), col(&w, set[0]), "{name}: channel {set:?}");
            continue;
        }
        dup += 1;
        for (i, &a) in set.iter().enumerate() {
            for &b in &set[i + 1..] {
                let same = col(&n, a)
                    .iter()
                    .zip(col(&n, b).iter())
                    .filter(|(x, y)| x == y)
                    .count();
                assert_eq!(same, 0, "{name}: copies {a} and {b} share {same} weights");
            }
            let d = &col(&n, a) - &col(&w, a);
            sq += d.iter().map(|x| x * x).sum::<f64>();
            count += d.len();
        }
        let sum = |a: &ndarray::Array3<f64>| {
            set.iter()
                .map(|&ch| col(a, ch))
                .reduce(|x, y| x + y)
                .unwrap()
        };
        let diff = (&sum(&n) - &sum(&w))
            .iter()
            .fold(0.0f64, |m, x| m.max(x.abs()));
        assert!(
            diff <= 1e-13 * scale,
            "{name}: copies of {set:?} sum off by {diff}"
        );
    }
    let std = (sq / count.max(1) as f64).sqrt();
    (dup, std / (SIGMA * std_of(&t.tensors[name])))
}

/// A ResNet: every space at once (convs whose rows and columns both widen, projection
/// shortcuts, the fc head) and one stage doubled; a flatten's blocks of columns.
#[test]
fn resnet_students_with_cancelling_noise_prove_exact() {
    let g = example("resnet_cifar10");
    let p = teacher(&g);
    for (target, amount) in [
        (Target::All, Amount::By(1.5)),
        (Target::Name("conv3_x".into()), Amount::By(2.0)),
    ] {
        let what = format!("resnet_cifar10 {} {amount:?}", target.show());
        let plain = grow(&g, &p, (&target, amount), None, 5);
        let noisy = grow(&g, &p, (&target, amount), Some(Noise::Cancelling(SIGMA)), 5);
        let worst = assert_proved_exact(&what, &noisy);
        assert_eq!(plain.graph, noisy.graph, "{what}");
        let mut checked = 0;
        for (name, t) in &p.tensors {
            let s = &plain.params.tensors[name];
            if t.ndim() < 2 || s.shape()[1] == t.shape()[1] {
                // Not a consumer: producers' rows and channel-wise entries carry no noise.
                assert_eq!(s, &noisy.params.tensors[name], "{what}: {name}");
                continue;
            }
            let (dup, ratio) =
                check_columns(&plain.params, &noisy.params, &p, name, t.shape()[1], 1);
            assert!(dup > 0, "{what}: {name}");
            assert!((0.6..1.4).contains(&ratio), "{what}: {name}: noise {ratio}");
            checked += 1;
        }
        assert!(checked >= 2, "{what}: {checked} consumers");
        eprintln!("{what}: {checked} consumers noised, worst proof {worst:.2e}");
    }

    // SmallConv's fc1 reads conv1's channels through a flatten: 256 columns a channel, each
    // with its own cancelling set.
    let g = example("smallconv");
    let p = teacher(&g);
    let target = Target::Name("conv1".into());
    let plain = grow(&g, &p, (&target, Amount::Add(5)), None, 3);
    let noisy = grow(
        &g,
        &p,
        (&target, Amount::Add(5)),
        Some(Noise::Cancelling(SIGMA)),
        3,
    );
    assert_proved_exact("smallconv conv1 +5", &noisy);
    let (dup, ratio) = check_columns(&plain.params, &noisy.params, &p, "fc1.weight", 16, 256);
    assert!(
        (1..=5).contains(&dup) && (0.8..1.2).contains(&ratio),
        "{dup} {ratio}"
    );
}

/// A consumer weight's name, its channels before and its columns per channel.
type Consumer = (&'static str, usize, usize);

/// The tiny Llama: its MLPs (a map per layer), its RMS-normalised stream doubled by whole
/// copies (the noise lands on the norms' readers), and everything at once (attention's
/// kv groups bring 8 columns each; `o` and `down` gain rows in one step and columns in
/// another).
#[test]
fn llama_students_with_cancelling_noise_prove_exact() {
    let g = compile(LLAMA, &[]).unwrap();
    let p = teacher(&g);
    let cases: &[(&str, Target, &[Consumer])] = &[
        (
            "layers_x.mlp",
            Target::Name("layers_x.mlp".into()),
            &[
                ("layers_1.mlp.down.weight", 48, 1),
                ("layers_2.mlp.down.weight", 48, 1),
            ],
        ),
        (
            "layers_x",
            Target::Name("layers_x".into()),
            &[
                ("layers_1.attention.q.weight", 32, 1),
                ("layers_1.attention.k.weight", 32, 1),
                ("layers_2.mlp.up.weight", 32, 1),
                ("head.fc.weight", 32, 1),
            ],
        ),
        (
            "--all",
            Target::All,
            &[
                ("layers_1.attention.o.weight", 4, 8),
                ("layers_2.mlp.down.weight", 48, 1),
                ("layers_2.mlp.gate.weight", 32, 1),
            ],
        ),
    ];
    for (what, target, consumers) in cases {
        let plain = grow(&g, &p, (target, Amount::By(2.0)), None, 5);
        let noisy = grow(
            &g,
            &p,
            (target, Amount::By(2.0)),
            Some(Noise::Cancelling(SIGMA)),
            5,
        );
        let worst = assert_proved_exact(what, &noisy);
        for &(name, c, cols) in *consumers {
            let (dup, ratio) = check_columns(&plain.params, &noisy.params, &p, name, c, cols);
            assert!(
                dup > 0 && (0.6..1.4).contains(&ratio),
                "{what} {name}: {ratio}"
            );
        }
        eprintln!("llama {what} --by 2 --noise {SIGMA}: worst proof {worst:.2e}");
    }
}

/// The seed draws the noise: whole copies of the stream use no other draw, so the
/// noiseless students of two seeds are equal and the noisy ones differ (each seed
/// reproducibly); SIGMA 0 is no noise.
#[test]
fn the_seed_changes_the_noise() {
    let g = compile(LLAMA, &[]).unwrap();
    let p = teacher(&g);
    let t = Target::Name("layers_x".into());
    let at = (&t, Amount::By(2.0));
    let noise = Some(Noise::Cancelling(SIGMA));
    assert_eq!(
        grow(&g, &p, at, None, 5).params,
        grow(&g, &p, at, None, 6).params
    );
    let a = grow(&g, &p, at, noise, 5).params;
    assert_eq!(a, grow(&g, &p, at, noise, 5).params);
    let b = grow(&g, &p, at, noise, 6).params;
    let q = "layers_1.attention.q.weight";
    assert_ne!(a.tensors[q], b.tensors[q]);
    assert_eq!(
        grow(&g, &p, at, Some(Noise::Cancelling(0.0)), 5).params,
        grow(&g, &p, at, None, 5).params
    );
}

/// `--noise-approx` keeps the Net2Net paper's independent noise on new weights: the
/// student is measured, not proved, and the report says so.
#[test]
fn approximate_noise_is_measured_not_proved() {
    let g = example("resnet_cifar10");
    let p = teacher(&g);
    let mut a = widen_args(Target::All, Amount::By(1.5), Method::Net2net);
    a.noise = Some(Noise::Approx(SIGMA));
    let opts = ProveOptions::default();
    let s = run_step(&g, &p, &Step::Widen(a), 5, Proof::Full(&opts), "t").unwrap();
    assert_eq!(s.report.exactness, Exactness::NotPreserving);
    assert!(!s.report.proved);
    let dev = s
        .report
        .evidence
        .iter()
        .map(|e| e.max_rel_err)
        .fold(0.0, f64::max);
    assert!(dev > 1e-6 && dev < 1.0, "{dev}");
    assert!(
        s.report
            .notes
            .iter()
            .any(|n| n.contains("approximate noise") && n.contains("not function preserving")),
        "{:?}",
        s.report.notes
    );
}

/// From the command line: `--noise` is proved and reported exact, streamed (local proofs)
/// to the same bits as in memory; `--noise-approx` is measured; the two flags conflict; a
/// negative SIGMA and noise for another method are refused.
#[test]
fn cli_noise_is_exact_streamed_and_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let w = d.join("t.safetensors");
    init_weights(
        &ex("resnet_cifar10"),
        &w,
        &["--random-stats", "--seed", "3"],
    );
    let widen = |out: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "widen",
            "examples/resnet_cifar10.arch",
            "--all",
            "--by",
            "1.5",
            "--method",
            "net2net",
            "--weights",
            s(&w),
            "-o",
            s(out),
        ];
        a.extend_from_slice(extra);
        r2rc(&a)
    };
    let (mem, st, approx) = (d.join("mem"), d.join("st"), d.join("approx"));
    let o = widen(&mem, &["--noise", "0.1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = widen(&st, &["--noise", "0.1", "--prove", "local"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let st_tensors = tensors(&st.join("resnet_cifar10.safetensors"));
    assert_eq!(
        tensors(&mem.join("resnet_cifar10.safetensors")),
        st_tensors,
        "streamed and in-memory students differ"
    );
    for dir in [&mem, &st] {
        let r = json(&dir.join("report.json"));
        assert_eq!(r["exactness"], "exact");
        assert_eq!(r["proved"], true);
        let notes = r["notes"].to_string();
        assert!(notes.contains("cancelling noise"), "{notes}");
    }
    let o = widen(&approx, &["--noise-approx", "0.1"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let r = json(&approx.join("report.json"));
    assert_eq!(r["exactness"], "not_preserving");
    assert!(r["notes"].to_string().contains("approximate noise 0.1"));

    let o = widen(&d.join("x"), &["--noise", "0.1", "--noise-approx", "0.1"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("cannot be used with"),
        "{}",
        text(&o.stderr)
    );
    let o = widen(&d.join("x"), &["--noise=-0.5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--noise -0.5: SIGMA must be a finite number >= 0"),
        "{}",
        text(&o.stderr)
    );
    let o = r2rc(&[
        "widen",
        &ex("smallconv"),
        "--layer",
        "conv1",
        "--add",
        "2",
        "--noise",
        "0.1",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("--noise only applies to net2net, not r2r"),
        "{}",
        text(&o.stderr)
    );
    assert!(!d.join("x").exists());
}
