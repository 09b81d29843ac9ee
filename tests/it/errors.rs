//! Every file in tests/fixtures/errors/ must be refused with a diagnostic that has a
//! file:line:col, a caret under the span and a hint. Rendered without colours and
//! snapshotted in snapshots/errors/. Adding a fixture adds a test.

use r2rc::error::render;
use r2rc::lower::compile;

use crate::common::root;

#[test]
fn every_error_fixture_is_a_rendered_diagnostic() {
    let mut s = insta::Settings::clone_current();
    s.set_snapshot_path(root().join("snapshots/errors"));
    s.set_prepend_module_to_snapshot(false);
    s.bind(|| {
        insta::glob!("../fixtures/errors", "*.arch", |path| {
            let bytes = std::fs::read(path).unwrap();
            let src = String::from_utf8_lossy(&bytes);
            let name = path.file_name().unwrap().to_str().unwrap();
            let e = match compile(&src, &[]) {
                Ok(_) => panic!("{name} was accepted"),
                Err(e) => e,
            };
            let text = render(&e, name, &src, false);
            assert!(text.starts_with(&format!("{name}:")), "{text}");
            assert!(text.contains("help:"), "{name} has no hint:\n{text}");
            assert!(!text.contains('\u{1b}'), "colour codes in {name}");
            insta::assert_snapshot!(text);
        });
    });
}
