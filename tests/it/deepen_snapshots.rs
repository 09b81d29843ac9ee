//! Snapshots (snapshots/deepen/) of the `.arch` diff and the name map of deepening every
//! example with every method at a representative site.

use std::path::Path;

use r2rc::params::init;
use r2rc::transform::deepen::{deepen, DeepenArgs, DeepenMethod};

/// (example, site, site for NetMorph-dense, whose readers must all be convs or fc layers).
const SITES: &[(&str, &str, &str)] = &[
    ("smallconv", "conv1", "pool1"),
    ("resnet_cifar10", "conv2_1", "conv2_2"),
    ("resnet_cifar18", "conv3_2", "conv3_4"),
    ("resnet18", "conv4_1", "conv4_2"),
    ("resnet34", "conv3_2", "conv2_3"),
    ("resnet50", "conv3_1", "conv2_3"),
];

#[test]
fn deepen_diff_snapshots() {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/deepen"));
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| {
        for &(file, site, dense_site) in SITES {
            let src = std::fs::read_to_string(format!("examples/{file}.arch")).unwrap();
            let g = r2rc::lower::compile(&src, &[]).unwrap();
            let p = init(&g, 0, true);
            for method in [
                DeepenMethod::R2r,
                DeepenMethod::Net2net,
                DeepenMethod::Netmorph,
                DeepenMethod::NetmorphDense,
                DeepenMethod::Random,
            ] {
                let at = if method == DeepenMethod::NetmorphDense {
                    dense_site
                } else {
                    site
                };
                let a = DeepenArgs {
                    after: at.into(),
                    method,
                    width: None,
                };
                let d = deepen(&g, &p, &a, 0).unwrap_or_else(|e| panic!("{file} {at}: {e}"));
                let mut text =
                    r2rc::report::diff(&g, &d.graph, &format!("{file}.arch"), "student.arch");
                text.push_str(&format!("\n{}\n", d.site));
                for (a, b) in &d.name_map {
                    text.push_str(&format!("renamed {a} -> {b}\n"));
                }
                for c in &d.changed {
                    text.push_str(&format!("changed {c}\n"));
                }
                insta::assert_snapshot!(format!("{file}__{at}__{}", method.name()), text);
            }
        }
    });
}
