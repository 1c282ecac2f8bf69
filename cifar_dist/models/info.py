"""Model facts for ``cifar-dist models``: parameters, MACs and receptive field at the default input size.

Receptive field (RF) method, and why
-----------------------------------
We report the *theoretical* RF of one unit of the last spatial feature map (the map that global
pooling or the flatten consumes), measured from the operations the model actually executes:

- One forward pass at the model's default input size runs under ``_ReceptiveFieldMode``, a
  ``torch.overrides.TorchFunctionMode``: it sees every torch function and tensor method the model's modules
  call (``F.conv2d``, ``F.max_pool2d``, ``x + y``, ...), one level deep. Every tensor derived from the input
  carries ``(rf, jump)`` per spatial axis (the input has rf 1, jump 1: one pixel, one pixel apart).
- A convolution or a fixed max/avg pool with kernel k, stride s, dilation d maps
  rf ← rf + (k-1)·d·jump and jump ← jump·s. Any other op (BN, activations, add, cat, padding, views)
  gives its output the largest rf among its inputs, so a residual add takes the max over its branches.
- Global pooling (an adaptive/fixed pool or a reduction that turns a >1×1 map into 1×1, or a flatten)
  ends spatial tracking; squeeze-excitation gates built from such pooled tensors are therefore ignored,
  which is the usual convention.
- The answer is the largest rf any conv/pool produced.

Why not the alternatives: hand-written tables drift from the code and cannot cover ``timm:`` models.
Forward hooks on Conv/Pool modules see execution order but not the graph, so they cannot tell a residual
branch from the main path and would add the shortcut's kernel in series. A gradient-based probe (the
input pixels whose gradient w.r.t. one central output unit is non-zero) measures the *effective* RF: it
depends on the weights (dead ReLUs, max-pool argmax routing make it too small) and is clipped by the
image border, so at 32×32 it can never report the 109 pixels of ``ds_resnet_200k``. Padding is ignored,
so the theoretical RF may exceed the input size; that is meaningful (it says border context reaches
every unit) and matches the usual definition.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakTensorKeyDictionary

from cifar_dist.models.registry import TIMM_PREFIX, count_params, create_model, get_entry, list_models

# The 2-D spatial functions: kind and the names of the positional parameters (some are C builtins, which have no
# signature to inspect). The max pools are called through a wrapper that picks the variant with indices or not.
_MAX_POOL = ("pool", ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"))
_ADAPTIVE = ("adaptive", ("input", "output_size", "return_indices"))
_SPATIAL = {
    F.conv2d: ("conv", ("input", "weight", "bias", "stride", "padding", "dilation", "groups")),
    F.max_pool2d: _MAX_POOL,
    F.max_pool2d_with_indices: _MAX_POOL,
    F.avg_pool2d: ("pool", ("input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")),
    F.adaptive_avg_pool2d: _ADAPTIVE,
    F.adaptive_max_pool2d: _ADAPTIVE,
    F.adaptive_max_pool2d_with_indices: _ADAPTIVE,
}


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in an argument or result: itself, or inside (nested) lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return [t for item in items for t in _tensors(item)]


def _pair(v: Any, default: Any = None) -> tuple[int, int]:
    """(h, w) from an int or a 1/2-element list; None or empty (a pool's stride omitted) -> ``default``."""
    if isinstance(v, int):
        return (v, v)
    v = [] if v is None else list(v)
    if not v:
        return _pair(default)
    return (int(v[0]), int(v[0])) if len(v) == 1 else (int(v[0]), int(v[1]))


class _ReceptiveFieldMode(TorchFunctionMode):
    """Propagates per-axis (rf, jump) through every torch function call; ``max_rf`` is the result (module doc)."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        self.state: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.state[x] = ((1, 1), (1, 1))  # ((rf_h, rf_w), (jump_h, jump_w))
        self.max_rf = (1, 1)

    def _grow(self, inp: torch.Tensor, kernel, stride, dilation) -> tuple:
        (rf, jump) = self.state[inp]
        rf = tuple(r + (k - 1) * d * j for r, k, d, j in zip(rf, kernel, dilation, jump))
        jump = tuple(j * s for j, s in zip(jump, stride))
        self.max_rf = tuple(max(a, b) for a, b in zip(self.max_rf, rf))
        return rf, jump

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)  # this mode is off inside: the call's own calls are not seen
        flat_in = [t for t in _tensors((args, kwargs)) if t in self.state]
        if not flat_in:
            return out  # parameters, buffers, constants: nothing spatial to track
        flat_out = _tensors(out)
        first_in = flat_in[0]
        spatial_in = first_in.dim() == 4 and tuple(first_in.shape[-2:]) != (1, 1)

        kind, names = _SPATIAL.get(func, (None, ())) if isinstance(func, Hashable) else (None, ())
        a = {**dict(zip(names, args)), **kwargs}
        # Transposed and non-2-D convolutions (other functions) take the generic rule (no model here uses them).
        if kind == "conv" and first_in.dim() == 4:
            new = self._grow(
                a["input"], tuple(a["weight"].shape[-2:]), _pair(a.get("stride", 1)), _pair(a.get("dilation", 1))
            )
        elif kind in ("pool", "adaptive"):
            x, y = a["input"], flat_out[0]
            if tuple(y.shape[-2:]) == (1, 1) and spatial_in:
                return out  # global pooling: spatial tracking ends here
            if kind == "pool":
                kernel = _pair(a["kernel_size"])
                new = self._grow(x, kernel, _pair(a.get("stride"), kernel), _pair(a.get("dilation", 1)))
            else:  # adaptive pool to n×n > 1: windows of ceil(in/n) pixels, stride floor(in/n)
                n_in, n_out = x.shape[-2:], y.shape[-2:]
                kernel = tuple(-(-i // o) for i, o in zip(n_in, n_out))
                new = self._grow(x, kernel, tuple(i // o for i, o in zip(n_in, n_out)), (1, 1))
        else:
            # Generic op. Collapsing a >1×1 map into 1×1 or into fewer dims (mean over H,W, flatten)
            # is a global pool: stop tracking. Otherwise inherit the largest rf among the inputs.
            y = flat_out[0] if flat_out else None
            if y is None or (spatial_in and (y.dim() < 4 or tuple(y.shape[-2:]) == (1, 1))):
                return out
            states = [self.state[t] for t in flat_in]
            new = (
                tuple(max(s[0][i] for s in states) for i in range(2)),
                tuple(max(s[1][i] for s in states) for i in range(2)),
            )
        for t in flat_out:
            self.state[t] = new
        return out


def measure(model: torch.nn.Module, input_size: int) -> tuple[int, int]:
    """``(macs, receptive_field)`` of ``model`` from one eval-mode forward of a (1, 3, input_size,
    input_size) zero image; the module's train/eval mode is restored afterwards.

    MACs are FlopCounterMode FLOPs / 2: it counts convolutions and matmuls (2 FLOPs per MAC) and ignores
    BN, activations and pooling, the usual convention. The receptive field is in pixels (the larger of
    the two axes); see the module docstring for the method.
    """
    x = torch.zeros(1, 3, input_size, input_size)
    was_training = model.training
    model.eval()  # BN must not update its running stats from a probe input
    try:
        # Both modes watch the same single forward pass (the counter at the dispatch level, below the RF mode).
        with torch.no_grad(), FlopCounterMode(display=False) as counter, _ReceptiveFieldMode(x) as rf_mode:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2, max(rf_mode.max_rf)


def model_table(names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """One row per model (default: every registered model, sorted).

    Row keys: ``name``, ``params`` (trainable, num_classes=10), ``macs`` (per image at the default input),
    ``receptive_field`` (pixels), ``input_size`` (pixels, square), ``description``. ``timm:<name>`` entries
    are accepted and measured at 32 pixels with their ImageNet stem.
    """
    rows = []
    for name in list_models() if names is None else names:
        if name.startswith(TIMM_PREFIX):
            input_size, description = 32, "timm model (untrained)"
        else:
            entry = get_entry(name)
            input_size, description = entry.input_size, entry.description
        model = create_model(name)
        macs, rf = measure(model, input_size)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "macs": macs,
                "receptive_field": rf,
                "input_size": input_size,
                "description": description,
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned plain-text table of ``model_table`` rows (numbers right-aligned, text left-aligned)."""
    headers = ("model", "params", "MMACs", "RF px", "input", "description")
    body = [
        (
            r["name"],
            f"{r['params']:,}",
            f"{r['macs'] / 1e6:,.1f}",
            str(r["receptive_field"]),
            f"{r['input_size']}x{r['input_size']}",
            r["description"],
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [headers, *body]) for i in range(len(headers))]
    right = (False, True, True, True, True, False)

    def fmt(line: tuple[str, ...]) -> str:
        cells = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right)]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(headers), rule, *(fmt(line) for line in body)])


def print_models(names: Iterable[str] | None = None) -> None:
    """Print ``format_table(model_table(names))``; the body of ``cifar-dist models``."""
    print(format_table(model_table(names)))
