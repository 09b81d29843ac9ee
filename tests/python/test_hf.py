"""r2rc.hf: a Hugging Face causal LM grown in one call. The student is a transformers
model of the student's config whose logits equal the teacher's within 1e-4 x max|logit|
(f32), and training it with the returned optimizer runs."""

import pytest
import torch

transformers = pytest.importorskip("transformers")

import r2rc  # noqa: E402
import r2rc.hf  # noqa: E402


def tiny_llama():
    torch.manual_seed(0)
    # Sizes where x1.5 keeps heads and kv groups whole (the head dimension is kept).
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                                   num_hidden_layers=2, num_attention_heads=8,
                                   num_key_value_heads=4, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def train(model, opt, ids, steps=1):
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = model(ids, labels=ids).loss
        loss.backward()
        opt.step()
    model.eval()
    return loss.item()


def rel_err(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


def test_llama_widen_by_1_5():
    model = tiny_llama()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3)
    ids = torch.randint(0, 64, (2, 12))
    train(model, opt, ids, steps=2)
    with torch.no_grad():
        want = model(ids).logits
    s, opt2, report = r2rc.hf.widen(model, opt, by=1.5)
    assert isinstance(s, transformers.LlamaForCausalLM)
    assert (s.config.hidden_size, s.config.intermediate_size, s.config.num_attention_heads,
            s.config.num_key_value_heads) == (48, 72, 12, 6)
    assert report["proved"]
    with torch.no_grad():
        got = s(ids).logits
    assert got.dtype == torch.float32
    assert rel_err(want, got) <= 1e-4
    assert [g["weight_decay"] for g in opt2.param_groups] == [0.1, 0.0]
    assert len(opt2.state) == len(list(s.parameters()))
    before = [p.detach().clone() for p in s.parameters()]
    loss = train(s, opt2, ids, steps=2)
    assert loss == loss  # finite
    assert any(not torch.equal(a, b) for a, b in zip(before, s.parameters()))


def test_llama_deepen_after_a_layer():
    model = tiny_llama().eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 64, (2, 12))
    train(model, opt, ids)
    with torch.no_grad():
        want = model(ids).logits
    s, opt2, report = r2rc.hf.deepen(model, opt, after="model.layers.0")
    assert s.config.num_hidden_layers == 3 and report["proved"]
    with torch.no_grad():
        assert rel_err(want, s(ids).logits) <= 1e-4
    # The inserted layer starts Adam afresh (step 0), the others keep their steps.
    steps = {n: float(opt2.state[p]["step"]) for n, p in s.named_parameters()}
    assert steps["model.layers.1.mlp.up_proj.weight"] == 0.0
    assert steps["model.layers.0.mlp.up_proj.weight"] == 1.0
    train(s, opt2, ids)


def test_gpt2_widen():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        want = model(ids).logits
    s, opt2, report = r2rc.hf.widen(model, by=2)
    assert opt2 is None and s.config.n_embd == 64
    with torch.no_grad():
        assert rel_err(want, s(ids).logits) <= 1e-4


def test_hf_refusal_keeps_the_clis_reason():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg)
    with pytest.raises(r2rc.R2rcError, match="cannot write this student as LlamaForCausalLM"):
        r2rc.hf.widen(model, by=1.5)
