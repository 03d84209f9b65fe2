"""EfficientFormer backbone: timm parity, checkpoint layouts, any-size attention bias, fuse."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from efyolo.errors import EfyoloError
from efyolo.models.efficientformer import (
    VARIANTS,
    Attention,
    build_efficientformer,
    efficientformer_l1,
    offset_index,
)
from efyolo.models.efficientformer_weights import load_efficientformer_weights
from efyolo.models.registry import BACKBONES

# Published numbers with the classifier heads (the snap-research EfficientFormer README).
PARAMS_WITH_HEADS = {"l1": 12_289_928, "l3": 31_406_000, "l7": 82_229_328}  # 12.29M, 31.41M, 82.23M
GMACS_224 = {"l1": 1.30, "l3": 3.93, "l7": 10.17}
CHANNELS = {"l1": [96, 224, 448], "l3": [128, 320, 512], "l7": [192, 384, 768]}


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
        elif p.dim() == 1:  # biases and norm affines
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
        "head.weight": torch.zeros(1000, width),
        "head.bias": torch.zeros(1000),
        "head_dist.weight": torch.zeros(1000, width),
        "head_dist.bias": torch.zeros(1000),
    }


def timm_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of the loader's official->timm key map, written independently for the test."""
    stem = {
        "stem.conv1.": "patch_embed.0.",
        "stem.norm1.": "patch_embed.1.",
        "stem.conv2.": "patch_embed.3.",
        "stem.norm2.": "patch_embed.4.",
    }
    out = {}
    for key, value in state.items():
        for old, new in stem.items():
            key = key.replace(old, new)
        parts = key.split(".")
        if parts[0] == "stages":
            s = int(parts[1])
            if parts[2] == "blocks":
                parts = ["network", str(2 * s)] + parts[3:]
            else:  # downsample.conv / downsample.norm
                parts = [
                    "network",
                    str(2 * s - 1),
                    "proj" if parts[3] == "conv" else "norm",
                ] + parts[4:]
        key = (
            ".".join(parts)
            .replace("ls1.gamma", "layer_scale_1")
            .replace("ls2.gamma", "layer_scale_2")
        )
        out[key.replace("head_dist.", "dist_head.")] = value
    return out


@pytest.fixture(scope="module", params=["l1", "l3", "l7"])
def timm_reference(request, tmp_path_factory):
    """(variant, timm features_only model with random weights, its checkpoint in timm layout)."""
    timm = pytest.importorskip("timm")
    variant = request.param
    ref = timm.create_model(
        f"efficientformer_{variant}", pretrained=False, features_only=True, out_indices=(1, 2, 3)
    )
    randomise(ref, seed=len(variant) + ord(variant[1]))
    ref.eval()
    state = {k.removeprefix("model."): v for k, v in ref.state_dict().items()}
    state.update(head_params(VARIANTS[variant][1][-1]))
    path = tmp_path_factory.mktemp(variant) / f"efficientformer_{variant}_timm.pth"
    torch.save(state, path)
    return variant, ref, path


def test_registry_and_declared_shapes():
    assert {"efficientformer_l1", "efficientformer_l3", "efficientformer_l7"} <= set(
        BACKBONES.names()
    )
    model = BACKBONES.get("efficientformer_l1")()
    assert model.channels == [96, 224, 448] and model.strides == [8, 16, 32]
    full = efficientformer_l1(out_indices=(0, 1, 2, 3))
    assert full.channels == [48, 96, 224, 448] and full.strides == [4, 8, 16, 32]
    with pytest.raises(EfyoloError, match="depth"):
        efficientformer_l1(depth=3)


def test_timm_parity_both_layouts(timm_reference, tmp_path):
    """Our features == timm features_only (which skips the final norm) at 224, both file layouts;
    parameter count and GMACs match the published numbers."""
    variant, ref, timm_path = timm_reference
    width = VARIANTS[variant][1][-1]
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ref(x)

    official_path = tmp_path / "official.pth"
    timm_state = {k.removeprefix("model."): v for k, v in ref.state_dict().items()}
    official = timm_to_official({**timm_state, **head_params(width)})
    assert "network.0.0.layer_scale_1" in official and "dist_head.weight" in official
    torch.save({"model": official, "epoch": 300}, official_path)
    del official, timm_state

    model = build_efficientformer(variant).eval()
    assert model.channels == CHANNELS[variant] and model.strides == [8, 16, 32]
    counter = FlopCounterMode(display=False)
    for path in (timm_path, official_path):
        with torch.no_grad():
            model.stages[3].blocks[-1].token_mixer.attention_biases.zero_()  # must be overwritten
        load_efficientformer_weights(model, path)
        with torch.no_grad(), counter:
            got = model(x)
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in expected]
        for ours, theirs in zip(got, expected):
            assert (ours - theirs).abs().max().item() <= 1e-4, path.name

    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == sum(p.numel() for p in ref.parameters())
    assert n_params + 2 * width + 2 * (width * 1000 + 1000) == PARAMS_WITH_HEADS[variant]

    # the counter holds the last forward (it resets on entry); + the two classifier heads.
    # flop_counter counts convs and matmuls only; the published numbers count slightly more.
    gmacs = (counter.get_total_flops() / 2 + 2 * width * 1000) / 1e9
    assert abs(gmacs - GMACS_224[variant]) / GMACS_224[variant] < 0.01, gmacs


