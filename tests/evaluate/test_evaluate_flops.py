import logging
import warnings

import pytest
import torch
from torch import nn

from nnzip.evaluate.flops import count_flops


def test_linear_flops_are_two_per_multiply_accumulate():
    flops, macs = count_flops(nn.Linear(784, 300), (784,))
    assert flops == 2 * 784 * 300
    assert macs == 784 * 300


def test_conv_flops_match_output_positions_times_kernel_volume():
    # 8 output channels x 8x8 positions, each a 3x3x3 dot product.
    flops, macs = count_flops(nn.Conv2d(3, 8, 3), (3, 10, 10))
    assert macs == 8 * 8 * 8 * 3 * 3 * 3
    assert flops == 2 * macs


def test_training_mode_is_restored():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))
    model.train()
    count_flops(model, (4,))
    assert model.training and model[1].training


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_scripted_module_is_counted():
    flops, _ = count_flops(torch.jit.script(nn.Linear(10, 5)), (10,))
    assert flops == 2 * 10 * 5


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("exotic op")


def test_a_failing_model_gives_none_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="nnzip.evaluate.flops"):
        assert count_flops(_Broken(), (3,)) == (None, None)
    assert "exotic op" in caplog.text


def test_quantized_kernels_are_not_reported_as_zero_flops(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.ao.quantization.quantize_dynamic(nn.Sequential(nn.Linear(8, 8)),
                                                       {nn.Linear}, dtype=torch.qint8)
    with caplog.at_level(logging.WARNING, logger="nnzip.evaluate.flops"):
        assert count_flops(model, (8,)) == (None, None)
    assert "no FLOP formula" in caplog.text


def test_a_transformer_encoder_layer_is_counted_not_skipped_by_its_fast_path():
    # In eval mode under no_grad the fused fast path has no FLOP formula (it counted 0).
    torch.manual_seed(0)
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1,
                                    enable_nested_tensor=False)
    _, macs = count_flops(encoder, (3, 8))
    # 3 tokens: Q/K/V projections 3*8*24, output projection 3*8*8, feed-forward 2*3*8*16, and
    # per head (2, width 4) the 3x3 scores and their product with V, 3*3*4 MACs each.
    assert macs == 3 * 8 * 24 + 3 * 8 * 8 + 2 * 3 * 8 * 16 + 2 * 2 * 3 * 3 * 4
    assert torch.backends.mha.get_fastpath_enabled()  # the setting is restored


def test_scaled_dot_product_attention_on_cpu_is_counted():
    class Attention(nn.Module):
        def forward(self, x):
            return torch.nn.functional.scaled_dot_product_attention(x, x, x)

    # 2 heads, 3 tokens, width 4: scores 3*3*4 and their product with V 3*3*4, per head.
    _, macs = count_flops(Attention(), (2, 3, 4))
    assert macs == 2 * (3 * 3 * 4 + 3 * 3 * 4)
