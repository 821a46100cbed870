"""Gating: node controllers that cut, read or replace the nodes of the graph.

:class:`GatedPass` is the :class:`~.controller.NodeController` of every gated pass:
it substitutes the interpolated word embeddings, applies static :class:`Gates` and
records node values. The forward-mode helpers below read and replace tangents.

Gating follows docs/method.md, section 4: a node value ``z`` outside the allowed paths
becomes
``z.detach() + keep * (z - z.detach())`` with ``keep = 0``. Forward values are unchanged
bit for bit; reverse gradients and forward-mode tangents only flow through kept nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from .controller import NodeController, StopForward


def gate(value: Tensor, keep: Tensor | float) -> Tensor:
    """Keep derivatives of ``value`` where ``keep`` is 1, cut them where it is 0.

    Always returns a new tensor, so that a gradient taken with respect to the result
    counts only the branch that uses it.
    """
    detached = value.detach()
    return detached + keep * (value - detached)


def tangent_of(value: Tensor) -> Tensor:
    """The forward-mode tangent of ``value`` (zeros when no tangent reached it)."""
    tangent = fwAD.unpack_dual(value).tangent
    return torch.zeros_like(value) if tangent is None else tangent


def with_tangent(value: Tensor, tangent: Tensor) -> Tensor:
    """``value``'s primal with a new tangent (forward values untouched)."""
    return fwAD.make_dual(fwAD.unpack_dual(value).primal, tangent)


@dataclass
class Gates:
    """Keep masks (1 keep, 0 cut) per group of rows; a missing entry leaves a node open.

    Every mask has a leading group dimension G (a group is one source, or one pattern);
    a pass maps each batch row to its group.

    Attributes:
        embedding (dict): layer (0..L) -> (G, T) masks on ``h^layer``.
        heads (dict): layer (1..L) -> (G, T, A) masks on head contexts.
        skip (dict): layer (1..L) -> (G, T) masks on the skip input.
        mlp (dict): layer (1..L) -> (G, T) masks on the MLP branch (split graphs).
        residual (dict): layer (1..L) -> (G, T) masks on the residual around the MLP.
    """

    embedding: Dict[int, Tensor] = field(default_factory=dict)
    heads: Dict[int, Tensor] = field(default_factory=dict)
    skip: Dict[int, Tensor] = field(default_factory=dict)
    mlp: Dict[int, Tensor] = field(default_factory=dict)
    residual: Dict[int, Tensor] = field(default_factory=dict)


NodeKey = Tuple[str, int]
"""A node set of one layer: ("embedding", l), ("heads", l), ("skip", l), and in split
graphs ("mlp", l) and ("residual", l)."""


class GatedPass(NodeController):
    """Substitute the word embeddings, apply static :class:`Gates`, record node values.

    Args:
        inputs_embeds (Tensor): (rows, T, D) replacement for the word-embedding output
            (a dual tensor for forward mode, or a tensor requiring grad for reverse
            mode).
        groups (Tensor): (rows,) index of each row's group in the gates' masks.
        gates (Gates, optional): Masks to apply. Default: everything open.
        record (bool): Keep every node value (as a fresh, gated tensor) in
            :attr:`values`, keyed by :data:`NodeKey`, for reading.
        stop_after (int, optional): Raise :class:`StopForward` once ``h^stop_after`` is
            recorded, skipping the rest of the model.
    """

    def __init__(
        self,
        inputs_embeds: Tensor,
        groups: Tensor,
        gates: Optional[Gates] = None,
        record: bool = True,
        stop_after: Optional[int] = None,
    ) -> None:
        self.inputs_embeds = inputs_embeds
        self.groups = groups
        self.gates = gates or Gates()
        self.record = record
        self.stop_after = stop_after
        self.values: Dict[NodeKey, Tensor] = {}

    def word_embeddings(self, output: Tensor) -> Tensor:
        return self.inputs_embeds

    def _gated(self, key: NodeKey, value: Tensor, mask: Optional[Tensor]) -> Tensor:
        if mask is not None:
            keep = mask[self.groups].to(value.dtype)
            value = gate(value, keep.view(*keep.shape, 1))
        elif self.record:
            value = gate(value, 1.0)
        if self.record:
            self.values[key] = value
        return value

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        hidden = self._gated(
            ("embedding", layer), hidden, self.gates.embedding.get(layer)
        )
        if layer == self.stop_after:
            raise StopForward
        return hidden

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return (
            self._gated(("heads", layer), heads, self.gates.heads.get(layer)),
            self._gated(("skip", layer), skip, self.gates.skip.get(layer)),
        )

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return (
            self._gated(("mlp", layer), mlp, self.gates.mlp.get(layer)),
            self._gated(("residual", layer), residual, self.gates.residual.get(layer)),
        )
