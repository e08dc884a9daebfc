"""A ``torch.export`` program as plain JSON plus named tensors, stored and read without pickle.

This is the structure of an .nnz file for a model the zoo cannot rebuild. ``torch.export.save``
writes its archive with ``torch.save`` pickles (the example inputs, constants) and its loader
falls back to ``torch.load(weights_only=False)``; here only torch's JSON schema of the program is
kept (``torch._export.serde.serialize`` with the state dict, constants and example inputs left
out). The tensors travel as the codec's records, and :func:`program_from_parts` hands them to
torch's deserializer as ready tensors, so nothing is unpickled. The example inputs are kept as
shapes and dtypes only and are not attached to the rebuilt program: without them ``.module()``
compiles no guard code, and :func:`check_program` refuses operator targets and symbolic
expressions outside a small allowlist before torch reads the JSON (the deserializer resolves
targets by attribute path and parses expressions with ``sympy.sympify``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from nnzip.codec.streams import dtype_name
from nnzip.errors import NnzipError

log = logging.getLogger(__name__)

#: Parts of the program JSON that only describe where a node came from: dropped, because they
#: hold the user's source paths and are most of the program's size.
_DROPPED_METADATA = ("stack_trace",)

#: Names a symbolic-shape expression may use: torch writes them with ``sympy.srepr``
#: (``Mul(Integer(4), Symbol('s77', positive=True, integer=True))``), so sympy's classes and
#: assumption keywords, and torch.utils._sympy's functions. Symbol names are quoted shape symbols.
_EXPRESSION_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq",
    "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Piecewise", "ExprCondPair",
    "True", "False", "true", "false", "BooleanTrue", "BooleanFalse", "oo", "Infinity",
    "NegativeInfinity", "IntInfinity", "NegativeIntInfinity", "One", "Zero",
    "NegativeOne", "Half", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod",
    "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural",
    "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity",
    "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or",
    "BitwiseFn_bitwise_xor",
    # assumption keywords of Symbol(...)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
    "infinite", "zero", "nonzero", "even", "odd", "rational", "commutative",
})
_SYMBOL = re.compile(r"'[a-z]{1,4}\d+'|[a-z]{1,4}\d+")
_TOKEN = re.compile(r"'[^']*'|[A-Za-z_][A-Za-z0-9_]*|\d+\.\d+(?:e[-+]?\d+)?|\d+|\*\*|//|"
                    r"[<>=!]=|\S")
_PUNCTUATION = frozenset("+-*/%(),<>&|~=") | {"**", "//", "<=", ">=", "==", "!="}


def example_tuple(example: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """The example inputs as a tuple of tensors (one tensor, or a sequence of them)."""
    inputs = (example,) if isinstance(example, torch.Tensor) else tuple(example)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise NnzipError("example must be a tensor (a batch of inputs) or a tuple of tensors, "
                         "one per positional argument of the model's forward")
    return inputs


def describe_inputs(inputs: tuple[torch.Tensor, ...]) -> list[dict]:
    """Shapes and dtypes of the example inputs, as JSON (the tensors themselves are not kept)."""
    return [{"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for t in inputs]


def _cause(error: BaseException) -> str:
    """torch's message shortened to its first line and, if given, the user's line it blames."""
    text = str(error).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = f"{type(error).__name__}: {lines[0] if lines else ''}"
    marker = "The following call raised this error:"
    if marker in lines:
        where = lines[lines.index(marker) + 1:lines.index(marker) + 3]
        cause += f"; at {' '.join(where)}"
    return cause


def dynamic_dims(tensor: torch.Tensor, batch: torch.export.Dim) -> dict | None:
    """The dimensions of one input exported as dynamic: the batch (0) and, for token ids
    (integers with a second dimension), the sequence (1), so that a transformer's program takes
    sentences of any length, not only the example's. ``Dim.AUTO`` lets torch.export keep the
    sequence static where the model fixes it (a table of integer features) instead of failing.
    """
    if not tensor.dim():
        return None
    if tensor.dim() >= 2 and not (tensor.is_floating_point() or tensor.is_complex()) \
            and tensor.dtype != torch.bool:
        return {0: batch, 1: torch.export.Dim.AUTO}
    return {0: batch}


def export_program(model: nn.Module, inputs: tuple[torch.Tensor, ...]
                   ) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` of ``model`` in eval mode: (program, whether the batch size is dynamic).

    The batch dimension is exported as dynamic (any size from 1) when the model allows it, else
    at the example's size. A model torch.export cannot trace raises :class:`NnzipError` with
    torch's reason.
    """
    was_training = model.training
    model.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        try:
            shapes = tuple(dynamic_dims(t, batch) for t in inputs)
            return torch.export.export(model, inputs, dynamic_shapes=shapes), True
        except Exception as dynamic_error:  # e.g. the forward fixes the batch size
            log.info("exporting with a fixed batch size: %s", _cause(dynamic_error))
            return torch.export.export(model, inputs), False
    except Exception as error:
        raise NnzipError(
            f"cannot save {type(model).__name__} as .nnz: torch.export could not export it "
            f"({_cause(error)}); make the forward traceable (no Python if/while on tensor "
            "values: use torch.where or torch.cond), or save it with torch.jit.script") from None
    finally:
        model.train(was_training)


