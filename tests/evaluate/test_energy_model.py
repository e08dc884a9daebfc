"""The energy estimate: its arithmetic on hand-counted models, by dtype, and in the report."""

import copy

import pytest
import torch
from torch import nn

from nnzip.evaluate import (
    EvalConfig,
    build_report,
    evaluate,
    render_html,
    render_markdown,
    rich_table,
)
from nnzip.evaluate.energy_model import (
    ESTIMATE_LABEL,
    estimate_energy,
    mac_pj,
    weight_read_bytes,
)

FP32_MAC_PJ = 3.7 + 0.9  # Horowitz 2014: 32-bit float multiply + add
INT8_MAC_PJ = 0.2 + 0.1  # 8-bit int multiply + 32-bit int accumulator add
SRAM_PJ_PER_BYTE = 5 / 4  # 5 pJ per 32-bit read of an 8 KB SRAM
DRAM_PJ_PER_BYTE = 640 / 4  # 640 pJ per 32-bit DRAM read


def _linear(in_features: int = 4, out_features: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(in_features, out_features))


def test_linear_costs_its_hand_counted_macs_weight_bytes_and_activations():
    estimate = estimate_energy(_linear(), torch.zeros(1, 4))
    # 4 x 3 = 12 float32 MACs; 12 weights + 3 biases = 60 bytes read from DRAM; input 4 floats
    # read (16 B) and output 3 floats written (12 B), both fit on chip.
    assert estimate["macs"] == {"float32": 12}
    assert estimate["weight_bytes"] == 60
    assert estimate["activation_bytes"] == {"sram": 28, "dram": 0}
    assert estimate["layers"] == 1
    assert estimate["compute_j"] == pytest.approx(12 * FP32_MAC_PJ * 1e-12)
    assert estimate["weight_memory_j"] == pytest.approx(60 * DRAM_PJ_PER_BYTE * 1e-12)
    assert estimate["activation_memory_j"] == pytest.approx(28 * SRAM_PJ_PER_BYTE * 1e-12)
    assert estimate["total_j"] == pytest.approx((55.2 + 9600 + 35) * 1e-12)


def test_tiny_conv_costs_its_hand_counted_macs_and_bytes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))
    estimate = estimate_energy(model, torch.zeros(1, 1, 6, 6))
    # conv: 2 channels x 4x4 positions x 9 taps = 288 MACs; linear: 32 x 3 = 96.
    assert estimate["macs"] == {"float32": 288 + 96}
    # conv 18 + 2, linear 96 + 3 floats.
    assert estimate["weight_bytes"] == (20 + 99) * 4
    # conv reads 36 floats, writes 32; linear reads 32, writes 3 (ReLU and Flatten are fused).
    assert estimate["activation_bytes"]["sram"] == (36 + 32 + 32 + 3) * 4
    assert estimate["compute_j"] == pytest.approx(384 * FP32_MAC_PJ * 1e-12)


def test_a_tensor_larger_than_the_on_chip_buffer_is_a_dram_access():
    estimate = estimate_energy(_linear(), torch.zeros(1, 4), on_chip_bytes=15)
    # The 16-byte input does not fit in 15 bytes, the 12-byte output does.
    assert estimate["activation_bytes"] == {"sram": 12, "dram": 16}
    assert estimate["activation_memory_j"] == pytest.approx(
        (16 * DRAM_PJ_PER_BYTE + 12 * SRAM_PJ_PER_BYTE) * 1e-12)


def test_lower_bits_are_extrapolated_from_8_bits_by_the_square_of_the_width():
    assert mac_pj("float32") == pytest.approx(4.6)
    assert mac_pj("float16") == pytest.approx(1.5)
    assert mac_pj("int8") == pytest.approx(0.3)
    assert mac_pj("int4") == pytest.approx(0.2 / 4 + 0.1)
    assert mac_pj("int1") == pytest.approx(0.2 / 64 + 0.1)


def _calibration(features: int = 4):
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(8, features, generator=generator) for _ in range(2)]


def test_a_w8a8_layer_costs_int8_macs_and_one_byte_weights():
    from nnzip.quant import QuantConfig, quantize_static

    quantized = quantize_static(_linear(), _calibration(), QuantConfig())
    estimate = estimate_energy(quantized, torch.zeros(1, 4))
    assert estimate["macs"] == {"int8": 12}
    assert estimate["compute_j"] == pytest.approx(12 * INT8_MAC_PJ * 1e-12)
    # 12 one-byte weights, 3 per-channel float32 scales, 3 float32 biases.
    assert estimate["weight_bytes"] == 12 + 3 * 4 + 3 * 4
    # The input is read as 4 int8 values, the output written as 3 floats.
    assert estimate["activation_bytes"]["sram"] == 4 + 12


