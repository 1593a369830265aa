from __future__ import annotations

import json
import os
import resource
import stat
import time

import pytest
import torch
import yaml

from ribsr.build import build_model, build_sst
from ribsr.checkpoint import (
    CheckpointError,
    checkpoint_scale,
    convert_checkpoint,
    load_model,
    matching_presets,
    read_checkpoint,
    resize_upsampler,
    save_model,
)
from ribsr.config import PRESETS, ConfigError, SSTConfig, preset

TINY = dict(dim=24, window_sizes=(8, 16), num_heads=(3, 3), ranks=(4, 8), n_blocks=1, rib_hidden_dim=8, rib_n_freqs=2)


def _perturbed(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


@pytest.mark.parametrize("name", ["light", "light+"])
def test_round_trip_small_presets(name, tmp_path):
    """config -> model -> .safetensors (with config) -> load gives the same config and weights."""
    model = _perturbed(build_model(name, scale=2))
    path = save_model(model, tmp_path / f"{name}.safetensors")
    loaded = load_model(path)
    assert loaded.config == model.config and loaded.config.name == name and not loaded.training
    ref = model.state_dict()
    assert list(loaded.state_dict()) == list(ref)
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, ref[k]), k


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_round_trip_every_preset_by_shape(name, scale):
    """The same round trip on the meta device (the large presets' weights take 47-136 MB): what a file holds
    (the config as save_model stores it, every name and shape) rebuilds a network that takes the weights."""
    with torch.device("meta"):
        model = build_model(name, scale=scale)
        stored = SSTConfig.from_json(model.config.to_json())  # save_model's metadata, read back
        loaded = build_sst(stored)
    assert stored == model.config and stored.name == name
    loaded.load_state_dict(model.state_dict(), strict=True)  # every name, every shape
    assert f"{name} x{scale}" in matching_presets(model.state_dict())


@pytest.mark.parametrize("scale", [3, 4])
def test_round_trip_other_scales_and_outputs(scale, tmp_path):
    model = _perturbed(build_sst(SSTConfig(**TINY, scale=scale)))
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    x = torch.rand(1, 3, 12, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def _paper_file(tmp_path, state, wrap="params_ema", prefix=""):
    state = {prefix + k: v for k, v in state.items()}
    obj = {wrap: state} if wrap else state
    path = tmp_path / "paper.pth"
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("wrap,prefix", [("params_ema", ""), ("params", ""), (None, ""), ("params_ema", "module.")])
def test_paper_pth_layouts(tmp_path, wrap, prefix):
    cfg = SSTConfig(**TINY)
    model = _perturbed(build_sst(cfg))
    path = _paper_file(tmp_path, model.state_dict(), wrap, prefix)
    loaded = load_model(path, config=cfg.to_network_g())
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_params_ema_is_preferred(tmp_path):
    cfg = SSTConfig(**TINY)
    ema, raw = _perturbed(build_sst(cfg)), _perturbed(build_sst(cfg))
    path = tmp_path / "both.pth"
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, path)
    state, _ = read_checkpoint(path)
    assert torch.equal(state["proj.weight"], ema.state_dict()["proj.weight"])


def test_mismatch_names_the_fields_and_suggests_preset(tmp_path):
    model = build_model("light", scale=3)
    path = _paper_file(tmp_path, model.state_dict())
    with pytest.raises(CheckpointError) as info:
        load_model(path, config="base")
    msg = str(info.value)
    assert "paper.pth" in msg
    assert "dim: the config says 180, proj.weight has 48" in msg and "n_blocks: the config says 6" in msg
    assert "num_heads: the config says [6, 6, 6, 6, 6, 6], the first block's weights [3, 3, 3, 3, 3, 3]" in msg
    assert "light x3" in msg and "light+ x3" in msg


def test_mismatch_of_the_same_structure_lists_keys(tmp_path):
    model = build_sst(SSTConfig(**TINY))
    path = _paper_file(tmp_path, model.state_dict())
    with pytest.raises(CheckpointError) as info:
        load_model(path, config=SSTConfig(**TINY, gate_type="Linear"))
    msg = str(info.value)
    assert "paper.pth" in msg and "mis-shaped keys" in msg and "body.0.0.attn.gate.0.weight" in msg
    assert "no preset fits it" in msg


