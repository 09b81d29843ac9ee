//! Channel spaces of the examples: members, producers, consumers, blockers.

use r2rc::analysis::channel_spaces;

use crate::common::example;

fn names(v: &[r2rc::analysis::spaces::Named]) -> Vec<&str> {
    v.iter().map(|n| n.name.as_str()).collect()
}

#[test]
fn resnet_cifar10_spaces() {
    let g = example("resnet_cifar10");
    let sp = channel_spaces(&g);
    let labels: Vec<&str> = sp.spaces.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "input",
            "conv1",
            "conv2_1.conv1",
            "conv2_2.conv1",
            "conv3_1.conv1",
            "conv3_1.conv2",
            "conv3_2.conv1",
            "head.fc"
        ]
    );
    let widenable: Vec<bool> = sp.spaces.iter().map(|s| s.widenable()).collect();
    assert_eq!(
        widenable,
        [false, true, true, true, true, true, true, false]
    );
    // The conv3 stream: projection shortcut and residual branch are producers, the fc
    // after global pooling is a consumer with one column per channel.
    let s = sp.space_of(g.find("conv3_2.add").unwrap());
    assert_eq!(
        names(&s.producers),
        ["conv3_1.conv2", "conv3_1.downsample.0", "conv3_2.conv2"]
    );
    assert_eq!(
        names(&s.params),
        ["conv3_1.bn2", "conv3_1.downsample.1", "conv3_2.bn2"]
    );
    let c: Vec<(&str, usize)> = s
        .consumers
        .iter()
        .map(|c| (c.name.as_str(), c.cols))
        .collect();
    assert_eq!(c, [("conv3_2.conv1", 1), ("head.fc", 1)]);
    assert_eq!(s.width, 16);
    // The conv2 stream feeds the projection as a consumer (paper eq. 38).
    let s = sp.space_of(g.find("conv1").unwrap());
    assert!(s.consumers.iter().any(|c| c.name == "conv3_1.downsample.0"));
    let out = &sp.spaces[7];
    assert_eq!(out.blockers.len(), 2, "{:?}", out.blockers);
}

#[test]
fn flatten_gives_each_channel_hw_columns() {
    let g = example("smallconv");
    let sp = channel_spaces(&g);
    let s = sp.space_of(g.find("conv1").unwrap());
    assert_eq!(s.width, 16);
    assert_eq!(s.consumers.len(), 1);
    assert_eq!(
        (s.consumers[0].name.as_str(), s.consumers[0].cols),
        ("fc1", 16 * 16)
    );
    let fc1 = sp.space_of(g.find("fc1").unwrap());
    assert_eq!(fc1.width, 150);
    assert!(fc1.widenable());
    assert_eq!(names(&fc1.producers), ["fc1"]);
}

#[test]
fn every_value_lies_in_exactly_one_space_and_widths_agree() {
    for name in [
        "smallconv",
        "resnet_cifar18",
        "resnet18",
        "resnet34",
        "resnet50",
    ] {
        let g = example(name);
        let sp = channel_spaces(&g);
        assert_eq!(sp.of.len(), g.order().len());
        for s in &sp.spaces {
            for m in &s.members {
                assert_eq!(g.g[m.node].shape[0], s.width * m.cols, "{name} {}", m.name);
            }
        }
    }
}
