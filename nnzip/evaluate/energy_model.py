"""Energy per inference, **estimated** from operation counts and memory traffic, on any machine.

RAPL (:mod:`nnzip.evaluate.energy`) measures a whole CPU package and is unreadable on virtual
machines. Where no meter exists, compression papers estimate energy instead, from how many
operations of each kind a model runs and how many bytes it moves, times a published cost per
operation (Han et al., "Deep Compression", ICLR 2016, §1 and Fig. 1; "EIE", ISCA 2016, Table I).
This module does the same for one batch-1 forward pass. The figure is a model of 45 nm hardware,
not of this machine: it ranks models by the work they do (a float multiply-accumulate against an
int8 one, a 4-byte weight against a 1-byte one), and its absolute value is only indicative.

Per-operation costs (:data:`HOROWITZ_45NM_PJ`), in picojoules, from M. Horowitz, "Computing's
energy problem (and what we can do about it)", ISSCC 2014, 45 nm, 0.9 V, as tabulated by Han et
al. (Deep Compression Fig. 1, EIE Table I): integer add 0.03 pJ (8-bit) / 0.1 pJ (32-bit), integer
multiply 0.2 pJ (8-bit) / 3.1 pJ (32-bit), float add 0.4 pJ (16-bit) / 0.9 pJ (32-bit), float
multiply 1.1 pJ (16-bit) / 3.7 pJ (32-bit), 32-bit read from an 8 KB SRAM 5 pJ, 32-bit DRAM read
640 pJ (Horowitz gives 10 pJ per 64 bits for an 8 KB cache and 1.3–2.6 nJ per 64 bits for DRAM).

The rules, each a choice stated once:

- **Compute**: one multiply-accumulate (MAC) = one multiply + one add. MACs come from PyTorch's
  FLOP counter (:func:`nnzip.evaluate.flops.count_layer_flops`, 2 FLOPs per MAC). A float layer's
  MACs are float32 (3.7 + 0.9 pJ) or float16 (1.1 + 0.4 pJ; bfloat16 is costed as float16, the
  table has no bfloat16 figure). A layer quantized by nnzip with quantized activations (W8A8,
  W4A8, dynamic) multiplies integers of ``max(weight bits, activation bits)`` bits and adds into a
  32-bit accumulator, as integer kernels do (VNNI ``vpdpbusd``, ONNX ``QLinearConv``): 0.2 + 0.1
  pJ at 8 bits. Below 8 bits the multiply is **extrapolated** from the 8-bit figure by the square
  of the width (an array multiplier's area grows with the product of its operand widths):
  ``0.2 · (b / 8)²`` pJ; the paper has no 4-, 2- or 1-bit figure. A weight-only quantized or
  clustered layer computes in float (its weights are dequantized before the kernel).
- **Zeros cost like any value**: the dense kernels of PyTorch, ONNX Runtime and OpenVINO do not
  skip zero weights, so an unstructured-pruned (masked) layer runs as many MACs as the dense one.
  Structured pruning removes channels from the model, so its MACs are gone from the count.
- **Weights** are read once per inference from DRAM (640 pJ per 32 bits) at the width the model
  holds them: float32 4 bytes, an nnzip-quantized weight its bits (int8 1 byte, int4 half a byte)
  plus its scales (what ONNX Runtime's int8 and MatMulNBits kernels read), a clustered (shared)
  weight its index bits plus its codebook (what a kernel that decodes indices on the fly reads,
  as EIE does; PyTorch's parametrization and the ONNX export materialize the float weight, so
  on a CPU this saving is an upper bound). A model loaded
  from a ``.nnz`` file is plain float (the Huffman-coded bytes are decoded at load), so it reads
  4 bytes per weight: the file's compression saves disk and download, not runtime traffic. An
  embedding reads only the rows it looks up. Batch 1 reuses no weight across samples, so none is
  assumed cached.
- **Activations**: every Linear / convolution / embedding layer reads its input and writes its
  output once, at the width the kernel sees (a quantized input at its bits, otherwise its
  dtype); a tensor that fits in an on-chip buffer of ``on_chip_bytes`` (default 1 MiB) is an SRAM
  access (5 pJ per 32 bits), a larger one a DRAM access. Element-wise layers between them (ReLU,
  pooling, normalization, residual adds) are taken as fused into their producer, and their
  arithmetic is not counted. MACs outside those layers (attention's activation products) are
  costed as float MACs of the model's dtype. A ``torch.export`` program (a model loaded from a
  version-2 ``.nnz`` file) has no layer modules: its activations are not counted (``layers`` is
  0) and its embeddings are read whole.
- **What the counter cannot see is not costed**: kernels without a FLOP formula (an LSTM/GRU's
  fused recurrence) add no MACs, as in the report's ``macs``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from nnzip.evaluate.flops import LayerCounts, count_layer_flops

log = logging.getLogger(__name__)

#: How the report labels the estimate, wherever it shows it.
ESTIMATE_LABEL = "energy (estimate, 45 nm per-op costs, Horowitz 2014)"
#: The label as a heading.
ESTIMATE_TITLE = ESTIMATE_LABEL[0].upper() + ESTIMATE_LABEL[1:]
SOURCE = ("M. Horowitz, \"Computing's energy problem (and what we can do about it)\", ISSCC 2014, "
          "45 nm, as tabulated in Han et al., Deep Compression (ICLR 2016) Fig. 1 and EIE "
          "(ISCA 2016) Table I")
#: Picojoules per operation, 45 nm (Horowitz 2014; see the module docstring).
HOROWITZ_45NM_PJ = {
    "int8_add": 0.03,
    "int32_add": 0.1,
    "int8_mult": 0.2,
    "int32_mult": 3.1,
    "fp16_add": 0.4,
    "fp32_add": 0.9,
    "fp16_mult": 1.1,
    "fp32_mult": 3.7,
    "sram_read_32bit_8kb": 5.0,
    "dram_read_32bit": 640.0,
}
#: The table as the report prints it: (operation, picojoules).
COST_TABLE = (
    ("8-bit int add", HOROWITZ_45NM_PJ["int8_add"]),
    ("32-bit int add (accumulator)", HOROWITZ_45NM_PJ["int32_add"]),
    ("8-bit int multiply", HOROWITZ_45NM_PJ["int8_mult"]),
    ("32-bit int multiply", HOROWITZ_45NM_PJ["int32_mult"]),
    ("16-bit float add", HOROWITZ_45NM_PJ["fp16_add"]),
    ("32-bit float add", HOROWITZ_45NM_PJ["fp32_add"]),
    ("16-bit float multiply", HOROWITZ_45NM_PJ["fp16_mult"]),
    ("32-bit float multiply", HOROWITZ_45NM_PJ["fp32_mult"]),
    ("32-bit SRAM read (8 KB)", HOROWITZ_45NM_PJ["sram_read_32bit_8kb"]),
    ("32-bit DRAM read", HOROWITZ_45NM_PJ["dram_read_32bit"]),
)
#: The rules the report states under the table (the module docstring's, in short).
RULES = (
    "one MAC = multiply + add; integer layers add into a 32-bit accumulator",
    "below 8 bits, an integer multiply costs 0.2 pJ x (bits/8)^2 (extrapolated, not in the table)",
    "zero weights cost like any other: dense kernels do not skip them (removed channels do save)",
    "weights read once per inference from DRAM at their in-memory width (.nnz is decoded at load)",
    "activations: each layer reads its input and writes its output once; SRAM if the tensor fits "
    "the on-chip buffer, else DRAM",
)
DEFAULT_ON_CHIP_BYTES = 1 << 20
SRAM_PJ_PER_BYTE = HOROWITZ_45NM_PJ["sram_read_32bit_8kb"] / 4
DRAM_PJ_PER_BYTE = HOROWITZ_45NM_PJ["dram_read_32bit"] / 4
_FLOAT_LABELS = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
_PLAIN_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d,
                 nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding)


def mac_pj(dtype: str) -> float:
    """Picojoules of one multiply-accumulate in ``dtype`` ("float32", "float16", "bfloat16",
    "int8", "int4", …, "int1"); see the module docstring for the rules."""
    costs = HOROWITZ_45NM_PJ
    if dtype == "float32":
        return costs["fp32_mult"] + costs["fp32_add"]
    if dtype in ("float16", "bfloat16"):
        return costs["fp16_mult"] + costs["fp16_add"]
    if dtype.startswith("int") and dtype[3:].isdigit() and 1 <= int(dtype[3:]) <= 8:
        bits = int(dtype[3:])
        return costs["int8_mult"] * (bits / 8) ** 2 + costs["int32_add"]
    # Any other float (float64) has no figure: the float32 one is the nearest, and says so here.
    return costs["fp32_mult"] + costs["fp32_add"]


def memory_pj(size_bytes: float, on_chip_bytes: int) -> float:
    """Picojoules to move one tensor of ``size_bytes``: SRAM if it fits on chip, else DRAM."""
    per_byte = SRAM_PJ_PER_BYTE if size_bytes <= on_chip_bytes else DRAM_PJ_PER_BYTE
    return size_bytes * per_byte


def _float_label(dtype: torch.dtype) -> str:
    return _FLOAT_LABELS.get(dtype, "float32")


def _quantized_layer_type() -> type | None:
    try:  # imported late: the quant package is a method family, evaluate only reads it
        from nnzip.quant.modules import QuantizedLayer
    except ImportError:  # pragma: no cover - the package ships with nnzip
        return None
    return QuantizedLayer


def _compute_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose MACs and activations are counted: nnzip's quantized layers and plain
    Linear / convolution / embedding modules (not those a quantized layer wraps)."""
    quantized = _quantized_layer_type()
    layers: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in layers):
            continue  # inside a quantized layer, which calls the kernel itself
        if (quantized is not None and isinstance(module, quantized)) \
                or isinstance(module, _PLAIN_LAYERS):
            layers[name] = module
    return layers