def test_pth_without_config_is_refused_with_hint(tmp_path):
    path = _paper_file(tmp_path, build_model("light").state_dict())
    with pytest.raises(CheckpointError, match=r"carries no configuration.*light x2, light\+ x2"):
        load_model(path)


def test_matching_presets():
    with torch.device("meta"):
        state = build_model("base", scale=4).state_dict()
    assert matching_presets(state) == ["base x4", "base+ x4"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_files_are_reported_by_name(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_model(path, config="light")


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": {"x": torch.zeros(1)}, "obj": object()}, path)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_model(path, config="light")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_model("nope.pth", config="light")


def test_truncated_safetensors(tmp_path):
    path = save_model(build_model("light", n_blocks=1), tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="m.safetensors"):
        load_model(path)


@pytest.mark.parametrize("upsampler", ["pixelshuffle_direct", "pixelshuffle"])
def test_scale_change_resizes_upsampler_when_asked(tmp_path, upsampler, caplog):
    cfg2 = SSTConfig(**TINY, upsampler=upsampler, intermediate_dim=16, scale=2)
    model = _perturbed(build_sst(cfg2))
    path = _paper_file(tmp_path, model.state_dict())
    with caplog.at_level("WARNING"):
        m3 = load_model(path, config=cfg2.replace(scale=3), resize_upsampler=True)
    assert "x2" in caplog.text and "x3" in caplog.text
    assert m3.config.scale == 3
    assert checkpoint_scale(m3.state_dict(), upsampler) == 3
    # everything but the resized conv is untouched
    for k, v in m3.state_dict().items():
        if "up_conv" not in k:
            assert torch.equal(v, model.state_dict()[k]), k
    with torch.no_grad():
        assert m3(torch.rand(1, 3, 9, 10)).shape == (1, 3, 27, 30)


def _x2_files(tmp_path):
    """One x2 network saved as every kind of checkpoint: (model, {kind: (path, config spec or None)})."""
    cfg = SSTConfig(**TINY, scale=2)
    model = _perturbed(build_sst(cfg))
    ours = save_model(model, tmp_path / "ours_x2.safetensors")
    paper = tmp_path / "paper_x2.pth"
    torch.save({"params_ema": model.state_dict()}, paper)
    bare = tmp_path / "bare_x2.pth"
    torch.save(model.state_dict(), bare)
    yml = tmp_path / "net_x2.yml"
    yml.write_text(yaml.safe_dump({"scale": 2, "network_g": cfg.to_network_g()}))
    return model, {"safetensors": (ours, None), "paper+yaml": (paper, yml), "paper+dict": (paper, cfg.to_network_g()),
                   "bare+config": (bare, cfg)}


@pytest.mark.parametrize("kind", ["safetensors", "paper+yaml", "paper+dict", "bare+config"])
def test_another_scale_than_the_weights_is_an_error(tmp_path, kind):
    """scale=3 with x2 weights is refused (never a silently resized, untrained upsampler), naming the file,
    both scales and the opt-in; the real loader on real files."""
    _, files = _x2_files(tmp_path)
    path, config = files[kind]
    with pytest.raises(CheckpointError) as info:
        load_model(path, config=config, scale=3)
    msg = str(info.value)
    assert path.name in msg and "x2" in msg and "x3" in msg and "resize_upsampler=True" in msg, msg


def test_a_config_of_another_scale_than_the_weights_is_an_error(tmp_path):
    model, files = _x2_files(tmp_path)
    paper, _ = files["paper+yaml"]
    yml = tmp_path / "net_x3.yml"
    yml.write_text(yaml.safe_dump({"network_g": model.config.replace(scale=3).to_network_g()}))
    for config in (yml, model.config.replace(scale=3), model.config.replace(scale=3).to_network_g()):
        with pytest.raises(CheckpointError, match=r"paper_x2\.pth.*x2.*x3.*resize_upsampler=True"):
            load_model(paper, config=config)


def test_a_config_without_a_scale_takes_the_weights_scale(tmp_path):
    # a network_g without upscaling_factor (like a preset name) carries no scale: x3 weights load at x3, unchanged
    model = _perturbed(build_sst(SSTConfig(**TINY, scale=3)))
    path = _paper_file(tmp_path, model.state_dict())
    net_g = {k: v for k, v in model.config.to_network_g().items() if k != "upscaling_factor"}
    loaded = load_model(path, config=net_g)
    assert loaded.config.scale == 3
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k


def test_the_same_scale_and_the_opt_in_load(tmp_path):
    model, files = _x2_files(tmp_path)
    for path, config in files.values():
        assert load_model(path, config=config, scale=2).config.scale == 2
        resized = load_model(path, config=config, scale=3, resize_upsampler=True)
        assert resized.config.scale == 3 and checkpoint_scale(resized.state_dict(), "pixelshuffle_direct") == 3


def test_resize_upsampler_identity_and_constant_grid():
    # A constant sub-pixel grid stays constant under bilinear resizing; same scale is the identity.
    w = torch.ones(3 * 4, 5, 3, 3) * torch.arange(3.0).repeat_interleave(4).view(-1, 1, 1, 1)
    state = {"upsampler.up_conv.weight": w, "upsampler.up_conv.bias": torch.arange(3.0).repeat_interleave(4)}
    out = resize_upsampler(state, "pixelshuffle_direct", 2, 3)
    assert out["upsampler.up_conv.weight"].shape == (27, 5, 3, 3)
    torch.testing.assert_close(out["upsampler.up_conv.bias"], torch.arange(3.0).repeat_interleave(9))
    same = resize_upsampler(state, "pixelshuffle_direct", 2, 2)
    torch.testing.assert_close(same["upsampler.up_conv.weight"], w)


def test_nn_conv_scale_change_is_an_error(tmp_path):
    cfg = SSTConfig(**TINY, upsampler="nn+conv", intermediate_dim=16, scale=2)
    path = _paper_file(tmp_path, build_sst(cfg).state_dict())
    with pytest.raises(CheckpointError, match="x4"):
        load_model(path, config=cfg.replace(scale=4))


def test_convert_writes_config(tmp_path):
    cfg = SSTConfig(**TINY)
    model = _perturbed(build_sst(cfg))
    src = _paper_file(tmp_path, model.state_dict())
    dst = convert_checkpoint(src, tmp_path / "out.safetensors", config=cfg.to_network_g())
    loaded = load_model(dst)
    assert loaded.config == cfg
    x = torch.rand(1, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_dtype_and_attention_options(tmp_path):
    path = save_model(build_model("light", n_blocks=1), tmp_path / "m.safetensors")
    m = load_model(path, dtype=torch.float64, attention="reference")
    assert next(m.parameters()).dtype == torch.float64 and m.attention == "reference"
    assert preset("light").replace(n_blocks=1) == m.config.replace(name="light")


# ------------------------------------------------------------------ hostile or broken files and configs
def _ours_with(tmp_path, state, config_text, name="hostile.safetensors"):
    """A file of our format whose config metadata is ``config_text`` (as a hostile or broken file has it)."""
    from safetensors.torch import save_file

    path = tmp_path / name
    tensors = {k: v.contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "ribsr-sst", "ribsr_config": config_text})
    return path


def _refused_fast(load, *names):
    """``load()`` is refused with a ConfigError or CheckpointError naming each of ``names``, in well under a
    second and without growing the process's peak memory (nothing is built for what the file claims)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    with pytest.raises((ConfigError, CheckpointError)) as info:
        load()
    elapsed = time.perf_counter() - start
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    msg = str(info.value)
    assert all(n in msg for n in names), msg
    assert elapsed < 1.0, f"took {elapsed:.2f} s"  # about 1 ms; building 64 blocks took minutes
    assert grown_mib < 50, f"peak memory grew by {grown_mib:.0f} MiB"
    return msg


@pytest.mark.parametrize(
    "change,field",
    [
        ({"n_blocks": 10**9}, "n_blocks"),
        ({"window_sizes": [100000, 100000]}, "window_sizes"),
        ({"exp_ratio": float("inf")}, "exp_ratio"),  # json writes Infinity, which Python's json reads back
        ({"exp_ratio": float("nan")}, "exp_ratio"),
        ({"exp_ratio": 1e-9}, "exp_ratio"),
        ({"dim": "24"}, "dim"),
        ({"ranks": [4, None]}, "ranks"),
        ({"attn_type": ["RIB"]}, "attn_type"),
    ],
)
def test_hostile_config_metadata_is_refused_fast(tmp_path, change, field):
    cfg = SSTConfig(**TINY)
    text = json.dumps({**cfg.to_dict(), **change})
    path = _ours_with(tmp_path, build_sst(cfg).state_dict(), text)
    _refused_fast(lambda: load_model(path), str(path), "metadata field 'ribsr_config'", field)


@pytest.mark.parametrize(
    "change,problem",
    [
        ({"n_blocks": 64}, "n_blocks: the config says 64, the weights hold 1"),
        ({"window_sizes": [8] * 32, "num_heads": [3] * 32, "ranks": [4] * 32}, "layers per block: the config has 32"),
        ({"dim": 1020}, "dim: the config says 1020, proj.weight has 24"),
        ({"ranks": [4, 256]}, "ranks: the config says [4, 256], the first block's weights [4, 8]"),
        ({"exp_ratio": 16}, "exp_ratio: the config's 16 gives 384 feed-forward channels"),
    ],
)
def test_a_config_that_contradicts_the_tensors_is_refused_before_building(tmp_path, change, problem):
    """Within the bounds, but claiming more than the file holds: refused from the shapes, nothing built."""
    cfg = SSTConfig(**TINY)
    path = _ours_with(tmp_path, build_sst(cfg).state_dict(), json.dumps({**cfg.to_dict(), **change}))
    _refused_fast(lambda: load_model(path), str(path), problem)


@pytest.mark.parametrize("attn_type,key", [("RPB", "relative_position_bias"), ("FlashBias", "flashbias_q")])
def test_window_sizes_are_checked_against_positional_tensors(tmp_path, attn_type, key):
    cfg = SSTConfig(**TINY, attn_type=attn_type)
    path = _ours_with(tmp_path, build_sst(cfg).state_dict(),
                      json.dumps({**cfg.to_dict(), "window_sizes": [8, 128]}))
    _refused_fast(lambda: load_model(path), str(path), "window_sizes: the config says [8, 128], "
                  "the first block's weights [8, 16]")


@pytest.mark.parametrize("text,problem", [("{not json", "not valid JSON"), ("[1, 2]", "must be an object"),
                                          ("null", "must be an object")])
def test_broken_config_metadata_names_the_file_and_field(tmp_path, text, problem):
    path = _ours_with(tmp_path, build_sst(SSTConfig(**TINY)).state_dict(), text)
    with pytest.raises(ConfigError) as info:
        read_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "metadata field 'ribsr_config'" in msg and problem in msg


@pytest.mark.parametrize(
    "network_g,problem",
    [({"n_blocks": 10**9}, "n_blocks must be an integer in [1, 64]"),
     ({"n_blocks": 64}, "n_blocks: the config says 64"),
     ({"window_sizes": [100000, 16]}, "window_sizes must hold integers in [1, 128]"),
     ({"exp_ratio": float("nan")}, "exp_ratio must be a finite number")],
)
def test_a_paper_pth_with_a_hostile_config_is_refused_fast(tmp_path, network_g, problem):
    cfg = SSTConfig(**TINY)
    path = _paper_file(tmp_path, build_sst(cfg).state_dict())
    option_file = tmp_path / "opt.yml"
    option_file.write_text(yaml.safe_dump({"network_g": {**cfg.to_network_g(), **network_g}}))
    _refused_fast(lambda: load_model(path, config=str(option_file)), "opt.yml" if "must" in problem else "paper.pth",
                  problem)


def test_an_option_file_without_network_g_says_so(tmp_path):
    path = _paper_file(tmp_path, build_sst(SSTConfig(**TINY)).state_dict())
    option_file = tmp_path / "train.yml"
    option_file.write_text(yaml.safe_dump({"name": "x", "scale": 2, "datasets": {"train": {"name": "T91"}},
                                           "train": {"total_iter": 10}, "n_blocks": 2}))
    with pytest.raises(ConfigError) as info:
        load_model(path, config=option_file)
    msg = str(info.value)
    assert str(option_file) in msg and "no network_g block" in msg, msg


def test_saved_files_get_the_umask_mode_and_leave_no_temporary_file(tmp_path):
    model = build_sst(SSTConfig(**TINY))
    old = os.umask(0o027)
    try:
        path = save_model(model, tmp_path / "m.safetensors")
        assert stat.S_IMODE(path.stat().st_mode) == 0o640
        os.umask(0o002)
        save_model(model, path)  # replacing a file gives the mode of the umask too
        assert stat.S_IMODE(path.stat().st_mode) == 0o664
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


@pytest.mark.parametrize(
    "change",
    [{"upsampler.up_conv.bias": None}, {"upsampler.up_conv.bias": torch.zeros(5)},
     {"upsampler.up_conv.weight": torch.zeros(12)}],
)
def test_resizing_a_broken_upsampler_is_a_checkpoint_error(tmp_path, change):
    """With the resizing asked for, odd up_conv tensors are named (they gave KeyError, RuntimeError, unpacking
    errors)."""
    cfg = SSTConfig(**TINY)
    state = {**build_sst(cfg).state_dict(), **change}
    path = _ours_with(tmp_path, {k: v for k, v in state.items() if v is not None}, cfg.to_json())
    with pytest.raises(CheckpointError, match=r"hostile\.safetensors: cannot resize the upsampler: upsampler\.up_conv"):
        load_model(path, scale=3, resize_upsampler=True)


# ------------------------------------------------------------------ weights no network should get
def _tiny_state():
    return _perturbed(build_model(dict(TINY), scale=2)).state_dict()


def _write(tmp_path, state, fmt):
    """``state`` as a paper .pth (params_ema) or as our .safetensors (with its config), as a hostile file has it."""
    if fmt == "pth":
        path = tmp_path / "w.pth"
        torch.save({"params_ema": state}, path)
        return path, {"config": dict(TINY)}
    config = build_model(dict(TINY), scale=2).config.to_json()
    return _ours_with(tmp_path, state, config, name="w.safetensors"), {}


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_weights_that_are_not_floating_point_are_refused_naming_key_and_dtype(tmp_path, fmt, dtype):
    """Integer and bool weights were cast to float32 silently (garbage, exit 0); complex ones only warned."""
    state = _tiny_state()
    state["body.0.0.attn.to_q"] = state["body.0.0.attn.to_q"].to(dtype)
    path, kwargs = _write(tmp_path, state, fmt)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"w\.{fmt}: 1 tensor is not floating point: body\.0\.0\.attn\.to_q "
                       rf"\({name}\)"):
        load_model(path, **kwargs)
    with pytest.raises(CheckpointError, match=name):
        read_checkpoint(path)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_non_finite_weights_are_refused_naming_the_first_key_and_the_count(tmp_path, fmt):
    """NaN/inf weights gave an all-black image with exit status 0."""
    state = _tiny_state()
    keys = list(state)
    first, later = keys[3], next(k for k in keys[4:] if k > keys[3])  # first in the state's and sorted order
    state[first].view(-1)[:2] = float("nan")
    state[first].view(-1)[2] = float("inf")
    state[later].view(-1)[0] = -float("inf")
    path, kwargs = _write(tmp_path, state, fmt)
    with pytest.raises(CheckpointError) as info:
        load_model(path, **kwargs)
    message = str(info.value)
    assert "4 non-finite weights (NaN or infinite) in 2 tensors" in message, message
    assert f"the first in {first} (2 NaN, 1 infinite of {state[first].numel()})" in message
    # float64 and half weights are floating point, and finite ones load
    state[first].view(-1)[:3] = 0.5
    state[later].view(-1)[0] = 0.5
    state[first] = state[first].double()
    path, kwargs = _write(tmp_path, state, fmt)
    assert next(load_model(path, **kwargs).parameters()).dtype == torch.float32


def test_an_unsafe_pickle_is_refused_without_torch_advice_to_load_it_anyway(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    for obj, named in ((Payload(), "system"), (_Unknown(), "_Unknown")):
        path = tmp_path / "evil.pth"
        torch.save({"params_ema": {"x": torch.zeros(1)}, "obj": obj}, path)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        message = str(info.value)
        assert "evil.pth: refused" in message and named in message and "not one" in message, message
        for advice in ("weights_only", "False", "trust", "safe_globals", "allowlist"):
            assert advice not in message, (advice, message)


class _Unknown:
    pass


def test_a_folder_or_fifo_given_as_checkpoint_says_what_it_is(tmp_path):
    with pytest.raises(CheckpointError, match=rf"{tmp_path}: is a folder, not a checkpoint file"):
        load_model(tmp_path, config="light")
    os.mkfifo(tmp_path / "pipe.pth")
    with pytest.raises(CheckpointError, match="is a FIFO"):  # not opened: reading it would block
        read_checkpoint(tmp_path / "pipe.pth")


@pytest.mark.parametrize("url", ["file:///models/x.pth", "ftp://example.invalid/x.pth", "s3://bucket/x.pth"])
def test_urls_of_other_schemes_say_what_they_are(url):
    scheme = url.split(":")[0]
    with pytest.raises(ValueError, match=f"is a {scheme}:// URL") as info:
        load_model(url, config="light")
    assert not isinstance(info.value, FileNotFoundError) and "not found" not in str(info.value)
    if scheme == "file":
        assert "give the file's path instead (/models/x.pth)" in str(info.value)


def test_dtype_may_be_named(tmp_path):
    path = save_model(build_model(dict(TINY), scale=2), tmp_path / "m.safetensors")
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("torch.float16", torch.float16)):
        assert next(load_model(path, dtype=name).parameters()).dtype == dtype
    for bad in ("float33", "int8", torch.int64, 3):
        with pytest.raises(ValueError, match="dtype must be a floating-point torch.dtype or its name"):
            load_model(path, dtype=bad)
    with pytest.raises(ValueError, match="unknown device 'foo'"):  # ribsr evaluate --device foo: a traceback
        load_model(path, device="foo")


def test_save_model_to_a_full_disk_is_an_os_error(tmp_path, monkeypatch):
    """safetensors reports a full disk with its own exception type (not an OSError: a traceback in the CLI)."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match=r"cannot write .*m\.safetensors: .*No space left on device.* MiB free"):
        save_model(build_model(dict(TINY), scale=2), tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- blending (--denoise)
def _two_models():
    torch.manual_seed(0)
    a = build_model("light", **TINY).eval()
    torch.manual_seed(1)
    b = build_model("light", **TINY).eval()
    return a, b


def test_blend_is_exact_at_the_ends_and_linear_between():
    from ribsr.checkpoint import blend_models

    a, b = _two_models()
    sa, sb = a.state_dict(), b.state_dict()
    for strength, want in ((0, sa), (0.0, sa), (1, sb), (1.0, sb)):
        got = blend_models(a, b, strength).state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    mid = blend_models(a, b, 0.25).state_dict()
    for k in sa:
        assert torch.allclose(mid[k], 0.75 * sa[k] + 0.25 * sb[k], atol=1e-6), k
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(blend_models(a, b, 1)(x), b(x))
    # the inputs are left as they were
    assert all(torch.equal(a.state_dict()[k], sa[k]) for k in sa)


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), "0.5", True])
def test_blend_strength_must_be_from_0_to_1(strength):
    from ribsr.checkpoint import blend_models

    a, b = _two_models()
    with pytest.raises(ValueError, match="strength must be a number from 0 to 1"):
        blend_models(a, b, strength)