def _tensor_key(tensor: torch.Tensor) -> tuple:
    """Identity of the memory a tensor views: tied weights share it."""
    return (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
            tuple(tensor.stride()), tensor.dtype)


def program_parts(program: torch.export.ExportedProgram
                  ) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(program JSON, tensors to store, layout) of an exported program.

    The layout names the parameters, buffers and constants, and maps every tied name to the
    one name whose tensor is stored (a tied embedding is stored once).
    """
    from torch._export.serde.serialize import serialize
    from torch.export.graph_signature import InputKind

    objects = [spec.target for spec in program.graph_signature.input_specs
               if spec.kind == InputKind.CUSTOM_OBJ]
    objects += [name for name, value in program.constants.items()
                if not isinstance(value, torch.Tensor)]
    if objects:
        raise NnzipError(f"the exported program holds TorchScript objects ({', '.join(objects)}), "
                         "which cannot be stored without pickle: save the model with "
                         "export_model (.pt2) instead")
    artifact = serialize(program, serialize_state_dict=False, serialize_constants=False,
                         serialize_example_inputs=False)
    document = json.loads(artifact.exported_program)
    for node in _nodes(document):
        for key in _DROPPED_METADATA:
            node.get("metadata", {}).pop(key, None)
    named = {**program.state_dict, **program.constants}
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    stored_by_key: dict[tuple, str] = {}
    for name, tensor in named.items():
        key = _tensor_key(tensor)
        if key in stored_by_key and tensor.numel():
            aliases[name] = stored_by_key[key]
            continue
        stored_by_key[key] = name
        tensors[name] = tensor.detach()
    layout = {"parameters": list(program.graph_signature.parameters),
              "buffers": [name for name in program.state_dict
                          if name not in set(program.graph_signature.parameters)],
              "constants": list(program.constants), "aliases": aliases}
    return document, tensors, layout


def _nodes(value: Any) -> Iterator[dict]:
    """Every graph node of a program JSON, subgraphs included."""
    if isinstance(value, dict):
        if {"target", "inputs", "outputs"} <= value.keys():
            yield value
        for item in value.values():
            yield from _nodes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _nodes(item)


def _expressions(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr_str" and isinstance(item, str):
                yield item
            else:
                yield from _expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)


def _resolve(target: str) -> Any:
    """What torch's deserializer would turn ``target`` into (attribute lookups only; the
    caller accepts the result only if it is an operator)."""
    import math
    import operator

    roots = {"_operator": operator, "torch": torch, "math": math}
    root, _, rest = target.partition(".")
    value: Any = roots.get(root)
    for name in rest.split(".") if value is not None else ():
        if not hasattr(value, name):
            return None
        value = getattr(value, name)
    return value


def _safe_expression(text: str) -> bool:
    for token in _TOKEN.findall(text):
        if token[0].isdigit() or token in _PUNCTUATION:
            continue
        if token not in _EXPRESSION_NAMES and not _SYMBOL.fullmatch(token):
            return False
    return True


def check_program(document: dict, source: str) -> None:
    """Refuse a program JSON whose operators or shape expressions fall outside the allowlist.

    Every node must call an aten-style operator (``torch.ops.<namespace>.<op>.<overload>``) or one
    of the symbolic-size operators torch's serializer writes (``operator.add``, ``torch.sym_max``
    ...); every shape expression may use only shape symbols, numbers, arithmetic and the sympy
    functions torch uses. This runs before torch parses anything.
    """
    from torch._export.serde.serialize import _SYM_OPS

    for node in _nodes(document):
        target = node.get("target")
        value = _resolve(target) if isinstance(target, str) else None
        allowed = isinstance(value, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)) \
            or (value is not None and value in _SYM_OPS)
        if not allowed:
            raise NnzipError(f"{source} calls {str(target)[:80]!r}, which is not a PyTorch "
                             "operator: the file is corrupt or was not written by nnzip; "
                             "save the model again")
    for expression in _expressions(document):
        if not _safe_expression(expression):
            raise NnzipError(f"{source} has a shape expression nnzip does not read "
                             f"({expression[:80]!r}): the file is corrupt or was not written by "
                             "nnzip; save the model again")


def _check_layout(layout: dict, source: str) -> None:
    """The layout's name lists and alias map hold strings only (a forged header may not)."""
    names = [layout.get("parameters", []), layout.get("constants", [])]
    aliases = layout.get("aliases", {})
    if not all(isinstance(group, list) and all(isinstance(n, str) for n in group)
               for group in names) or not isinstance(aliases, dict) \
            or not all(isinstance(v, str) for v in aliases.values()):
        raise NnzipError(f"{source} has an invalid tensor layout: corrupt data; save the model "
                         "again")