def _activation_bits(module: nn.Module) -> int | None:
    """The bits of a quantized layer's integer input, or None where its kernel runs in float."""
    quantized = _quantized_layer_type()
    if quantized is None or not isinstance(module, quantized):
        return None
    if module.input_scheme is None or module.mode not in ("quantize", "dynamic") \
            or isinstance(module.layer, nn.Embedding):
        return None
    return module.input_scheme.bits


def layer_mac_dtype(module: nn.Module) -> str:
    """The dtype one layer's MACs are costed in: "int<b>" for an nnzip layer with quantized
    activations (b = the wider of weight and activation bits), else its weight's float dtype."""
    activation_bits = _activation_bits(module)
    if activation_bits is not None:
        return f"int{max(activation_bits, module.weight_scheme.bits)}"
    inner = getattr(module, "layer", module)
    weight = getattr(inner, "weight", None)
    return _float_label(weight.dtype) if isinstance(weight, torch.Tensor) else "float32"


@dataclass
class _WeightReads:
    """Bytes of each weight-holding thing, by identity, with the fraction of it one inference
    reads (1.0, or an embedding's looked-up rows); a tied tensor keeps its largest fraction."""

    full_bytes: dict[int, float] = field(default_factory=dict)
    fraction: dict[int, float] = field(default_factory=dict)
    claimed: set[int] = field(default_factory=set)

    def add(self, key: int, size_bytes: float, fraction: float) -> None:
        self.full_bytes[key] = size_bytes
        self.fraction[key] = max(self.fraction.get(key, 0.0), min(fraction, 1.0))

    def total(self) -> float:
        return sum(size * self.fraction[key] for key, size in self.full_bytes.items())


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _integer_bytes(numel: int, bits: int, scale: torch.Tensor | None) -> float:
    """Bytes of ``numel`` integers of ``bits`` bits and their float32 scales."""
    return numel * bits / 8 + (scale.numel() * 4 if isinstance(scale, torch.Tensor) else 0)


