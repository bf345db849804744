"""Operator scan of model programs: a second line of defence, not the trust decision.

Whether a file loads without ``trust`` is decided by its format and archive members
(``io.model_trust``): TorchScript never does; a ``.pt2`` only when it holds nothing but
the graph as JSON and raw tensors. What loads is then walked against an allowlist of
pure tensor operators before any forward call:

* :func:`scan_exported` walks an exported program's graphs (refuses custom operators,
  Python callables outside a short list, file or process operators);
* :func:`scan_torchscript` walks every method of a TorchScript module (for trusted files
  it only names what is outside the allowlist, in a warning);
* :func:`restricted_unpickling` forces ``torch.load(weights_only=True)`` for the duration
  of a ``torch.export.load`` (the untrusted copy holds no pickle to read; this is a
  backstop).

The scan cannot prove a program harmless (hooks, control flow, what an operator does with
its arguments): it is not a guarantee, which is why code-bearing formats need trust.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..core.runtime.errors import BundleError


class UnsafeModelError(BundleError):
    """A model file contains operators or objects that could act outside the tensors."""


# Pure tensor operators (no I/O, no process, no Python callbacks), by base name. In-place
# variants (``relu_``) and ``_``-prefixed internal forms (``_convolution``) of an allowed
# name are allowed too.
_ATEN = """
abs absolute acos acosh adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d add addcdiv addcmul addmm
addbmm baddbmm alias all allclose amax amin any arange argmax argmin as_strided asin
asinh atan atan2 atanh avg_pool1d avg_pool2d avg_pool3d batch_norm bitwise_and
bitwise_not bitwise_or bitwise_xor bmm broadcast_tensors broadcast_to cat ceil celu
channel_shuffle chunk clamp clamp_max clamp_min clip clone concat concatenate
constant_pad_nd contiguous conv1d conv2d conv3d conv_transpose1d conv_transpose2d
conv_transpose3d convolution copy cos cosh cumprod cumsum detach diag diagonal dim div
divide dot dropout alpha_dropout feature_dropout feature_alpha_dropout einsum elu empty
empty_like empty_strided eq erf erfc exp exp2 expand expand_as expm1 eye fill flatten
flip floor floor_divide fmod frac full full_like gather ge gelu glu group_norm gt
hardsigmoid hardswish hardtanh index index_select instance_norm is_floating_point
isfinite isinf isnan layer_norm le leaky_relu lerp lgamma linear linspace log log10
log1p log2 log_softmax logical_and logical_not logical_or logical_xor logsumexp lt
masked_fill matmul max max_pool1d max_pool2d max_pool3d max_pool1d_with_indices
max_pool2d_with_indices max_pool3d_with_indices maximum mean median min minimum mish mm
mul multiply mv nan_to_num narrow native_batch_norm native_group_norm native_layer_norm
ne neg negative new_empty new_full new_ones new_zeros nonzero norm numel ones ones_like
pad permute pixel_shuffle pixel_unshuffle pow prelu prod reciprocal reflection_pad1d
reflection_pad2d relu relu6 remainder repeat repeat_interleave replication_pad1d
replication_pad2d reshape reshape_as round rrelu rsqrt rsub scalar_tensor
scaled_dot_product_attention select selu sigmoid sign silu sin sinh size slice
softmax softplus softshrink sort split split_with_sizes sqrt square squeeze stack std
sub subtract sum swapaxes t tan tanh tensor_split threshold to topk transpose tril triu
true_divide trunc type_as unbind unflatten unsqueeze upsample_bilinear2d
upsample_nearest2d upsample_bicubic2d upsample_linear1d upsample_nearest1d
upsample_trilinear3d upsample_nearest3d var view view_as where zero zeros zeros_like
_assert_tensor_metadata _native_batch_norm_legit _native_batch_norm_legit_no_training
_native_batch_norm_legit_functional cudnn_batch_norm _to_copy lift_fresh_copy
interpolate __and__ __or__ __xor__ __not__ __getitem__ __is__ __isnot__ __contains__
Int Float Bool ScalarImplicit IntImplicit FloatImplicit item len format append
list dict str warn floordiv __round_to_zero_floordiv sym_size sym_numel sym_stride
sym_storage_offset tensor as_tensor _shape_as_tensor _set_item __range_length
__derive_index neg_ abs_ insert extend values keys items __interpolate __upsample
__upsample_bilinear _unsafe_view unsafe_view embedding new_tensor rand randn rand_like
randn_like randint normal bernoulli uniform cross_entropy_loss nll_loss mse_loss
one_hot matrix_power outer cosine_similarity pairwise_distance cdist logit fill_diagonal_
""".split()

# TorchScript control flow, constants and data structures (no effects outside the graph).
_PRIM = """
Constant ListConstruct ListUnpack TupleConstruct TupleUnpack TupleIndex DictConstruct
GetAttr If Loop RaiseException Uninitialized unchecked_cast isinstance NumToTensor
device dtype shape layout requires_grad is_cuda data min max abs TupleSlice
ImplicitTensorToNum ConstantChunk dim Print EnumValue EnumName unchecked_unwrap_optional
""".split()

_OTHER_TORCHSCRIPT = {"aten::Print"}

ATEN_ALLOWED = frozenset(_ATEN)
PRIM_ALLOWED = frozenset(_PRIM)

# Python-level callables that may appear in exported graphs.
_EXPORT_PY_ALLOWED = {
    "getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "not_",
    "sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_sqrt", "sym_ite",
    "_sym_sqrt", "sym_constrain_range_for_size", "_assert_async",
}


#: families of pure operators allowed by prefix (every resampling kernel of interpolate)
ATEN_PREFIXES = ("upsample_", "_upsample_")


def aten_allowed(name: str) -> bool:
    """Whether the base name of an aten operator is a pure tensor operator."""
    base = name.split(".", 1)[0]
    if base in ATEN_ALLOWED or base.startswith(ATEN_PREFIXES):
        return True
    stripped = base.rstrip("_")
    if stripped in ATEN_ALLOWED:
        return True
    return stripped.lstrip("_") in ATEN_ALLOWED and not base.startswith("__")


def _kind_allowed(kind: str) -> bool:
    ns, _, name = kind.partition("::")
    if ns == "aten":
        return aten_allowed(name)
    if ns == "prim":
        return name in PRIM_ALLOWED
    return False


def operator_allowed(kind: str) -> bool:
    """Whether a TorchScript operator kind is on the pure-tensor allowlist."""
    return kind in _OTHER_TORCHSCRIPT or _kind_allowed(kind)


def _refuse(source: str, op: str, why: str = "") -> UnsafeModelError:
    return UnsafeModelError(
        f"{source} was not loaded: it uses the operator {op!r}"
        f"{' (' + why + ')' if why else ''}, which is not a pure tensor operation and "
        "could read or write files or run code. Load it only if you trust where it "
        "comes from: pass --trust-model (command line), trust=True (Python) or tick "
        "'Trust this model file' (napari).")


def _walk_block(block) -> Iterator:
    for node in block.nodes():
        yield node
        for sub in node.blocks():
            yield from _walk_block(sub)


def torchscript_ops(module: torch.jit.ScriptModule) -> set[str]:
    """Every operator kind in every method of ``module`` and its submodules (inlined)."""
    kinds: set[str] = set()
    seen: set[int] = set()
    for sub in module.modules():
        c = getattr(sub, "_c", None)
        if c is None or id(c) in seen:
            continue
        seen.add(id(c))
        for name in c._method_names():
            graph = c._get_method(name).graph.copy()
            torch._C._jit_pass_inline(graph)
            kinds.update(node.kind() for node in _walk_block(graph))
    return kinds


def scan_torchscript(module: torch.jit.ScriptModule, source: str = "the model") -> list[str]:
    """Raise :class:`UnsafeModelError` for the first non-allowlisted operator; returns the
    sorted operator kinds found (for provenance and tests)."""
    kinds = sorted(torchscript_ops(module))
    for kind in kinds:
        if kind in _OTHER_TORCHSCRIPT:
            continue
        if not _kind_allowed(kind):
            why = ("a call TorchScript could not inline" if kind.startswith("prim::Call")
                   else "a custom operator" if not kind.startswith(("aten::", "prim::"))
                   else "")
            raise _refuse(source, kind, why)
    return kinds


# --- torch.export ---------------------------------------------------------------------

_UNPICKLE_LOCK = threading.Lock()


@contextmanager
def restricted_unpickling() -> Iterator[None]:
    """Within the block, every ``torch.load`` uses the restricted (weights-only) unpickler.

    ``torch.export.load`` unpickles weights with ``weights_only=False`` and falls back to
    it when the safe unpickler fails; this closes both doors for the call.
    """
    original = torch.load

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    # Process-wide for the duration of the call (another thread's torch.load in that window
    # is restricted too: safer, never looser).
    with _UNPICKLE_LOCK:
        torch.load = safe_load
        try:
            yield
        finally:
            torch.load = original


def exported_ops(program) -> set[str]:
    """Operator names called in an exported program's graphs (``aten::conv2d`` form for
    registered operators, ``python:<name>`` for plain Python callables)."""
    ops: set[str] = set()
    gm = program.graph_module if hasattr(program, "graph_module") else program
    for mod in gm.modules():
        graph = getattr(mod, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op in ("call_module", "call_method"):
                ops.add(f"fx:{node.op}:{node.target}")
            elif node.op == "call_function":
                ops.add(_target_name(node.target))
    return ops


def _target_name(target) -> str:
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        name = target.name() if isinstance(target, torch._ops.OpOverload) else \
            target._qualified_op_name
        return name.split(".")[0]  # "aten::conv2d"
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order::{target.name()}"
    if isinstance(target, str):
        return f"unresolved:{target}"
    mod = getattr(target, "__module__", None) or ""
    return f"python:{mod}.{getattr(target, '__name__', repr(target))}"


def scan_exported(program, source: str = "the model") -> list[str]:
    """Raise :class:`UnsafeModelError` for the first operator outside the allowlist."""
    ops = sorted(exported_ops(program))
    for op in ops:
        if op.startswith("aten::") and aten_allowed(op[6:]):
            continue
        if op.startswith("python:"):
            mod, _, name = op[7:].rpartition(".")
            if mod in ("_operator", "operator", "torch", "torch.sym", "math",
                       "torch.fx.experimental.sym_node") and name in _EXPORT_PY_ALLOWED:
                continue
        why = ("a custom operator" if "::" in op and not op.startswith("aten::") and
               not op.startswith("higher_order::") else "")
        raise _refuse(source, op, why)
    return ops
