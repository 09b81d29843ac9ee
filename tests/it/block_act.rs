//! A block's own final activation (`[...] x N, act NAME`): it parses, lowers to the named
//! activation after the add (or after the last layer without a shortcut), prints back,
//! and a misspelt or misplaced one is refused with a hint.

use r2rc::ir::{Activation, Op};
use r2rc::lower::compile;
use r2rc::print::print;

const NET: &str = "arch Acts
input 3x8x8

conv1    8x8  3x3, 8
conv2_x  8x8  [3x3, 8] x 1, shortcut none, act identity
              [3x3, 8; 3x3, 8] x 2, act prelu
              [3x3, 8] x 1
head     1x1  avg pool, 10-d fc
";

#[test]
fn a_block_ends_in_its_own_activation_and_prints_back() {
    let g = compile(NET, &[]).unwrap();
    let act = |name: &str| match &g.g[g.find(name).unwrap()].op {
        Op::Activation(a) => a.clone(),
        op => panic!("{name} is {op:?}"),
    };
    assert_eq!(act("conv2_1.act"), Activation::Identity);
    // The activation follows the last layer directly: no add without a shortcut.
    assert!(g.find("conv2_1.add").is_none());
    assert_eq!(act("conv2_2.act"), Activation::Prelu { channels: 8 });
    assert_eq!(act("conv2_3.act"), Activation::Prelu { channels: 8 });
    assert!(g.find("conv2_3.add").is_some());
    // Inside the brackets the layers keep the header's activation.
    assert_eq!(act("conv2_2.act1"), Activation::Relu);
    assert_eq!(act("conv2_4.act"), Activation::Relu);
    let text = print(&g);
    assert!(
        text.contains("[3x3, 8] x 1, shortcut none, act identity")
            && text.contains("[3x3, 8; 3x3, 8] x 2, act prelu\n"),
        "{text}"
    );
    let again = compile(&text, &[]).unwrap();
    assert!(g == again, "print does not round trip:\n{text}");
    assert_eq!(print(&again), text);
}

#[test]
fn the_header_activation_is_not_printed_on_a_block() {
    let src = "arch A\ninput 3x8x8\nact tanh\n\nconv_x  8x8  [3x3, 3] x 2, act tanh\n";
    let text = print(&compile(src, &[]).unwrap());
    assert!(text.contains("[3x3, 3] x 2\n"), "{text}");
}

#[test]
fn a_misspelt_block_activation_names_the_closest() {
    let src = "arch A\ninput 3x8x8\n\nconv_x  8x8  [3x3, 3] x 1, shortcut none, act identiy\n";
    let e = compile(src, &[]).unwrap_err();
    assert_eq!(e.message, "unknown activation `identiy`");
    let hint = e.hint.clone().unwrap_or_default();
    assert!(hint.contains("`identity`"), "{hint}");
    assert_eq!(&src[e.span.start..e.span.end], "identiy");
}

#[test]
fn no_act_after_a_block_is_refused_with_the_spelling_to_use() {
    let src = "arch A\ninput 3x8x8\n\nconv_x  8x8  [3x3, 3] x 1, no act\n";
    let e = compile(src, &[]).unwrap_err();
    assert!(
        e.message.contains("does not apply to a residual block"),
        "{}",
        e.message
    );
    assert!(e.hint.clone().unwrap_or_default().contains("act identity"));
    let src = "arch A\ninput 3x8x8\n\nconv_x  8x8  [3x3, 3] x 1, groups 2\n";
    let e = compile(src, &[]).unwrap_err();
    assert!(e.hint.clone().unwrap_or_default().contains("act NAME"));
}
