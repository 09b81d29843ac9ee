//! `r2rc init` writes tensor by tensor (one tensor in memory at a time): its files hold
//! the very bytes of the in-memory path (`params::init`, then `names::to_bytes`) for every
//! naming, fused layouts (GPT-2's `c_attn`, timm's `qkv`) and dtypes included, and its
//! shards hold the same tensors.

use std::path::Path;

use r2rc::names::{self, Naming};
use r2rc::params::{self, DType};

use crate::common::{ex, init_weights, listing, tensors};
use crate::transformer_widen::{GPT2, VIT};

/// `r2rc init ARCH` (and with shards) against the in-memory bytes of the same network.
fn same_as_in_memory(arch: &Path, naming: Naming, dtype: DType, seed: u64, random: bool) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w.safetensors");
    let (seed_text, dtype_text) = (seed.to_string(), dtype.to_string());
    let mut extra = vec![
        "--names",
        naming.keyword(),
        "--dtype",
        dtype_text.as_str(),
        "--seed",
        seed_text.as_str(),
    ];
    if random {
        extra.push("--random-stats");
    }
    init_weights(arch.to_str().unwrap(), &out, &extra);
    let g = r2rc::lower::compile(&std::fs::read_to_string(arch).unwrap(), &[]).unwrap();
    let p = params::init(&g, seed, random).with_dtype(dtype);
    let want = names::to_bytes(&p, &g, None, naming).unwrap();
    let got = std::fs::read(&out).unwrap();
    let what = format!("{} {naming:?} {dtype:?}", arch.display());
    assert!(got == want, "{what}: the bytes differ");

    // Sharded: the same tensors, bytes for bytes.
    let sharded = dir.path().join("shards");
    std::fs::create_dir(&sharded).unwrap();
    let mut extra = extra.clone();
    extra.extend(["--shard-size", "20KB"]);
    init_weights(
        arch.to_str().unwrap(),
        &sharded.join("w.safetensors"),
        &extra,
    );
    assert!(
        listing(&sharded).len() > 2,
        "{}: not sharded",
        arch.display()
    );
    assert_eq!(tensors(&sharded), tensors(&out), "{}", arch.display());
}

#[test]
fn streamed_init_writes_the_in_memory_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Naming, DType, u64, bool); 6] = [
        ("resnet_cifar10", Naming::R2rc, DType::F32, 0, false),
        ("resnet_cifar10", Naming::Torchvision, DType::F16, 3, true),
        ("smallconv", Naming::R2rc, DType::F64, 1, true),
        ("resnet_cifar18", Naming::Torchvision, DType::BF16, 2, true),
        ("gpt2", Naming::Hf, DType::F32, 4, true),
        ("vit", Naming::Timm, DType::F32, 5, false),
    ];
    for (name, naming, dtype, seed, random) in cases {
        let arch = match name {
            "gpt2" | "vit" => {
                let p = dir.path().join(format!("{name}.arch"));
                std::fs::write(&p, if name == "gpt2" { GPT2 } else { VIT }).unwrap();
                p
            }
            _ => Path::new(&ex(name)).to_path_buf(),
        };
        same_as_in_memory(&arch, naming, dtype, seed, random);
    }
}
