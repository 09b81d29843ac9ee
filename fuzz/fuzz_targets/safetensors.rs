//! Loading arbitrary bytes as the weights of a small network that has every tensor kind
//! (conv with and without bias, BN with its counter, linear): a clear error or valid
//! params, never a panic or a huge allocation.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use r2rc::ir::Graph;

const ARCH: &str = "arch Fuzz\ninput 2x4x4\nconv1 3x3, 3, bias\nconv2_x [3x3, 3; 1x1, 4] x 1\nhead avg pool, 2-d fc\n";

fn graph() -> &'static Graph {
    static G: OnceLock<Graph> = OnceLock::new();
    G.get_or_init(|| r2rc::lower::compile(ARCH, &[]).expect("the fuzz network compiles"))
}

fuzz_target!(|data: &[u8]| {
    let g = graph();
    if let Ok(p) = r2rc::params::from_bytes(g, data, "fuzz.safetensors") {
        // Whatever loads must save and load back (values may round: a file of mixed
        // dtypes is saved in its majority dtype).
        let bytes = r2rc::params::to_bytes(&p, g, None).expect("loaded params save");
        let q = r2rc::params::from_bytes(g, &bytes, "again").expect("saved params load");
        assert_eq!(p.tensors.keys().collect::<Vec<_>>(), q.tensors.keys().collect::<Vec<_>>());
    }
});