def _tensors_of(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


def _parametrized_bytes(module: nn.Module, attr: str) -> tuple[int, float] | None:
    """(identity, bytes) of a parametrized weight as nnzip stores it: a shared weight's codes and
    codebook, a weight-only quantized tensor's integers and scales; None for other
    parametrizations (costed at the width of the tensor they compute)."""
    from nnzip.quant.parametrized import WeightQuantizer
    from nnzip.share.modules import SharedWeight

    first = module.parametrizations[attr][0]
    if isinstance(first, SharedWeight):
        table = first.centroids
        return id(first), first.codes.numel() * first.bits / 8 + _tensor_bytes(table)
    if isinstance(first, WeightQuantizer) and first.weight_int is not None \
            and first.mode == "quantize":
        scale = getattr(first.weight_qparams, "scale", None)
        return id(first), _integer_bytes(first.weight_int.numel(), first.weight_scheme.bits, scale)
    return None


def weight_read_bytes(model: nn.Module, lookups: dict[str, int] | None = None) -> float:
    """Bytes of weights one inference reads, at the width the model holds them (see the module
    docstring). ``lookups`` maps an embedding layer's name to the rows it looked up."""
    lookups = lookups or {}
    quantized = _quantized_layer_type()
    reads = _WeightReads()
    for name, module in model.named_modules(remove_duplicate=False):
        embedding = isinstance(getattr(module, "layer", module), nn.Embedding)
        rows = getattr(getattr(module, "layer", module), "num_embeddings", 1)
        fraction = lookups.get(name, 0) / rows if embedding else 1.0
        if quantized is not None and isinstance(module, quantized) \
                and module.weight_int is not None and module.mode in ("quantize", "dynamic"):
            scale = getattr(module.weight_qparams, "scale", None)
            reads.add(id(module), _integer_bytes(module.weight_int.numel(),
                                                 module.weight_scheme.bits, scale), fraction)
            reads.claimed.update({id(module.layer.weight), id(module.weight_int)})
        if parametrize.is_parametrized(module):
            for attr, chain in module.parametrizations.items():
                stored = _parametrized_bytes(module, attr)
                if stored is None:
                    reads.add(id(chain), _tensor_bytes(getattr(module, attr).detach()), fraction)
                else:
                    reads.add(stored[0], stored[1], fraction)
                reads.claimed.update(id(t) for t in _tensors_of(chain))
        for tensor in [*module._parameters.values(), *module._buffers.values()]:
            if tensor is None or id(tensor) in reads.claimed or not tensor.is_floating_point():
                continue
            reads.add(id(tensor), _tensor_bytes(tensor), fraction)
    return reads.total()


def _model_float_label(model: nn.Module) -> str:
    sizes: dict[torch.dtype, int] = {}
    for parameter in model.parameters():
        if parameter.is_floating_point():
            sizes[parameter.dtype] = sizes.get(parameter.dtype, 0) + parameter.numel()
    return _float_label(max(sizes, key=sizes.get)) if sizes else "float32"


def _activation_traffic(counts: LayerCounts, layers: dict[str, nn.Module],
                        on_chip_bytes: int) -> tuple[dict[str, float], float]:
    """({"sram": bytes, "dram": bytes}, picojoules) of every layer's input read and output
    write."""
    moved = {"sram": 0.0, "dram": 0.0}
    picojoules = 0.0
    for name, module in layers.items():
        if name not in counts.flops:
            continue  # never called (a parent reads its weight directly)
        bits = _activation_bits(module)
        read = (counts.input_elements[name] * bits / 8 if bits is not None
                else counts.input_bytes[name])
        for size in (read, counts.output_bytes[name]):
            moved["sram" if size <= on_chip_bytes else "dram"] += size
            picojoules += memory_pj(size, on_chip_bytes)
    return moved, picojoules


def estimate_energy(model: nn.Module, sample: torch.Tensor, *,
                    on_chip_bytes: int = DEFAULT_ON_CHIP_BYTES) -> dict | None:
    """The estimated energy of one forward pass of ``sample`` (a batch of one), or None where
    the operations cannot be counted (see :func:`nnzip.evaluate.flops.count_flops`; a model
    that runs outside PyTorch, such as an ONNX file, shows no operations to count).

    Returns the report row's ``energy_estimate``: ``total_j`` and its parts ``compute_j``,
    ``weight_memory_j`` and ``activation_memory_j``, ``macs`` by dtype, the bytes moved
    (``weight_bytes``, ``activation_bytes`` by SRAM/DRAM), the number of ``layers`` whose
    activations were counted, ``on_chip_bytes``, and the ``label``
    and ``source`` that say it is an estimate from Horowitz's 45 nm table.
    """
    layers = _compute_layers(model)
    counts = count_layer_flops(model, sample, layers)
    if counts is None:
        return None
    if counts.total_flops == 0 and not counts.flops:
        # Nothing PyTorch counted: the model runs in another runtime (an ONNX or OpenVINO file
        # wrapped as a module) or has no layer nnzip knows; an estimate of ~0 J would mislead.
        log.warning("energy not estimated for %s: PyTorch saw no layer and no matmul or "
                    "convolution run", type(model).__name__)
        return None
    macs: dict[str, int] = {}
    for name, flops in counts.flops.items():
        dtype = layer_mac_dtype(layers[name])
        macs[dtype] = macs.get(dtype, 0) + flops // 2
    other = counts.total_flops // 2 - sum(macs.values())
    if other > 0:
        dtype = _model_float_label(model)
        macs[dtype] = macs.get(dtype, 0) + other
    macs = {dtype: count for dtype, count in macs.items() if count > 0}
    compute_pj = sum(count * mac_pj(dtype) for dtype, count in macs.items())
    lookups = {name: counts.input_elements.get(name, 0) for name, module in layers.items()
               if isinstance(getattr(module, "layer", module), nn.Embedding)}
    weight_bytes = weight_read_bytes(model, lookups)
    weight_pj = weight_bytes * DRAM_PJ_PER_BYTE
    activation_bytes, activation_pj = _activation_traffic(counts, layers, on_chip_bytes)
    total_pj = compute_pj + weight_pj + activation_pj
    return {
        "label": ESTIMATE_LABEL,
        "total_j": total_pj * 1e-12,
        "compute_j": compute_pj * 1e-12,
        "weight_memory_j": weight_pj * 1e-12,
        "activation_memory_j": activation_pj * 1e-12,
        "macs": dict(sorted(macs.items())),
        "weight_bytes": weight_bytes,
        "activation_bytes": activation_bytes,
        "layers": len(counts.flops),
        "on_chip_bytes": on_chip_bytes,
        "source": SOURCE,
    }


# -- the report's energy section ---------------------------------------------------------------
def fmt_joules(joules: float | None) -> str:
    """SI prefixes for the small figures of one inference: 9.69e-09 -> '9.69 nJ'."""
    if not isinstance(joules, int | float) or isinstance(joules, bool):
        return "n/a"
    for threshold, suffix in ((1, "J"), (1e-3, "mJ"), (1e-6, "µJ"), (1e-9, "nJ")):
        if abs(joules) >= threshold:
            return f"{joules / threshold:.3g} {suffix}"
    return f"{joules / 1e-12:.3g} pJ"


def _fmt_macs(macs: object) -> str:
    if not isinstance(macs, dict) or not macs:
        return "n/a"
    from nnzip.evaluate.tables import fmt_count

    return ", ".join(f"{dtype} {fmt_count(count)}" for dtype, count in macs.items())


def estimate_columns() -> list[str]:
    return ["Model", "Stage", "Measured (RAPL)", "Estimate / sample", "Compute", "Weights",
            "Activations", "MACs by dtype"]


def estimate_rows(models: list[dict]) -> list[list[str]]:
    """One row per model that has an estimate (a report from before estimates has none)."""
    rows = []
    for model in models:
        estimate = model.get("energy_estimate")
        if not isinstance(estimate, dict):
            continue
        rows.append([str(model.get("name")), str(model.get("stage")),
                     fmt_joules(model.get("energy_j")), fmt_joules(estimate.get("total_j")),
                     fmt_joules(estimate.get("compute_j")),
                     fmt_joules(estimate.get("weight_memory_j")),
                     fmt_joules(estimate.get("activation_memory_j")),
                     _fmt_macs(estimate.get("macs"))])
    return rows


def cost_rows() -> list[list[str]]:
    """The per-operation table, as the report prints it under the estimates."""
    return [[operation, f"{picojoules:g}"] for operation, picojoules in COST_TABLE]


def estimate_notes() -> list[str]:
    """The lines under the table: the source, then the rules."""
    return [f"Source: {SOURCE}.", *[f"{rule[0].upper()}{rule[1:]}." for rule in RULES]]