def program_from_parts(document: dict, tensors: dict[str, torch.Tensor], layout: dict,
                       source: str = "the .nnz file") -> torch.export.ExportedProgram:
    """The exported program again, its state dict and constants filled from ``tensors``.

    Tied names get the very same ``nn.Parameter`` object, so the program's module stays tied.
    """
    from torch._export.serde.serialize import SerializedArtifact, deserialize

    check_program(document, source)
    _check_layout(layout, source)
    document = {**document, "guards_code": []}  # guard code from a file is never compiled
    parameters = set(layout.get("parameters", []))
    constants = set(layout.get("constants", []))
    aliases = dict(layout.get("aliases", {}))
    made: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        made[name] = nn.Parameter(tensor, requires_grad=tensor.is_floating_point()) \
            if name in parameters else tensor
    for alias, stored in aliases.items():
        if stored not in made:
            raise NnzipError(f"{source} ties {alias!r} to {stored!r}, which it does not hold: "
                             "corrupt data")
        made[alias] = made[stored]
    state = {name: value for name, value in made.items() if name not in constants}
    constant_tensors = {name: value for name, value in made.items() if name in constants}
    artifact = SerializedArtifact(json.dumps(document).encode("utf-8"), state, constant_tensors,
                                  None)  # type: ignore[arg-type]  # torch accepts ready dicts
    try:
        return deserialize(artifact)
    except NnzipError:
        raise
    except Exception as error:
        raise NnzipError(f"{source} holds a program this PyTorch cannot rebuild "
                         f"({_cause(error)}); it was written with torch "
                         f"{document.get('torch_version', 'unknown')}, this is torch "
                         f"{torch.__version__}: save the model again with this version") from None