def test_a_w4a8_layer_multiplies_at_8_bits_and_a_weight_only_w4_layer_in_float():
    from nnzip.quant import QuantConfig, quantize_static

    w4a8 = quantize_static(_linear(), _calibration(), QuantConfig(weight_bits=4))
    assert estimate_energy(w4a8, torch.zeros(1, 4))["macs"] == {"int8": 12}
    w4 = quantize_static(_linear(), _calibration(),
                         QuantConfig(weight_bits=4, activation_bits=None))
    estimate = estimate_energy(w4, torch.zeros(1, 4))
    assert estimate["macs"] == {"float32": 12}
    assert estimate["weight_bytes"] == 12 / 2 + 3 * 4 + 3 * 4  # half-byte weights


def test_masked_weights_cost_as_much_as_dense_ones_removed_channels_less():
    from nnzip.prune.structured import prune_channels
    from nnzip.prune.unstructured import magnitude_prune

    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 2 * 2, 3))
    sample = torch.rand(1, 1, 6, 6)
    before = estimate_energy(dense, sample)
    masked = copy.deepcopy(dense)
    magnitude_prune(masked, 0.5)
    assert sum(int((p == 0).sum()) for p in masked.parameters()) > 0
    assert estimate_energy(masked, sample) == before
    removed = prune_channels(dense, 0.5, example_inputs=sample)
    after = estimate_energy(removed, sample)
    assert after["macs"]["float32"] < before["macs"]["float32"]
    assert after["total_j"] < before["total_j"]


def test_a_clustered_weight_reads_its_index_bits_and_codebook():
    from nnzip.share.cluster import cluster_weights

    model = _linear(8, 8)
    cluster_weights(model, bits=2)
    estimate = estimate_energy(model, torch.zeros(1, 8))
    centroids = sum(p.numel() for name, p in model.named_parameters() if "centroids" in name)
    assert 1 <= centroids <= 4
    # 64 two-bit indices, the float32 codebook, 8 float32 biases; compute stays float.
    assert estimate["weight_bytes"] == 64 * 2 / 8 + centroids * 4 + 8 * 4
    assert estimate["macs"] == {"float32": 64}


def test_an_embedding_reads_only_the_rows_it_looks_up():
    model = nn.Sequential(nn.Embedding(1000, 4))
    assert weight_read_bytes(model, {"0": 3}) == 3 * 4 * 4
    estimate = estimate_energy(model, torch.tensor([[1, 2, 3]]))
    assert estimate["weight_bytes"] == 3 * 4 * 4


def test_the_report_row_carries_the_labelled_estimate_beside_rapl(tiny_model, tiny_data):
    config = EvalConfig(measure_latency=False, robustness_samples=4, eval_batch_size=16,
                        noise_sigmas=(), fgsm_epsilons=())
    row = evaluate(tiny_model, tiny_data, config=config)
    estimate = row["energy_estimate"]
    assert row["energy_estimate_j"] == estimate["total_j"] > 0
    assert estimate["label"] == ESTIMATE_LABEL
    assert "Horowitz" in estimate["source"] and "ISSCC 2014" in estimate["source"]
    assert estimate["macs"] == {"float32": 36 * 16 + 16 * 10}
    assert row["energy_j"] is None or row["energy_j"] > 0  # RAPL stays its own key
    report = build_report([row], machine={})
    for text in (render_markdown(report), render_html(report)):
        assert "Energy (estimate, 45 nm per-op costs, Horowitz 2014)" in text
        assert "32-bit DRAM read" in text and "640" in text
    metrics = rich_table(report).columns[0]._cells
    assert "Energy (estimate)" in metrics and "Energy" in metrics


def test_a_model_whose_operations_torch_cannot_see_gets_no_estimate():
    class Outside(nn.Module):  # stands for an ONNX / OpenVINO file wrapped as a module
        def forward(self, x):
            return torch.from_numpy(x.numpy() @ torch.ones(4, 3).numpy())

    assert estimate_energy(Outside(), torch.zeros(1, 4)) is None
