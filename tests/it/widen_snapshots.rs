//! Snapshots of `diff(teacher, student)` for every example x method x a representative
//! target (`--by 1.5`), kept in snapshots/widen/.

use r2rc::params;
use r2rc::report::diff;
use r2rc::transform::{widen, Amount, Method, Target};

use crate::common::{conv_example_names, example, widen_args};

/// A target per example: a head row, a block, a stage, a stream, a layer, a grouped conv,
/// a transition (its space reaches into the next dense block's concatenations).
const CASES: [(&str, &str); 10] = [
    ("densenet121", "trans2"),
    ("preact_resnet18", "conv3_1"),
    ("resnext101_32x8d", "conv2_1.conv2"),
    ("resnext50_32x4d", "conv3_2.conv2"),
    ("smallconv", "fc1"),
    ("resnet_cifar10", "conv3_1"),
    ("resnet_cifar18", "conv2_x"),
    ("resnet18", "conv1"),
    ("resnet34", "conv3_2.conv1"),
    ("resnet50", "conv4_1"),
];

#[test]
fn widen_diffs() {
    // The glob keeps the cases in step with the examples folder; transformers are left
    // out because widening them is refused today (tests/it/transformers.rs checks that).
    let found = conv_example_names();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed, "every example needs a snapshot case");
    for (name, target) in CASES {
        let g = example(name);
        let tp = params::init(&g, 0, false);
        for method in [
            Method::R2r,
            Method::Netmorph,
            Method::Net2net,
            Method::Random,
        ] {
            let a = widen_args(Target::Name(target.into()), Amount::By(1.5), method);
            let w = widen(&g, &tp, &a, 0).unwrap();
            // The student's printed text compiles back to the student.
            let back = r2rc::lower::compile(&r2rc::print::print(&w.graph), &[]).unwrap();
            assert!(
                back == w.graph,
                "{name} {target} {method:?}: print does not round-trip"
            );
            let mut text = diff(&g, &w.graph, &format!("{name}.arch"), "student.arch");
            for n in &w.notes {
                text.push_str(&format!("# note: {n}\n"));
            }
            insta::with_settings!({
                snapshot_path => "../../snapshots/widen",
                prepend_module_to_snapshot => false,
                description => format!("r2rc widen examples/{name}.arch --layer {target} --by 1.5 --method {}", method.name()),
            }, {
                insta::assert_snapshot!(format!("{name}__{}__{}", target.replace('.', "_"), method.name()), text);
            });
        }
    }
}
