"""Argument checks shared by every entry point (attribution, routes, ablation, CLI).

Each check raises a one-line error naming the argument and the fix, before any work.
"""

from __future__ import annotations

import numbers
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .utils._captum_compat import TargetType
from .graph import ModelGraph
from .quadrature import IntegrationSettings, check_rule
from .results import LEVELS

PositionsType = Union[None, int, Sequence[int], Tensor]
SourcesType = Union[None, Sequence[int], Sequence[Sequence[int]]]


def is_int(value: Any) -> bool:
    """An int (Python or numpy integer, not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _as_list(value: Any) -> Any:
    """Tensors and numpy arrays as (nested) Python lists; anything else unchanged."""
    return value.tolist() if hasattr(value, "tolist") and not is_int(value) else value


def validate_layer(layer: Any, graph: ModelGraph) -> torch.nn.Module:
    """``layer`` if its output can be interpolated (:meth:`.ModelGraph.
    interpolation_layers`)."""
    choices = graph.interpolation_layers()
    if not any(layer is module for module in choices.values()):
        named = ", ".join(f"model.{name}" for name in choices)
        raise ValueError(
            f"layer: {type(layer).__name__} is not a layer whose output can be "
            f"interpolated in this {graph.family} model; pass one of {named} (the "
            "word embeddings or the embedding block, as given to "
            "LayerIntegratedGradients)"
        )
    return layer


def validate_inputs(inputs: Any, vocab_size: int) -> int:
    if not isinstance(inputs, Tensor) or inputs.dim() != 2:
        shape = (
            tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        )
        raise ValueError(f"inputs: expected (B, T) token ids, got {shape}")
    if inputs.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(
            f"inputs: expected integer token ids, got dtype {inputs.dtype}; pass "
            "tokenizer(...)['input_ids'] rather than embeddings"
        )
    if inputs.numel() == 0:
        raise ValueError("inputs: empty batch")
    check_vocab("inputs", inputs, vocab_size)
    return inputs.shape[0]


def check_vocab(name: str, ids: Tensor, vocab_size: int) -> None:
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(
            f"{name}: token ids must lie in [0, {vocab_size}) (the model's "
            "vocabulary), got "
            f"range [{int(ids.min())}, {int(ids.max())}]"
        )


def validate_baselines(
    baselines: Any, inputs: Tensor, vocab_size: int
) -> Optional[Tensor]:
    if baselines is None:  # Captum's LIG: a zero input, token id 0 everywhere
        baselines = 0
    if isinstance(baselines, bool) or (
        isinstance(baselines, Tensor) and baselines.dtype == torch.bool
    ):
        raise TypeError(
            "baselines: got a bool, which would be taken as token id 0 or 1; pass the "
            "baseline token id (e.g. tokenizer.mask_token_id) or None"
        )
    if is_int(baselines):
        baselines = int(baselines)
    if not isinstance(baselines, (int, Tensor)):
        raise TypeError(
            f"baselines: expected None, an int token id or a tensor of ids, got "
            f"{type(baselines).__name__}"
        )
    ids = torch.as_tensor(baselines, device=inputs.device)
    if ids.is_floating_point() or ids.is_complex():
        raise TypeError(
            f"baselines: expected integer token ids, got dtype {ids.dtype}; for a zero "
            "embedding baseline pass None"
        )
    batch, length = inputs.shape
    if ids.dim() == 0:
        ids = ids.expand(batch, length)
    elif ids.dim() == 1 and ids.shape[0] == length:
        ids = ids.expand(batch, length)
    elif ids.dim() == 2 and ids.shape[1] == length and ids.shape[0] in (1, batch):
        ids = ids.expand(batch, length)
    else:
        raise ValueError(
            f"baselines: shape {tuple(ids.shape)} does not match inputs "
            f"{tuple(inputs.shape)};"
            f" use an int, ({length},), (1, {length}) or ({batch}, {length})"
        )
    check_vocab("baselines", ids, vocab_size)
    return ids.long()


def validate_output_positions(
    output_position: Any, batch: int, length: int
) -> List[Optional[int]]:
    if output_position is None:
        return [None] * batch
    if isinstance(output_position, bool):
        raise TypeError("output_position: expected an int or (B,) ints, got a bool")
    if is_int(output_position):
        positions = [int(output_position)] * batch
    else:
        values = torch.as_tensor(_as_list(output_position)).reshape(-1)
        if (
            values.is_floating_point()
            or values.dtype == torch.bool
            or (values.numel() != batch)
        ):
            raise ValueError(
                f"output_position: expected an int or {batch} ints (one per example), "
                "got "
                f"{output_position!r}"
            )
        positions = [int(v) for v in values]
    for b, position in enumerate(positions):
        if position is not None and not 0 <= position < length:
            raise ValueError(
                f"output_position: {position} (example {b}) is out of range for "
                "sequences "
                f"of length {length}; use 0..{length - 1}"
            )
    return positions


def validate_sources(
    sources: SourcesType,
    positions: List[Optional[int]],
    length: int,
    causal: bool = False,
    output_differs: Optional[Sequence[bool]] = None,
    attention_mask: Optional[Tensor] = None,
) -> List[List[int]]:
    """Each example's source positions.

    The default sources are every position, but: in a causal model, positions after
    the output position (they cannot influence it); the output position itself where
    ``output_differs[b]`` is False (its embedding equals the baseline's, e.g. a [MASK]
    explained against a [MASK] baseline: its influence is zero); and positions where
    ``attention_mask`` (B, T) is 0 (padding).
    """
    batch = len(positions)
    differs = [True] * batch if output_differs is None else list(output_differs)
    if sources is None:
        rows = []
        for b, t in enumerate(positions):
            rows.append(
                [
                    j
                    for j in range(length)
                    if (t is None or j != t or differs[b])
                    and (t is None or j <= t or not causal)
                    and (attention_mask is None or bool(attention_mask[b, j]))
                ]
            )
            if not rows[-1]:
                raise ValueError(
                    f"sources: example {b} has no default source: "
                    + (
                        f"in a causal model only positions up to output_position {t} "
                        "can influence it and "
                        if causal and t is not None
                        else ""
                    )
                    + "no such position is unmasked with an embedding that differs "
                    "from the baseline; pass another output_position or baseline"
                )
        return rows
    sources = _as_list(sources)
    if is_int(sources):
        sources = [sources]
    rows = (
        [list(row) for row in sources]
        if sources and all(isinstance(s, (list, tuple)) for s in sources)
        else [list(sources)] * batch
    )
    if len(rows) != batch:
        raise ValueError(
            f"sources: expected one list per example ({batch}), got {len(rows)}"
        )
    for b, row in enumerate(rows):
        if not row:
            raise ValueError(f"sources: example {b} has no source positions")
        for j in row:
            if not is_int(j) or not 0 <= j < length:
                raise ValueError(
                    f"sources: {j!r} (example {b}) is not a position in 0..{length - 1}"
                )
        row[:] = [int(j) for j in row]
        if len(set(row)) != len(row):
            raise ValueError(f"sources: example {b} lists a position twice: {row}")
        if positions[b] is None:
            continue
        if causal and max(row) > positions[b]:
            raise ValueError(
                f"sources: example {b} lists position {max(row)} after the output "
                "position "
                f"{positions[b]}; in a causal model it cannot influence the output"
            )
    return rows


def validate_settings(
    n_steps: Any, method: str, internal_batch_size: Any
) -> IntegrationSettings:
    """Check the settings once; return them as one frozen object (plain ints)."""
    if not is_int(n_steps) or n_steps < 1:
        raise ValueError(f"n_steps: expected an int >= 1, got {n_steps!r}")
    check_rule(method, n_steps)
    if internal_batch_size is not None and (
        not is_int(internal_batch_size) or internal_batch_size < 1
    ):
        raise ValueError(
            "internal_batch_size: expected None or an int >= 1, "
            f"got {internal_batch_size!r}"
        )
    return IntegrationSettings(
        int(n_steps),
        method,
        None if internal_batch_size is None else int(internal_batch_size),
    )


def validate_attention_mask(
    attention_mask: Any, inputs: Tensor, causal: bool = False
) -> Optional[Tensor]:
    """None, or a (B, T) 0/1 mask on the inputs' device.

    A causal model needs right padding: with padding before the tokens the decoder's
    positions shift and its eager attention has rows with nothing to attend to.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor) or tuple(attention_mask.shape) != tuple(
        inputs.shape
    ):
        shape = getattr(attention_mask, "shape", type(attention_mask).__name__)
        raise ValueError(
            f"attention_mask: expected a {tuple(inputs.shape)} tensor like the inputs, "
            f"got {tuple(shape) if isinstance(shape, torch.Size) else shape}"
        )
    if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected 0 (padding) or 1 (token) entries")
    if not bool(attention_mask.any(1).all()):
        raise ValueError("attention_mask: an example has every position masked")
    if causal:
        gaps = (attention_mask[:, :-1] == 0) & (attention_mask[:, 1:] == 1)
        if bool(gaps.any()):
            b = int(gaps.any(1).nonzero()[0])
            raise ValueError(
                f"attention_mask: example {b} has padding before a token (left "
                "padding); a causal model needs right padding: tokenize with "
                "tokenizer.padding_side = 'right' and put output_position at each "
                "example's last token"
            )
    return attention_mask.to(inputs.device)


