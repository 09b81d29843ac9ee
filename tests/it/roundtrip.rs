//! Property tests of the front end: `parse(print(g)) == g` for random architectures, and
//! no input at all can make the parser or lowering panic.

use proptest::prelude::*;
use r2rc::lower::compile;
use r2rc::print::print;

use crate::common::{example_path, example_source};

const ACTS: [&str; 7] = [
    "relu",
    "prelu",
    "leaky_relu(0.2)",
    "tanh",
    "sigmoid",
    "gelu",
    "identity",
];

/// One conv layer `KxK, W[, options]`.
fn layer(cin: usize, width: usize) -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec![1usize, 3, 5]),
        0usize..6,
        any::<bool>(),
        0usize..8,
        any::<bool>(),
    )
        .prop_map(move |(k, opt, bias, act, dil)| {
            let mut s = format!("{k}x{k}, {width}");
            match opt {
                0 => s.push_str(", no norm"),
                1 if width.is_multiple_of(2) && cin.is_multiple_of(2) => s.push_str(", groups 2"),
                2 if dil && k == 3 => s.push_str(", dilation 2"),
                3 => s.push_str(&format!(", pad {}", (k - 1) / 2)),
                _ => {}
            }
            if bias {
                s.push_str(", bias");
            }
            if act < ACTS.len() {
                s.push_str(&format!(", act {}", ACTS[act]));
            }
            s
        })
}

/// A residual stage `[L; L] x N` whose input has `cin` channels; returns text and width.
fn stage(cin: usize) -> impl Strategy<Value = (String, usize)> {
    (1usize..3, 1usize..4, 0usize..3, any::<bool>(), 0usize..4)
        .prop_flat_map(move |(mult, layers, shortcut, stride, count)| {
            let width = cin * mult;
            let layers: Vec<_> = (0..layers)
                .map(|i| layer(if i == 0 { cin } else { width }, width))
                .collect();
            (layers, Just((width, shortcut, stride, count + 1)))
        })
        .prop_map(|(layers, (width, shortcut, stride, count))| {
            // The first layer of the first block carries the stride, as `[...], stride 2` would.
            let mut ls = layers;
            if stride {
                ls[0].push_str(", stride 2");
            }
            let mut s = format!("[{}] x {count}", ls.join("; "));
            s.push_str(match shortcut {
                1 => ", shortcut pad",
                2 => ", shortcut none",
                _ => "",
            });
            (s, width)
        })
}

fn architecture() -> impl Strategy<Value = String> {
    (
        Just(()),
        (1usize..5).prop_flat_map(|c| layer(c, 4).prop_map(move |l| (c, l))),
        stage(4),
        any::<bool>(),
        0usize..3,
        any::<bool>(),
    )
        .prop_flat_map(|(_, (c0, stem), (s1, w1), pool, head, plain)| {
            (Just((c0, stem, s1, pool, head, plain)), stage(w1))
        })
        .prop_map(|((c0, stem, s1, pool, head, plain), (s2, _))| {
            let mut t = format!("arch Random\ninput {c0}x16x16\n");
            if plain {
                t.push_str("shortcut none\nact gelu\neps 0.001\n");
            }
            t.push_str(&format!("conv1 {stem}\n"));
            if pool {
                t.push_str("pool1 3x3 max pool, stride 2\n");
            }
            t.push_str(&format!("conv2_x {s1}\n        {s2}\n"));
            t.push_str(match head {
                0 => "head avg pool, 10-d fc, softmax\n",
                1 => "fc1 20-d fc, act tanh\nfc2 7-d fc, no bias\n",
                _ => "head 2x2 max pool, stride 2, 3x3 avg pool, 12-d fc, 5-d fc, act sigmoid\n",
            });
            t
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn print_then_parse_is_identity(text in architecture()) {
        let graph = compile(&text, &[]).map_err(|e| TestCaseError::fail(format!("{e:?}\n{text}")))?;
        let printed = print(&graph);
        let again = compile(&printed, &[]).map_err(|e| TestCaseError::fail(format!("{e:?}\n{printed}")))?;
        prop_assert!(graph == again, "round trip differs:\n{}\n---\n{}", text, printed);
        prop_assert_eq!(print(&again), printed);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = compile(&text, &[]);
    }

    #[test]
    fn mutated_examples_never_panic(
        which in 0usize..9,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let files = [
            "smallconv", "resnet_cifar10", "resnet_cifar18", "resnet18", "resnet34", "resnet50",
            "gpt2", "tinyllama", "vit_b16",
        ];
        let mut bytes = std::fs::read(example_path(files[which])).unwrap();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(g) = compile(&text, &[]) {
            let printed = print(&g);
            prop_assert!(compile(&printed, &[]).is_ok(), "printed form of a mutated file fails:\n{}", printed);
        }
    }
}

#[test]
fn language_features_of_the_tables() {
    let src = "# comment line\nARCH Net(r = 2^-3.5, s = 1/8, t = 3)\nINPUT 3×32×32\n\
               conv1    32x32  3X3, ⌊64r⌋, STRIDE 1\n\
               conv2_x  16x16  [3x3, floor(64*s); 3×3, 64s] × 2, stride 2  # trailing comment\n\
               \x20               [1x1, 8t - 16]x1\n\
               head     1x1    AVG POOL, 10-D FC, Softmax\n";
    let g = compile(src, &[]).unwrap();
    let widths: Vec<usize> = g
        .order()
        .into_iter()
        .filter_map(|n| match &g.g[n].op {
            r2rc::ir::Op::Conv2d(c) if !g.g[n].name.contains("downsample") => Some(c.out_channels),
            _ => None,
        })
        .collect();
    // 64 * 2^-3.5 = 5.66 -> 5; 64/8 = 8; 8*3-16 = 8.
    assert_eq!(widths, vec![5, 8, 8, 8, 8, 8]);
    assert_eq!(g.output_shape(), &vec![10]);
    let names: Vec<String> = g.order().into_iter().map(|n| g.g[n].name.clone()).collect();
    for expected in [
        "conv1",
        "conv1.bn",
        "conv2_1.conv1",
        "conv2_1.downsample.0",
        "conv2_3.conv1",
        "head.pool",
        "head.fc",
        "head.softmax",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "missing {expected} in {names:?}"
        );
    }
}

#[test]
fn set_overrides_parameters() {
    let src = example_source("resnet_cifar18");
    let wide = compile(&src, &[("r".into(), "3/16".into())]).unwrap();
    let conv1 = wide.find("conv1").unwrap();
    assert_eq!(wide.g[conv1].shape, vec![12, 16, 16]);
    let e = compile(&src, &[("q".into(), "1".into())]).unwrap_err();
    assert!(e.message.contains("no parameter `q`"), "{}", e.message);
    assert_eq!(e.hint.as_deref(), Some("its parameters are: r"));
    let e = compile(&src, &[("r".into(), "1/".into())]).unwrap_err();
    assert!(e.message.starts_with("--set r=1/:"), "{}", e.message);
}