def test_blend_refuses_different_networks():
    from ribsr.checkpoint import CheckpointError, blend_models

    a, _ = _two_models()
    other = build_model("light", **{**TINY, "dim": 12}).eval()
    with pytest.raises(CheckpointError, match="cannot blend models of different networks"):
        blend_models(a, other, 0.5)


def test_denoise_applies_to_the_bundled_pair_only(tmp_path):
    from ribsr.checkpoint import resolve_model

    with pytest.raises(ValueError, match="does not apply to model 'x.safetensors'"):
        resolve_model("x.safetensors", denoise=0.5)
    with pytest.raises(ValueError, match="with a config"):
        resolve_model("real", config="light", denoise=0.5)


def test_load_pretrained_takes_the_param_key_and_resizes_the_upsampler(tmp_path):
    from ribsr.checkpoint import load_pretrained

    x2 = build_model("light", n_blocks=1, scale=2)
    other = build_model("light", n_blocks=1, scale=2)
    pth = tmp_path / "paper.pth"
    torch.save({"params": x2.state_dict(), "params_ema": other.state_dict()}, pth)
    target = build_model("light", n_blocks=1, scale=2)
    load_pretrained(target, pth, param_key="params")  # not params_ema, which read_checkpoint prefers
    assert all(torch.equal(v, x2.state_dict()[k]) for k, v in target.state_dict().items())
    with pytest.raises(CheckpointError, match=r"no 'net_g' entry \(path.param_key_g\); it holds \['params', "):
        load_pretrained(target, pth, param_key="net_g")
    x3 = build_model("light", n_blocks=1, scale=3)
    load_pretrained(x3, pth)  # an x2 upsampler resized to x3; the rest as it was
    assert all(torch.equal(v, x2.state_dict()[k]) for k, v in x3.state_dict().items() if "upsampler" not in k)
    assert x3.state_dict()["upsampler.up_conv.weight"].shape[0] == 3 * 3 * 3
