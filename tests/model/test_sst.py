from __future__ import annotations

import pytest
import torch

from ribsr.build import build_model, build_sst
from ribsr.config import PUBLISHED_PARAMS_M, SSTConfig, param_count_m, preset


def _tiny(**overrides) -> SSTConfig:
    kw = dict(dim=24, window_sizes=(4, 8, 16), num_heads=(3, 3, 3), ranks=(4, 6, 8), n_blocks=1, exp_ratio=1.5,
              rib_hidden_dim=8, rib_n_freqs=3)
    kw.update(overrides)
    return SSTConfig(**kw)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_counts_match_the_paper(name):
    for scale, published in zip((2, 3, 4), PUBLISHED_PARAMS_M[name], strict=True):
        with torch.device("meta"):
            model = build_sst(preset(name, scale=scale))
        assert param_count_m(sum(p.numel() for p in model.parameters())) == published, (name, scale)


@pytest.mark.parametrize("upsampler", ["pixelshuffle_direct", "pixelshuffle", "nn+conv"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_shape_for_every_upsampler_and_scale(upsampler, scale):
    model = build_sst(_tiny(upsampler=upsampler, scale=scale, intermediate_dim=16)).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 11, 13))
    assert y.shape == (1, 3, 11 * scale, 13 * scale)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("size", [(1, 1), (3, 40), (5, 7), (16, 16), (17, 33)])
def test_any_input_size_including_smaller_than_the_window(size):
    model = build_sst(_tiny()).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, *size))
    assert y.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert torch.isfinite(y).all()


def test_batch_equals_single_images():
    model = build_sst(_tiny(window_sizes=(8, 8), num_heads=(3, 3), ranks=(4, 4))).eval()  # shifted windows
    x = torch.rand(3, 3, 19, 12)
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_paths_agree_on_a_whole_network():
    torch.manual_seed(3)
    ref = build_sst(_tiny(), attention="reference").eval()
    x = torch.rand(2, 3, 21, 18)
    with torch.no_grad():
        expected = ref(x)
        for attention in ("bias", "concat"):
            m = build_sst(_tiny(), attention=attention).eval()
            m.load_state_dict(ref.state_dict())
            assert (m(x) - expected).abs().max() <= 1e-5, attention


def test_training_step_updates_rib_parameters():
    model = build_sst(_tiny()).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 32, 32)
    before = model.body[0][0].attn.pos.to_q.detach().clone()
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.l1_loss(model(x), y).backward()
        opt.step()
    assert not torch.equal(before, model.body[0][0].attn.pos.to_q)
    # eval after training uses the updated parameters (the factor cache follows them)
    model.eval()
    with torch.no_grad():
        a = model(x)
        model.body[0][0].attn.pos.to_q.add_(1.0)
        b = model(x)
    assert not torch.allclose(a, b)


def test_rejects_non_rgb_input():
    with pytest.raises(ValueError, match=r"\(1, 4, 8, 8\)"):
        build_sst(_tiny())(torch.rand(1, 4, 8, 8))


def test_build_model_with_overrides():
    with torch.device("meta"):
        m = build_model("light", scale=3, n_blocks=1)
        full = build_model("light", scale=3)
    assert m.config == preset("light", scale=3, n_blocks=1)
    # one block fewer of four: the parameters of the other blocks, the head and the upsampler stay
    per_block = (sum(p.numel() for p in full.parameters()) - sum(p.numel() for p in m.parameters())) / 4
    assert per_block == sum(p.numel() for p in full.body[0].parameters())
