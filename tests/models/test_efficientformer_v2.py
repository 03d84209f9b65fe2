"""EfficientFormerV2 backbone: timm parity, checkpoint layouts, any-size attention bias, fuse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from efyolo.errors import EfyoloError
from efyolo.models.attention_bias import resample_bias_table
from efyolo.models.efficientformer_v2 import (
    VARIANTS,
    Attention4D,
    Attention4DDownsample,
    build_efficientformer_v2,
    efficientformerv2_s0,
)
from efyolo.models.efficientformer_v2_weights import load_efficientformer_v2_weights
from efyolo.models.registry import BACKBONES

CHANNELS = {"s0": [48, 96, 176], "s1": [48, 120, 224], "s2": [64, 144, 288], "l": [80, 192, 384]}
# Published parameter counts with the classifier heads (snap-research README / paper): 3.5M,
# 6.1M, 12.6M, 26.1M. The models (theirs, timm's and ours) have 3.60M, 6.19M, 12.71M, 26.32M;
# the published numbers are rounded down by up to 3%.
PUBLISHED_PARAMS = {"s0": 3.5e6, "s1": 6.1e6, "s2": 12.6e6, "l": 26.1e6}


@torch.no_grad()
def randomise(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere: layer scales, attention biases, norms, BN statistics."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g)

    for name, p in model.named_parameters():
        if name.endswith("gamma"):
            p.copy_(randn(p) * 0.1)
        elif name.endswith("attention_biases"):
            p.copy_(randn(p))
        elif p.dim() == 1:  # biases and BN affines
            p.add_(randn(p) * 0.1)
        else:  # unit-gain weights, so every branch matters to the output
            p.copy_(randn(p) / p[0].numel() ** 0.5)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b.copy_(randn(b) * 0.1)
        elif name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)


def head_params(width: int) -> dict[str, torch.Tensor]:
    """What a classification checkpoint holds beyond the backbone: final norm and two heads."""
    return {
        "norm.weight": torch.ones(width),
        "norm.bias": torch.zeros(width),
        "norm.running_mean": torch.zeros(width),
        "norm.running_var": torch.ones(width),
        "head.weight": torch.zeros(1000, width),
        "head.bias": torch.zeros(1000),
        "head_dist.weight": torch.zeros(1000, width),
        "head_dist.bias": torch.zeros(1000),
    }


def official_bias_index(resolution: int, stride: int = 1) -> torch.Tensor:
    """The official code's construction: offsets numbered in order of first appearance, queries
    of a strided grid at key positions ``stride * q``."""
    keys = list(itertools.product(range(resolution), range(resolution)))
    queries = list(itertools.product(range(math.ceil(resolution / stride)), repeat=2))
    offsets: dict[tuple[int, int], int] = {}
    idxs = [
        offsets.setdefault((abs(stride * q[0] - k[0]), abs(stride * q[1] - k[1])), len(offsets))
        for q in queries
        for k in keys
    ]
    return torch.tensor(idxs).view(len(queries), len(keys))


def _official_inner(rest: str) -> str:
    """timm -> official names below a block or the downsample attention (test's own inverse)."""
    rest = {"ls1.gamma": "layer_scale_1", "ls2.gamma": "layer_scale_2"}.get(rest, rest)
    for ours, theirs in [
        ("mlp.fc1.conv.", "mlp.fc1."),
        ("mlp.fc1.bn.", "mlp.norm1."),
        ("mlp.mid.conv.", "mlp.mid."),
        ("mlp.mid.bn.", "mlp.mid_norm."),
        ("mlp.fc2.conv.", "mlp.fc2."),
        ("mlp.fc2.bn.", "mlp.norm2."),
    ]:
        if rest.startswith(ours):
            return theirs + rest[len(ours) :]
    prefix = "token_mixer." if rest.startswith("token_mixer.") else ""
    parts = rest[len(prefix) :].split(".")
    if parts[:2] == ["q", "local"]:
        parts = ["q", "local", "0"] + parts[2:]
    elif parts[:2] == ["q", "proj"]:
        parts = ["q", "proj", {"conv": "0", "bn": "1"}[parts[2]]] + parts[3:]
    elif parts[0] in ("q", "k", "v", "v_local", "stride_conv"):
        parts = [parts[0], {"conv": "0", "bn": "1"}[parts[1]]] + parts[2:]
    elif parts[0] == "proj":
        parts = ["proj", {"conv": "1", "bn": "2"}[parts[1]]] + parts[2:]
    return prefix + ".".join(parts)


def timm_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm layout -> the official one: names, (C, 1, 1) layer scales, attention_bias_idxs."""
    stem = {"conv1.conv": "0", "conv1.bn": "1", "conv2.conv": "3", "conv2.bn": "4"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "stem":
            key = f"patch_embed.{stem['.'.join(parts[1:3])]}.{'.'.join(parts[3:])}"
        elif parts[0] == "stages":
            s = int(parts[1])
            if parts[2] == "blocks":
                key = f"network.{2 * s}.{parts[3]}.{_official_inner('.'.join(parts[4:]))}"
            elif parts[3] == "conv":  # downsample conv + BN
                names = ("conv", "bn") if s == 3 else ("proj", "norm")
                part = names[0] if parts[4] == "conv" else names[1]
                key = f"network.{2 * s - 1}.{part}.{'.'.join(parts[5:])}"
            else:  # downsample.attn
                key = f"network.{2 * s - 1}.attn.{_official_inner('.'.join(parts[4:]))}"
        elif parts[0] == "head_dist":
            key = "dist_head." + ".".join(parts[1:])
        if key.endswith(("layer_scale_1", "layer_scale_2")):
            value = value.view(-1, 1, 1)
        out[key] = value
        if key.endswith("attention_biases"):  # the official persistent index buffer
            downsample = ".attn." in key
            r = 14 if downsample else 7
            assert value.shape[1] == r * r
            out[key.replace("attention_biases", "attention_bias_idxs")] = official_bias_index(
                r, 2 if downsample else 1
            )
    return out


def timm_features_state(ref: nn.Module) -> dict[str, torch.Tensor]:
    """State dict of a timm features_only model (``stem_conv1``, ``stages_0``) in model names."""
    out = {}
    for k, v in ref.state_dict().items():
        head, _, rest = k.partition(".")
        out[head.replace("_", ".", 1) + "." + rest] = v  # stem_conv1 -> stem.conv1
    return out


@pytest.fixture(scope="module")
def timm():
    return pytest.importorskip("timm")


def _features(timm, variant: str, **kwargs) -> nn.Module:
    return timm.create_model(
        f"efficientformerv2_{variant}", pretrained=False, features_only=True,
        out_indices=(1, 2, 3), **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize(
    "variant", ["s0", "s1", "s2", "l"]
)
def test_timm_parity_all_layouts(timm, variant, tmp_path):
    """Our features == timm features_only at 224 from a timm .pth, a timm .safetensors (heads
    included) and an official-layout file; parameter counts match timm and the published ones."""
    from safetensors.torch import save_file

    ref = _features(timm, variant).eval()
    randomise(ref, seed=len(variant) + ord(variant[-1]))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)
    width = VARIANTS[variant][1][-1]
    state = {**timm_features_state(ref), **head_params(width)}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    official = timm_to_official(state)
    assert "network.5.attn.q.local.0.weight" in official and "dist_head.weight" in official
    assert official["network.0.0.layer_scale_2"].shape == (32 if variant != "l" else 40, 1, 1)
    paths = [tmp_path / "timm.pth", tmp_path / "timm.safetensors", tmp_path / "official.pth"]
    torch.save(state, paths[0])
    save_file(state, str(paths[1]))
    torch.save({"model": official, "epoch": 450}, paths[2])

    model = build_efficientformer_v2(variant).eval()
    assert model.channels == CHANNELS[variant] and model.strides == [8, 16, 32]
    for path in paths:
        with torch.no_grad():  # must be overwritten by every load
            model.stages[3].downsample.attn.attention_biases.zero_()
            model.stages[2].blocks[-1].ls1.gamma.zero_()
        load_efficientformer_v2_weights(model, path)
        with torch.no_grad():
            got = model(x)
        assert [t.shape for t in got] == [t.shape for t in expected]
        for ours, theirs in zip(got, expected):
            assert (ours - theirs).abs().max().item() <= 1e-4, path.name

    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in ref.parameters())
    full = timm.create_model(f"efficientformerv2_{variant}", pretrained=False)
    with_heads = n_params + 2 * width + 2 * (width * 1000 + 1000)
    assert with_heads == sum(p.numel() for p in full.parameters())
    assert abs(with_heads / PUBLISHED_PARAMS[variant] - 1) < 0.035, with_heads


def test_timm_parity_non_square_with_resampled_tables(timm):
    """At 256x320 timm builds tables for its own grids (8x10 and, for the downsample, 16x20).
    Given our resampled tables it must compute what we compute: every reshape, the strided
    query/key offsets and the upsample are right on non-square grids."""
    model = efficientformerv2_s0().eval()
    randomise(model, seed=11)
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        expected = model(x)
    state = {}
    for name, m in model.named_modules():
        if isinstance(m, (Attention4D, Attention4DDownsample)):
            h, w = m.last_grid
            r = m.resolution
            state[f"{name}.attention_biases"] = resample_bias_table(
                m.attention_biases.detach().view(-1, r, r), h, w
            ).flatten(1)
    assert model.stages[3].downsample.attn.last_grid == (16, 20)
    assert model.stages[2].blocks[-1].token_mixer.last_grid == (8, 10)  # after the stride conv
    assert model.stages[3].blocks[-1].token_mixer.last_grid == (8, 10)
    ref = _features(timm, "s0", img_size=(256, 320)).eval()
    ours = {**model.state_dict(), **state}
    theirs = {}
    for k in ref.state_dict():
        head, _, rest = k.partition(".")
        theirs[k] = ours[head.replace("_", ".", 1) + "." + rest]
    ref.load_state_dict(theirs)
    with torch.no_grad():
        for a, b in zip(ref(x), expected):
            assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4


def test_official_bias_numbering_is_ours():
    """Official tables are numbered by first appearance; that is |dy| * R + |dx| (ours)."""
    attn = Attention4D(64)
    ds = Attention4DDownsample(48, 64)
    with torch.no_grad():
        attn.attention_biases.normal_()
        ds.attention_biases.normal_()
    assert torch.equal(attn.compute_bias(7, 7), attn.attention_biases[:, official_bias_index(7)])
    assert torch.equal(
        ds.compute_bias(14, 14), ds.attention_biases[:, official_bias_index(14, 2)]
    )  # exact at 224: no interpolation


def test_resampled_bias_corners():
    ds = Attention4DDownsample(48, 64)
    with torch.no_grad():
        ds.attention_biases.normal_()
    table = ds.attention_biases.detach().view(8, 14, 14)
    h, w = 24, 40  # 384x640 at stride 16
    bias = ds.compute_bias(h, w)
    assert bias.shape == (8, (h // 2) * (w // 2), h * w)
    assert torch.allclose(bias[:, 0, 0], table[:, 0, 0], atol=1e-6)  # query 0 on key 0
    assert torch.allclose(bias[:, 0, -1], table[:, -1, -1], atol=1e-5)  # farthest key
    # last query sits at key (h-2, w-2): offset (0, 0) to that key
    assert torch.allclose(bias[:, -1, (h - 2) * w + (w - 2)], table[:, 0, 0], atol=1e-6)


def test_registry_and_declared_shapes():
    names = {f"efficientformerv2_{v}" for v in VARIANTS}
    assert names <= set(BACKBONES.names())
    model = BACKBONES.get("efficientformerv2_s0")()
    assert model.channels == [48, 96, 176] and model.strides == [8, 16, 32]
    assert model.name == "efficientformerv2_s0" and model.fused is False
    full = efficientformerv2_s0(out_indices=(0, 1, 2, 3))
    assert full.channels == [32, 48, 96, 176] and full.strides == [4, 8, 16, 32]
    short = efficientformerv2_s0(out_indices=(1, 2))
    assert [o.shape[1] for o in short(torch.zeros(1, 3, 64, 64))] == [48, 96]
    with pytest.raises(EfyoloError, match="depth"):
        efficientformerv2_s0(depth=3)
    with pytest.raises(EfyoloError, match="out_indices"):
        efficientformerv2_s0(out_indices=(4,))


def test_variant_structure():
    """Attention blocks, stride-2 attention in stage 2, expansion ratios, drop-path defaults."""
    for variant, (depths, widths, num_vit, ratios, dpr) in VARIANTS.items():
        model = build_efficientformer_v2(variant)
        for s, stage in enumerate(model.stages):
            attn = [b.token_mixer is not None for b in stage.blocks]
            n = num_vit if s >= 2 else 0
            assert attn == [False] * (depths[s] - n) + [True] * n, (variant, s)
            assert [b.mlp.fc1.conv.out_channels // widths[s] for b in stage.blocks] == list(ratios[s])
            for b in stage.blocks:
                if b.token_mixer is not None:
                    assert (b.token_mixer.stride_conv is not None) == (s == 2)
        assert model.stages[3].downsample.attn is not None
        assert model.stages[2].downsample.attn is None
        last = model.stages[3].blocks[-1].drop_path2
        assert getattr(last, "p", 0.0) == pytest.approx(dpr), variant
    assert VARIANTS["s0"][3][2] == (4, 3, 3, 3, 4, 4) and VARIANTS["s0"][3][3] == (4, 3, 3, 4)
    model = efficientformerv2_s0(drop_path_rate=0.2)
    assert model.stages[3].blocks[-1].drop_path2.p == pytest.approx(0.2)
    model.train()
    assert all(torch.isfinite(o).all() for o in model(torch.randn(2, 3, 64, 64)))


@pytest.mark.parametrize(
    "variant, sizes",
    [
        ("s0", [(224, 224), (256, 320), (384, 640), (640, 640)]),
        ("s1", [(224, 224), (256, 320), (384, 640)]),
        ("s2", [(224, 224), (256, 320), (384, 640)]),
        ("l", [(224, 224), (256, 320), (384, 640)]),
        pytest.param("s0", [(1280, 1280)], marks=pytest.mark.slow),
    ],
)
def test_declared_shapes_any_multiple_of_32(variant, sizes):
    model = build_efficientformer_v2(variant).eval()
    randomise(model, seed=5)
    with torch.no_grad():
        for h, w in sizes:
            feats = model(torch.randn(1, 3, h, w))
            assert [tuple(f.shape) for f in feats] == [
                (1, c, h // s, w // s) for c, s in zip(model.channels, model.strides)
            ], (h, w)
            assert all(torch.isfinite(f).all() for f in feats)


def test_stride_attention_restores_odd_grids():
    attn = Attention4D(32, stride=2).eval()
    with torch.no_grad():
        assert attn(torch.randn(1, 32, 7, 9)).shape == (1, 32, 7, 9)
    ds = Attention4DDownsample(32, 48).eval()
    with torch.no_grad():
        assert ds(torch.randn(1, 32, 7, 9)).shape == (1, 48, 4, 5)


@pytest.mark.parametrize("size", [(100, 224), (224, 200), (16, 32)])
def test_bad_size_raises(size):
    with pytest.raises(EfyoloError, match=f"{size[0]}x{size[1]}"):
        efficientformerv2_s0()(torch.zeros(1, 3, *size))


def _attentions(model: nn.Module) -> list:
    return [m for m in model.modules() if isinstance(m, (Attention4D, Attention4DDownsample))]


def test_eval_bias_cache_is_used():
    model = efficientformerv2_s0().eval()
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        model(x)
        cached = {id(m): dict(m._bias_cache) for m in _attentions(model)}
        assert all(len(c) == 1 for c in cached.values())
        model(x)
    for m in _attentions(model):
        ((key, (_stamp, bias)),) = m._bias_cache.items()
        assert bias is cached[id(m)][key][1]  # reused, not recomputed
        assert key[:2] == m.last_grid
    model.train()
    assert all(not m._bias_cache for m in _attentions(model))


def test_train_mode_gives_gradients_to_both_tables():
    model = efficientformerv2_s0()
    randomise(model, seed=2)
    model.train()
    model(torch.randn(2, 3, 64, 96))[-1].square().mean().backward()
    for m in (
        model.stages[2].blocks[-1].token_mixer,  # stride-2 Attention4D (2x3 grid)
        model.stages[3].blocks[-1].token_mixer,  # Attention4D (2x3 grid)
        model.stages[3].downsample.attn,  # Attention4DDownsample (4x6 key grid)
    ):
        grad = m.attention_biases.grad
        assert grad is not None and grad.abs().sum() > 0
        assert not m._bias_cache


@pytest.mark.parametrize("variant", ["s0", "s1"])
def test_fuse_keeps_outputs(variant):
    model = build_efficientformer_v2(variant)
    randomise(model, seed=3)
    model.eval()
    x = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        before = model(x)
        assert model.fuse() is model and model.fused
        after = model(x)
    assert model.fuse() is model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.scale == 1.0 for m in _attentions(model))
    assert not any(n.endswith("gamma") for n, _ in model.named_parameters())
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().clamp_min(1.0).item()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.* is deprecated:FutureWarning")
def test_jit_trace_of_fused_model_matches_eager():
    model = efficientformerv2_s0()
    randomise(model, seed=4)
    model.eval().fuse()
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        for a, b in zip(traced(x), model(x)):
            assert torch.allclose(a, b, atol=1e-5)


@pytest.fixture(scope="module")
def s1_state():
    return build_efficientformer_v2("s1").state_dict()


def test_wrong_variant_names_keys_and_shapes(tmp_path, s1_state):
    path = tmp_path / "s1.pth"
    torch.save(s1_state, path)
    with pytest.raises(EfyoloError) as err:
        efficientformerv2_s0(weights=path)
    message = str(err.value)
    assert str(path) in message and "efficientformerv2_s0" in message and "timm layout" in message
    assert (
        "stages.2.downsample.conv.conv.weight (120, 48, 3, 3) in file vs (96, 48, 3, 3) in model"
        in message
    )
    assert "unexpected keys: stages.0.blocks.2." in message

    official = tmp_path / "s1_official.pth"
    torch.save({"model": timm_to_official(s1_state)}, official)
    with pytest.raises(EfyoloError) as err:
        efficientformerv2_s0(weights=official)
    message = str(err.value)
    assert str(official) in message and "official layout" in message
    assert "network.3.proj.weight (120, 48, 3, 3) in file vs (96, 48, 3, 3) in model" in message
    assert "network.0.0.layer_scale_2" not in message  # same (32, 1, 1) shape: fits
    assert "unexpected keys: network.0.2." in message


def test_missing_and_unexpected_keys_named(tmp_path):
    state = efficientformerv2_s0().state_dict()
    del state["stages.3.downsample.attn.q.local.weight"]
    state["stages.3.blocks.3.extra"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(
        EfyoloError,
        match=r"missing keys: stages\.3\.downsample\.attn\.q\.local\.weight.*"
        r"unexpected keys: stages\.3\.blocks\.3\.extra",
    ):
        efficientformerv2_s0(weights=path)


def test_files_without_matching_keys(tmp_path):
    other = tmp_path / "other.pth"
    torch.save({"model": {"conv.weight": torch.zeros(2)}}, other)
    with pytest.raises(EfyoloError, match=f"{other}.*not EfficientFormerV2 weights.*conv.weight"):
        efficientformerv2_s0(weights=other)
    v1 = tmp_path / "v1_l0.pth"  # EfficientFormer (V1): same prefixes, nothing fits
    torch.save(BACKBONES.get("efficientformer_l0")().state_dict(), v1)
    with pytest.raises(EfyoloError) as err:
        efficientformerv2_s0(weights=v1)
    message = str(err.value)
    assert "missing keys: stem.conv1.conv.weight" in message
    assert "unexpected keys: stem.conv1.weight" in message
    with pytest.raises(EfyoloError, match="not found"):
        efficientformerv2_s0(weights=tmp_path / "absent.pth")


def test_no_loading_after_fuse(tmp_path):
    model = efficientformerv2_s0()
    path = tmp_path / "ok.pth"
    torch.save(model.state_dict(), path)
    model.load_pretrained(path)  # its own weights load fine
    with pytest.raises(EfyoloError, match="before fuse"):
        model.eval().fuse().load_pretrained(path)