def validate_target(target: Any) -> TargetType:
    """Captum's target with numpy integers made Python ints (Captum checks ``int``)."""
    if is_int(target):
        return int(target)
    if isinstance(target, tuple):
        return tuple(int(t) if is_int(t) else t for t in target)
    if isinstance(target, list):
        return [validate_target(t) for t in target]
    if hasattr(target, "dtype") and not isinstance(target, Tensor):  # numpy array
        return torch.as_tensor(target)
    return target


def validate_beam_width(beam_width: Any) -> int:
    """The beam width as a Python int (numpy integers accepted)."""
    if not is_int(beam_width) or beam_width < 1:
        raise ValueError(
            f"beam_width: expected an int >= 1 (1 is the greedy search), got "
            f"{beam_width!r}"
        )
    return int(beam_width)


def example_target(target: TargetType, b: int, batch: int) -> TargetType:
    """This example's part of a Captum target."""
    if isinstance(target, Tensor) and target.numel() > 1:
        return (
            int(target.reshape(-1)[b])
            if target.dim() == 1
            else tuple(target[b].tolist())
        )
    if isinstance(target, Tensor):
        return int(target.item())
    if isinstance(target, list):
        return target[b]
    return target


def example_args(additional_forward_args: Any, b: int, batch: int) -> Tuple[Any, ...]:
    """This example's extra arguments (tensors with a batch dimension sliced)."""
    if additional_forward_args is None:
        return ()
    args = (
        additional_forward_args
        if isinstance(additional_forward_args, tuple)
        else (additional_forward_args,)
    )
    return tuple(
        (
            arg[b : b + 1]
            if isinstance(arg, Tensor) and arg.dim() and arg.shape[0] == batch
            else arg
        )
        for arg in args
    )


