"""Recording: the linearised blocks of a model and the forward hooks that record
their primal values during one pass (docs/method.md, section 7.2)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ...graph import ModelGraph, foreign_hooks
from ...graph.families import module_slots
from ...graph.gating import NodeKey
from ...graph.hooks import Hook, hooks_in_place
from ...influence import ExampleProblem
from .linearisation import LinearisedBlock, RowwiseMismatch


def rowwise_blocks(problem: ExampleProblem) -> Optional[List[LinearisedBlock]]:
    """The linearised blocks of ``problem``'s model, or None where the row-wise
    schedule does not apply: training mode, non-eager attention, relative position
    embeddings, cross-attention, or a layer whose named slots are missing or not of a
    recognised kind."""
    graph = problem.graph
    model, config, spec = graph.model, graph.model.config, graph.spec
    # Submodules are called here on (sources, steps, ...) rows and layers not at
    # all: a user's hooks would be skipped or see the wrong axes.
    if model.training or foreign_hooks(model):
        return None
    if (
        getattr(config, "_attn_implementation", "eager") != "eager"
        or getattr(config, "position_embedding_type", "absolute") != "absolute"
        or getattr(config, "is_decoder", False) and not spec.is_causal
        or getattr(config, "add_cross_attention", False)
    ):
        return None
    partial_rotary = getattr(config, "partial_rotary_factor", 1.0) != 1.0
    if spec.positions == "rotary" and partial_rotary:
        return None
    blocks = []
    for layer, attention in zip(graph.layers, graph.self_attentions):
        if not _recognised(graph, layer, attention):
            return None
        blocks.append(LinearisedBlock(graph, layer, attention))
    return blocks


def _recognised(graph: ModelGraph, layer: nn.Module, attention: nn.Module) -> bool:
    """Whether every named slot of ``layer`` is there and the projections are linear
    maps."""
    # Imported here: the model, hence transformers, is loaded by now, and importing
    # the package stays light.
    from transformers.pytorch_utils import Conv1D

    slots = graph.spec.block
    names = list(module_slots(slots))
    try:
        parts = {name: graph.part(layer, name) for name in names}
    except AttributeError:
        return False
    if getattr(slots, "mlp_function", None) and not callable(
        getattr(layer, slots.mlp_function, None)
    ):
        return False
    linear = [parts[n] for n in ("query", "key", "value", "qkv") if n in parts]
    if not all(isinstance(module, (nn.Linear, Conv1D)) for module in linear):
        return False
    return isinstance(getattr(attention, "scaling", None), (int, float))


class PrimalRecorder:
    """Forward hooks recording each layer application's ``h^{l-1}``, head contexts,
    attention weights (or, where the module does not return them, its mask) and rotary
    tables during the open reverse pass. Hooks sit once on each distinct module and
    record in call order, so a shared layer (ALBERT) records once per application."""

    def __init__(self, blocks: List[LinearisedBlock]) -> None:
        self.blocks = blocks
        self.recorded: Dict[str, List[Any]] = {
            "hidden": [],
            "contexts": [],
            "attention": [],
        }

    def hooks(self) -> List[Hook]:
        def hidden(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            self.recorded["hidden"].append(_first_argument(args, kwargs).detach())

        def contexts(module: nn.Module, args: Tuple, kwargs: Dict) -> None:
            self.recorded["contexts"].append(_first_argument(args, kwargs).detach())

        def attention(
            module: nn.Module, args: Tuple, kwargs: Dict, output: Any
        ) -> None:
            # Eager attention returns its weights (transformers 5); older versions
            # only with output_attentions, so the mask is kept to recompute them.
            returned = isinstance(output, tuple) and len(output) > 1
            # The first pass's weights are enough to check the slots (a wrong slot is
            # wrong in every pass); keeping every pass's would hold (steps, A, T, T)
            # per layer.
            first_pass = len(self.recorded["attention"]) < len(self.blocks)
            weights = output[1] if returned and first_pass else None
            mask = args[1] if len(args) > 1 else kwargs.get("attention_mask")
            rotation = kwargs.get("position_embeddings")
            self.recorded["attention"].append(
                (
                    None if weights is None else weights.detach(),
                    mask,
                    None if rotation is None else tuple(r.detach() for r in rotation),
                )
            )

        slot = "attention_output" if self.blocks[0].encoder else "output_projection"
        hooks: List[Hook] = []
        seen = set()
        for block in self.blocks:
            for module, function, pre in (
                (block.layer, hidden, True),
                (block.part(slot), contexts, True),
                (block.attention_module, attention, False),
            ):
                if (id(module), pre) not in seen:
                    seen.add((id(module), pre))
                    hooks.append(Hook(module, function, pre=pre, with_kwargs=True))
        return hooks

    def finish(self, gradients: Optional[Dict[NodeKey, Tensor]]) -> None:
        """Hand every block its steps' values (chunks concatenated) and, where given,
        its open gradients at the head contexts and the skip. Each block's chunks are
        let go once it has them, so the recording is never held twice."""
        count = len(self.blocks)
        per_block = [
            {name: values[number::count] for name, values in self.recorded.items()}
            for number in range(count)
        ]
        self.recorded = {}
        for number, block in enumerate(self.blocks):
            per_chunk = per_block[number]
            per_block[number] = {}
            sizes = [h.shape[0] for h in per_chunk["hidden"]]
            entries = per_chunk.pop("attention")
            hidden = _joined(per_chunk.pop("hidden"))
            contexts = _joined(per_chunk.pop("contexts"))
            rotation = None
            if block.rotary:
                tables = [entry[2] for entry in entries]
                if any(table is None for table in tables):
                    raise RowwiseMismatch(
                        "model: no rotary tables reached the attention module"
                    )
                rotation = tuple(
                    _stacked([table[i] for table in tables], sizes).to(hidden.dtype)
                    for i in range(2)
                )
                if rotation[0].shape[-1] != block.head_size:
                    raise RowwiseMismatch("model: partial rotary embeddings")
            block.finish(
                hidden,
                contexts,
                _stacked_bias([entry[1] for entry in entries], sizes, hidden.dtype),
                rotation,
                entries[0][0],
                *(
                    ()
                    if gradients is None
                    else (
                        gradients.pop(("heads", number + 1)),
                        gradients.pop(("skip", number + 1)),
                    )
                ),
            )


def record_primals(blocks: List[LinearisedBlock], run: Callable[[], Any]) -> Any:
    """Call ``run()`` (one pass of the blocks' model) with the recording hooks of
    :class:`~.driver.RecordedModel` in place and hand every block the primal values
    of that pass (no gradients); return what ``run`` returns. The contribution routes
    (:mod:`.routes.contributions`) read the blocks' ``hidden``, ``values`` and
    ``attention`` this way."""
    recorder = PrimalRecorder(blocks)
    with hooks_in_place(recorder.hooks()):
        result = run()
    recorder.finish(None)
    return result


def _joined(parts: List[Tensor]) -> Tensor:
    """The chunks of one value in step order (no copy for a single chunk)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _stacked(parts: List[Tensor], sizes: List[int]) -> Tensor:
    """Per-chunk values (rows, ...) of every step, as one tensor whose first axis is 1
    where every row holds the same (the usual case for masks and rotary tables: each
    step of one example shares them), else one row per step."""
    first = parts[0][:1]
    if all(torch.equal(part, first.expand_as(part)) for part in parts):
        return first.clone()  # not a view that keeps a whole chunk's tensor alive
    return torch.cat(
        [part.expand(size, *part.shape[1:]) for part, size in zip(parts, sizes)]
    )


def _stacked_bias(
    masks: List[Optional[Tensor]], sizes: List[int], dtype: torch.dtype
) -> Optional[Tensor]:
    """The attention module's mask of every chunk as one additive bias (steps or 1,
    heads or 1, T, T), a key-only mask spread over the queries; None without a
    mask."""
    if all(mask is None for mask in masks):
        return None
    if any(mask is None for mask in masks):
        raise RowwiseMismatch("model: a mask reached the attention in some passes only")
    length = masks[0].shape[-1]
    additive = [
        (
            torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                ~mask, float("-inf")
            )
            if mask.dtype == torch.bool
            else mask.to(dtype)
        ).expand(*mask.shape[:-2], length, length)  # rows and columns are indexed
        for mask in masks
    ]
    return _stacked(additive, sizes)


def _first_argument(args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]
def required_blocks(
    problem: ExampleProblem,
    who: str = "the row-wise schedule",
    hooks_fix: str = "use the forward-mode schedule, which runs them",
    fix: str = "use the forward-mode schedule",
    hooks_argument: str = "schedule",
) -> List[LinearisedBlock]:
    """:func:`rowwise_blocks` of ``problem``, or a one-line refusal that says why
    there are none: a user's hooks (named; the blocks call submodules directly and
    would skip them), or the model's kind. ``who`` names the caller and the fixes
    say what to use instead; ``hooks_argument`` is what the hooks' refusal names."""
    blocks = rowwise_blocks(problem)
    if blocks is not None:
        return blocks
    hooked = foreign_hooks(problem.graph.model)
    if hooked:
        raise ValueError(
            f"{hooks_argument}: {who} cannot run the hooks on {', '.join(hooked)}; "
            f"{hooks_fix}"
        )
    raise ValueError(
        f"problem: {who} needs a registered family in eval mode with eager, "
        f"absolute-position or rotary self-attention; {fix}"
    )
