//! Snapshots (snapshots/deepen/) of the `.arch` diff and the name map of deepening every
//! example with every method at a representative site.

use r2rc::params::init;
use r2rc::transform::deepen::{deepen, DeepenArgs, DeepenMethod};

use crate::common::{conv_example_names, example, root, DEEPEN_SITES};

#[test]
fn deepen_diff_snapshots() {
    // Every convolutional example has a site; transformers are left out because deepening
    // them is refused today (tests/it/transformers.rs checks that).
    let mut listed: Vec<String> = DEEPEN_SITES.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(conv_example_names(), listed, "every example needs a site");
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots/deepen"));
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| {
        for &(file, site, dense_site, net2net_site) in DEEPEN_SITES {
            let g = example(file);
            let p = init(&g, 0, true);
            for method in [
                DeepenMethod::R2r,
                DeepenMethod::Net2net,
                DeepenMethod::Netmorph,
                DeepenMethod::NetmorphDense,
                DeepenMethod::Random,
            ] {
                let at = match method {
                    DeepenMethod::NetmorphDense => dense_site,
                    DeepenMethod::Net2net => net2net_site,
                    _ => site,
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
