"""The controller contract: what a pass does at each node of the graph.

A :class:`NodeController` receives every node's value as the hooks of a graph
(:mod:`.layouts`) hand it over, and may replace it; the gated passes of
:mod:`.gating` are controllers.
"""

from __future__ import annotations

from typing import Tuple

from torch import Tensor


class StopForward(Exception):
    """Raised from a hook once a pass has read everything it needs."""


class NodeController:
    """Decides what happens at each node during one forward pass. The default is
    identity.

    ``word_embeddings`` receives the word-embedding module's output and may replace it
    (this is where inputs are interpolated). ``embedding_node`` receives ``h^layer``
    (layer 0 is the embedding block's output). ``attention_inputs`` receives the head
    contexts of ``layer`` as (rows, T, heads, head_size) and the skip input as (rows, T,
    D).
    """

    def word_embeddings(self, output: Tensor) -> Tensor:
        return output

    def embedding_node(self, layer: int, hidden: Tensor) -> Tensor:
        return hidden

    def attention_inputs(
        self, layer: int, heads: Tensor, skip: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return heads, skip

    def mlp_inputs(
        self, layer: int, mlp: Tensor, residual: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Only with ``graph.split_mlp``: the MLP branch's output (or, for BERT, its
        intermediate activation) and the residual around it, (rows, T, ...)."""
        return mlp, residual
