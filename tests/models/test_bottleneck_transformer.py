"""BoT3 / MHSA: any-size relative position bias, exactness at the reference grid, cache, export."""

from __future__ import annotations

import pytest
import torch

from efyolo.models.bottleneck_transformer import MHSA, BoT3, signed_offset_index


def test_signed_offsets_cover_every_pair() -> None:
    idx = signed_offset_index(2, 3)  # 6 tokens; table 3 x 5
    assert idx.shape == (6, 6)
    assert idx.diagonal().unique().tolist() == [1 * 5 + 2]  # (dy, dx) = (0, 0) is the centre
    assert idx[0, 5].item() == (0 - 1 + 1) * 5 + (0 - 2 + 2)  # token (0,0) vs (1,2): dy=-1, dx=-2
    assert idx[5, 0].item() == (1 + 1) * 5 + (2 + 2)


@pytest.mark.parametrize("hw", [(3, 5), (8, 8), (4, 10)])
def test_mhsa_any_grid(hw: tuple[int, int]) -> None:
    attn = MHSA(32, heads=4, resolution=4)
    x = torch.randn(2, 32, *hw)
    assert attn(x).shape == x.shape


def test_bias_is_the_table_at_the_reference_grid() -> None:
    attn = MHSA(16, heads=2, resolution=3)
    with torch.no_grad():
        attn.attention_biases.normal_()
    bias = attn.compute_bias(3, 3)  # (2, 9, 9)
    table = attn.attention_biases
    # token 0 is (0, 0), token 8 is (2, 2): offset (-2, -2) -> table corner [0, 0]
    assert torch.equal(bias[:, 0, 8], table[:, 0, 0])
    assert torch.equal(bias[:, 8, 0], table[:, 4, 4])
    assert torch.equal(bias[:, 4, 4], table[:, 2, 2])


def test_eval_cache_and_training_gradients() -> None:
    attn = MHSA(16, heads=2, resolution=3)
    x = torch.randn(1, 16, 4, 6)
    attn.train()
    attn(x).square().mean().backward()
    assert attn.attention_biases.grad is not None and attn.attention_biases.grad.abs().sum() > 0
    attn.eval()
    with torch.no_grad():
        first = attn.get_bias(4, 6, torch.float32)
        assert attn.get_bias(4, 6, torch.float32) is first
        assert attn.last_grid == (4, 6)


def test_bot3_shapes_and_heads_check() -> None:
    block = BoT3(64, 128, n=2, heads=4)
    assert block(torch.randn(1, 64, 6, 10)).shape == (1, 128, 6, 10)
    with pytest.raises(ValueError, match="heads"):
        BoT3(64, 36, heads=4)  # hidden width 18 does not split into 4 heads
