//! parse -> lower -> print -> parse: whatever compiles must print to text that compiles
//! to the same graph and prints identically; nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use r2rc::lower::compile;
use r2rc::print::print;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(graph) = compile(text, &[]) else {
        return;
    };
    let printed = print(&graph);
    let again = match compile(&printed, &[]) {
        Ok(g) => g,
        Err(e) => panic!("printed form does not compile: {e:?}\n--- input\n{text}\n--- printed\n{printed}"),
    };
    assert!(graph == again, "round trip changes the graph\n--- input\n{text}\n--- printed\n{printed}");
    assert_eq!(print(&again), printed, "printing is not a fixed point");
});