#: What ``baselines=None`` stands for, in metadata and printed output.
NONE_BASELINE = "token id 0 (baselines=None, as in Captum's LayerIntegratedGradients)"


def describe_baseline(baselines: Any) -> Any:
    if baselines is None:
        return NONE_BASELINE
    if isinstance(baselines, Tensor):
        return baselines.tolist()
    return int(baselines) if is_int(baselines) else baselines


def validate_patterns(
    patterns: Any, batch: int, length: int, graph: ModelGraph, level: str
) -> None:
    """Refuse patterns that no route of ``graph`` can take (docs/method.md, section 6).

    A pattern needs L + 1 positions in 0..T-1 starting at its source; at the attention
    level also one node per layer at the route's position, a head in 0..A-1, or the
    skip where the route stays (a skip never changes position); the MLP or residual
    only in split graphs. In a causal model a route never moves backwards.
    """
    if level not in LEVELS:
        raise ValueError(f"level: expected 'attention' or 'embedding', got {level!r}")
    rows = patterns if isinstance(patterns, (list, tuple)) else None
    if rows is None or not all(
        isinstance(row, (list, tuple)) and all(hasattr(p, "positions") for p in row)
        for row in rows
    ):
        raise TypeError(
            "patterns: expected one list of Pattern per example, e.g. [[pattern]] "
            f"for one example, got {type(patterns).__name__}"
        )
    if len(patterns) != batch:
        raise ValueError(
            f"patterns: expected one list per example ({batch}), got {len(patterns)}"
        )
    layers, heads = graph.num_layers, graph.num_heads
    for b, row in enumerate(patterns):
        for p, pattern in enumerate(row):
            where = f"patterns: example {b}, pattern {p}"
            positions = list(pattern.positions)
            if len(positions) != layers + 1:
                raise ValueError(
                    f"{where} has {len(positions)} positions; each pattern needs "
                    f"L + 1 = {layers + 1} (j_0 .. j_L)"
                )
            if not all(is_int(j) and 0 <= j < length for j in positions):
                raise ValueError(
                    f"{where}: positions {positions} must lie in 0..{length - 1}"
                )
            if pattern.source != positions[0]:
                raise ValueError(
                    f"{where}: source {pattern.source} differs from positions[0] = "
                    f"{positions[0]}; a route starts at its source"
                )
            if graph.is_causal and any(
                later < earlier for earlier, later in zip(positions, positions[1:])
            ):
                raise ValueError(
                    f"{where}: positions {positions} move backwards; in a causal "
                    "model influence only flows to later positions"
                )
            if level == "attention":
                _check_nodes(where, pattern, positions, heads, graph.split_mlp)


def _check_nodes(
    where: str, pattern: Any, positions: List[int], heads: int, split_mlp: bool
) -> None:
    """The attention-level nodes of one pattern (see :func:`validate_patterns`)."""
    nodes = list(pattern.nodes)
    if len(nodes) != len(positions) - 1:
        raise ValueError(
            f"{where} has {len(nodes)} nodes; level='attention' needs one per layer "
            f"({len(positions) - 1}), or score it with level='embedding'"
        )
    for layer, node in enumerate(nodes, start=1):
        at = f"{where}, layer {layer}"
        if node.layer != layer or node.position != positions[layer]:
            raise ValueError(
                f"{at}: node (layer {node.layer}, position {node.position}) is not "
                f"on the route (layer {layer}, position {positions[layer]})"
            )
        if node.kind == "head" and not (is_int(node.head) and 0 <= node.head < heads):
            raise ValueError(
                f"{at}: head {node.head!r} does not exist; heads are 0..{heads - 1}"
            )
        if node.kind == "skip" and positions[layer] != positions[layer - 1]:
            raise ValueError(
                f"{at}: a skip where the route moves from position "
                f"{positions[layer - 1]} to {positions[layer]}; the skip keeps the "
                "position, so choose a head there"
            )
        if node.ffn is not None and not split_mlp:
            raise ValueError(
                f"{at} chooses an MLP or residual node; score these patterns with "
                "InfluencePatterns(..., split_mlp=True)"
            )