def test_safetensors_layout(tmp_path):
    """timm layout (= our names, checked against timm above) in a .safetensors file, with heads."""
    from safetensors.torch import save_file

    source = efficientformer_l1()
    randomise(source, seed=6)
    source.eval()
    path = tmp_path / "model.safetensors"
    save_file({**source.state_dict(), **head_params(448)}, str(path))
    model = efficientformer_l1(weights=path).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), source(x)))


def test_wrong_architecture_names_file_and_key(tmp_path):
    path = tmp_path / "l3.pth"
    torch.save(build_efficientformer("l3").state_dict(), path)
    with pytest.raises(EfyoloError) as err:
        efficientformer_l1(weights=path)
    message = str(err.value)
    assert str(path) in message and "efficientformer_l1" in message
    assert "stem.conv1.weight (32, 3, 3, 3) in file vs (24, 3, 3, 3) in model" in message
    assert "unexpected keys: stages.0.blocks.3." in message


def test_missing_and_unexpected_keys_named(tmp_path):
    state = efficientformer_l1().state_dict()
    del state["stages.2.blocks.5.mlp.fc1.weight"]
    state["stages.3.blocks.4.extra"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(
        EfyoloError,
        match=r"missing keys: stages\.2\.blocks\.5\.mlp\.fc1\.weight.*"
        r"unexpected keys: stages\.3\.blocks\.4\.extra",
    ):
        efficientformer_l1(weights=path)


@pytest.mark.parametrize(
    "name, content",
    [
        ("notes.pth", b"this is not a checkpoint\n"),
        ("garbage.safetensors", b"\x00\x01garbage"),
        ("list.pth", [torch.zeros(2)]),
        ("other.pth", {"model": {"conv.weight": torch.zeros(2)}}),
    ],
)
def test_non_checkpoint_files_fail_clearly(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(EfyoloError, match=str(path).replace("\\", "\\\\")):
        load_efficientformer_weights(efficientformer_l1(), path)


def test_missing_file_and_fused_model(tmp_path):
    with pytest.raises(EfyoloError, match="not found"):
        efficientformer_l1(weights=tmp_path / "absent.pth")
    path = tmp_path / "ok.pth"
    model = efficientformer_l1()
    torch.save(model.state_dict(), path)
    load_efficientformer_weights(model, path)  # its own weights load fine
    with pytest.raises(EfyoloError, match="before fuse"):
        load_efficientformer_weights(model.eval().fuse(), path)


@pytest.mark.parametrize("size", [(256, 320), (384, 640), (640, 640), (32, 64)])
def test_any_multiple_of_32(size):
    model = efficientformer_l1().eval()
    h, w = size
    with torch.no_grad():
        feats = model(torch.randn(1, 3, h, w))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, h // s, w // s) for c, s in zip(model.channels, model.strides)
    ]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("size", [(100, 224), (224, 200), (16, 32)])
def test_bad_size_raises(size):
    with pytest.raises(EfyoloError, match=f"{size[0]}x{size[1]}"):
        efficientformer_l1()(torch.zeros(1, 3, *size))


def official_bias_index(resolution: int) -> torch.Tensor:
    """The original code's construction: offsets numbered in order of first appearance."""
    points = list(itertools.product(range(resolution), range(resolution)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = []
    for p1 in points:
        for p2 in points:
            off = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
            idxs.append(offsets.setdefault(off, len(offsets)))
    return torch.tensor(idxs).view(len(points), len(points))


def test_bias_at_7x7_is_the_plain_table_gather():
    attn = Attention(448)
    with torch.no_grad():
        attn.attention_biases.normal_()
    expected = attn.attention_biases[:, official_bias_index(7)]
    assert torch.equal(attn.compute_bias(7, 7), expected)


def test_bias_resampled_for_other_grids():
    attn = Attention(448)
    with torch.no_grad():
        attn.attention_biases.normal_()
    table = attn.attention_biases.detach().view(8, 7, 7)
    for h, w in [(20, 20), (12, 20), (7, 10), (3, 5), (1, 2)]:
        bias = attn.compute_bias(h, w)
        assert bias.shape == (8, h * w, h * w)
        assert torch.allclose(bias[:, 0, 0], table[:, 0, 0], atol=1e-6)  # offset (0, 0)
        last = h * w - 1  # first and last token: offset (h-1, w-1) -> the table's far corner
        if h > 1:
            assert torch.allclose(bias[:, 0, last], table[:, 6, 6], atol=1e-5)
        assert torch.equal(bias, bias.transpose(1, 2))  # |offset| is symmetric
        if h == 7:  # an axis of unchanged size is reproduced exactly
            assert torch.allclose(bias[:, 0, : w * 7 : w], table[:, :, 0], atol=1e-6)
    assert torch.equal(
        offset_index(2, 3),
        torch.tensor(
            [
                [0, 1, 2, 3, 4, 5],
                [1, 0, 1, 4, 3, 4],
                [2, 1, 0, 5, 4, 3],
                [3, 4, 5, 0, 1, 2],
                [4, 3, 4, 1, 0, 1],
                [5, 4, 3, 2, 1, 0],
            ]
        ),
    )


def test_gradients_reach_the_table_in_train_mode():
    model = efficientformer_l1().train()
    model(torch.randn(2, 3, 64, 96))[-1].square().mean().backward()  # 2x3 token grid
    grad = model.stages[3].blocks[4].token_mixer.attention_biases.grad
    assert grad is not None and grad.abs().sum() > 0


def test_bias_cache_follows_the_table():
    attn = Attention(64).eval()
    with torch.no_grad():
        attn.attention_biases.normal_()
        first = attn.get_bias(4, 6, torch.float32)
        assert attn.get_bias(4, 6, torch.float32) is first  # cached
        attn.attention_biases.mul_(2.0)  # in-place change bumps the version counter
        second = attn.get_bias(4, 6, torch.float32)
        assert torch.allclose(second, 2 * first) and torch.equal(second, attn.compute_bias(4, 6))
        attn.load_state_dict({**attn.state_dict(), "attention_biases": torch.zeros(8, 49)})
        assert attn.get_bias(4, 6, torch.float32).abs().sum() == 0
        attn.attention_biases.data = torch.ones(8, 49)  # storage replaced
        assert torch.allclose(attn.get_bias(4, 6, torch.float32), torch.ones(8, 24, 24))
    attn.train()
    assert not attn._bias_cache
    # in eval mode with autograd on, the bias is recomputed so the table still gets gradients
    attn.eval()
    attn.get_bias(4, 6, torch.float32).sum().backward()
    assert attn.attention_biases.grad is not None


@pytest.mark.parametrize("size", [(224, 224), (256, 320)])
def test_fuse_keeps_outputs(size):
    model = efficientformer_l1()
    randomise(model, seed=3)
    model.eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        before = model(x)
        model.fuse()
        after = model(x)
    assert model.fuse() is model
    assert not any(isinstance(m, (nn.BatchNorm2d,)) for m in model.modules())
    for a, b in zip(before, after):
        # 1e-5 relative to the map's scale (|a| reaches ~5 here): fp32 rounding of the unfused
        # model itself is ~1e-5 at that scale, measured against a float64 forward.
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().clamp_min(1.0).item()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.trace.* is deprecated:FutureWarning")
def test_jit_trace_matches_eager():
    model = efficientformer_l1().eval()
    randomise(model, seed=4)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        for a, b in zip(traced(x), model(x)):
            assert torch.allclose(a, b, atol=1e-6)


def test_drop_path_rate():
    model = efficientformer_l1(drop_path_rate=0.2)
    last = model.stages[3].blocks[4].drop_path
    assert pytest.approx(last.p) == 0.2
    assert isinstance(model.stages[0].blocks[0].drop_path1, nn.Identity)
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert all(torch.isfinite(o).all() for o in out)


def test_n0_is_l0_without_the_stride4_block_and_with_lighter_mlps():
    n0, l0 = BACKBONES.get("efficientformer_n0")(), BACKBONES.get("efficientformer_l0")()
    assert n0.channels == l0.channels == [48, 112, 224] and n0.strides == [8, 16, 32]
    assert len(n0.stages[0].blocks) == 0  # the stem feeds stage 1's downsample directly
    hidden = [[b.mlp.fc1.weight.shape[0] for b in s.blocks if hasattr(b, "mlp")] for s in n0.stages]
    assert hidden == [[], [96], [336, 336, 336], [672, 448]]  # Meta4D x2/x3, Meta3D x2
    attn = n0.stages[3].blocks[-1].token_mixer
    assert (attn.num_heads, attn.key_dim, attn.val_dim) == (4, 32, 64)
    assert attn.qkv.out_features == 4 * (32 + 32 + 64) and attn.proj.in_features == 256
    x = torch.zeros(1, 3, 640, 640)
    flops = []
    for model in (n0, l0):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
        flops.append(counter.get_total_flops())
    assert flops[0] < 0.65 * flops[1]  # 2.17 vs 3.61 GFLOPs at 640 (2 x MACs)


def assert_fuse_keeps_outputs(model: nn.Module, size: tuple[int, int], seed: int) -> None:
    randomise(model, seed=seed)
    model.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    for a, b in zip(before, after):
        assert (a - b).abs().max().item() <= 1e-5 * a.abs().max().clamp_min(1.0).item()


def test_n0_fuse_keeps_outputs_at_any_size():
    assert_fuse_keeps_outputs(BACKBONES.get("efficientformer_n0")(), (256, 320), seed=5)


def test_mlp_ratios_must_match_the_stages():
    from efyolo.models.efficientformer import EfficientFormer

    with pytest.raises(EfyoloError, match="3 mlp_ratios for 4 stages"):
        EfficientFormer((1, 1, 1, 1), (8, 16, 32, 64), 1, mlp_ratios=(4, 4, 4))


def test_rep_dw_mixer_folds_into_one_depthwise_conv():
    from efyolo.models.efficientformer import (
        VARIANT_OPTIONS,
        EfficientFormer,
        Meta4D,
        RepDWMixer,
    )

    options = {**VARIANT_OPTIONS["n0"], "token_mixer": "repdw"}
    model = EfficientFormer(*VARIANTS["n0"], **options)
    blocks = [b for b in model.modules() if isinstance(b, Meta4D)]
    assert len(blocks) == 5 and all(isinstance(b.token_mixer, RepDWMixer) for b in blocks)
    assert_fuse_keeps_outputs(model, (224, 288), seed=6)
    for b in blocks:  # identity + ls1 * BN(dwconv) is one depthwise conv with a bias, nothing else
        mixer = b.token_mixer
        assert isinstance(mixer, nn.Conv2d) and mixer.groups == mixer.in_channels and mixer.bias is not None
        assert isinstance(b.ls1, nn.Identity)
    with pytest.raises(EfyoloError, match="unknown token_mixer 'conv'"):
        Meta4D(8, token_mixer="conv")


@pytest.mark.filterwarnings("ignore:Constant folding - Only steps=1:UserWarning")
def test_rep_dw_mixer_backbone_runs_in_onnx_runtime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from efyolo.export.fold import materialize_attention_bias, rewrite_pool_mixers
    from efyolo.export.onnx import export_onnx
    from efyolo.models.efficientformer import VARIANT_OPTIONS, EfficientFormer

    model = EfficientFormer(*VARIANTS["n0"], **{**VARIANT_OPTIONS["n0"], "token_mixer": "repdw"})
    randomise(model, seed=7)
    model.eval().fuse()
    assert rewrite_pool_mixers(model) == 0  # nothing to rewrite: each mixer is one depthwise conv
    x = torch.randn(1, 3, 128, 160)
    materialize_attention_bias(model, (128, 160))

    class First(nn.Module):  # the exporter writes one output; the stride-32 map, after every block
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.inner(t)[-1]

    path = export_onnx(First(model).eval(), x, tmp_path / "m.onnx", {"names": "{0: 'a'}"})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)[-1]
    assert (torch.from_numpy(out) - expected).abs().max().item() <= 1e-4 * expected.abs().max().clamp_min(1.0).item()


def test_attention_probabilities_are_never_subnormal():
    """Sharp (trained) attention gave subnormal probabilities, 10-100x slower on x86 CPUs."""
    from efyolo.models.attention_bias import softmax_without_subnormals

    tiny = torch.finfo(torch.float32).tiny
    logits = torch.randn(2, 4, 400, 400) * 40.0  # rows spanning hundreds: exp underflows
    plain, safe = logits.softmax(-1), softmax_without_subnormals(logits)
    assert ((plain > 0) & (plain < tiny)).any()  # the case exists
    assert not ((safe > 0) & (safe < tiny)).any()
    assert (safe - plain).abs().max().item() < 1e-29
    assert torch.allclose(safe.sum(-1), torch.ones(2, 4, 400))


def test_every_attention_uses_the_subnormal_free_softmax(monkeypatch):
    import efyolo.models.bottleneck_transformer as bot
    import efyolo.models.efficientformer as v1
    import efyolo.models.efficientformer_v2 as v2
    from efyolo.models import build_model
    from efyolo.models.attention_bias import softmax_without_subnormals

    calls = []

    def recording(logits, dim=-1):
        calls.append(tuple(logits.shape))
        return softmax_without_subnormals(logits, dim)

    for module in (v1, v2, bot):
        monkeypatch.setattr(module, "softmax_without_subnormals", recording)
    with torch.no_grad():
        for name in ("yolov5n-efficientformer-n0", "yolov5n-efficientformerv2-s0", "yolov5n-bot3"):
            calls.clear()
            build_model(name, nc=2).eval()(torch.zeros(1, 3, 128, 128))
            assert calls, name  # each attention's softmax went through it
