"""Attention capture and the per-layer matrices reference routes search on
(docs/method.md, section 8).

Direction convention: ``attention[l - 1, n, q, k]`` is head ``n`` of layer ``l`` at
query ``q`` and key ``k``; a row is a query, and information moves from the key (column)
to the query (row).
"""

from __future__ import annotations

from typing import Any, Callable, List, Literal, Optional

import torch
from torch import Tensor, nn

from ..utils._captum_compat import run_forward
from ..graph import ModelGraph, analysis_mode, model_graph
from ..graph.hooks import Hook, hooks_in_place

#: How heads are aggregated into one matrix per layer.
HeadAggregation = Literal["mean", "max"]


def self_attention_modules(graph: ModelGraph) -> List[nn.Module]:
    """Per layer, the module whose output holds the attention probabilities.

    Raises:
        ValueError: when the adapter names no self-attention modules.
    """
    modules = getattr(graph, "self_attentions", None)
    if not modules:
        raise ValueError(
            f"capture_attention: no self-attention hook point for family "
            f"{graph.family!r}; set graph.self_attentions in its adapter"
        )
    return list(modules)


def _attention_weights(output: Any) -> Tensor:
    """The (B, A, T, T) probabilities from a self-attention module's output."""
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if not isinstance(weights, Tensor):
        raise RuntimeError(
            "capture_attention: the self-attention module returned no attention "
            "weights; it must return (attn_output, attn_weights) under eager "
            "attention (transformers >= 5)"
        )
    return weights


def capture_attention(
    model: nn.Module,
    forward_func: Callable,
    input_ids: Tensor,
    additional_forward_args: Any = None,
    graph: Optional[ModelGraph] = None,
) -> Tensor:
    """Attention probabilities of every layer and head for one plain forward pass.

    Forward hooks on each layer's self-attention module (the adapter's
    ``graph.self_attentions``: ``layer.attention.self`` for BERT, RoBERTa and ELECTRA)
    read the weights that module returns, in call order. The model runs in eval mode
    with eager attention (:func:`analysis_mode`); its settings and hooks are restored
    afterwards.

    Args:
        model (nn.Module): The Hugging Face model that ``forward_func`` runs.
        forward_func (Callable): ``forward_func(input_ids, *additional_forward_args)``.
        input_ids (Tensor): (B, T) token ids.
        additional_forward_args (Any, optional): Extra arguments of ``forward_func``.
            Default: None
        graph (ModelGraph, optional): ``model``'s graph when the caller has it (an
            :class:`InfluencePatterns`' ``graph``). Default: None (built here)

    Returns:
        Tensor: (B, L, A, T, T) probabilities, indexed (example, layer - 1, head, query,
        key); each row (query) sums to 1 over keys.
    """
    graph = graph or model_graph(model)
    captured: List[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(_attention_weights(output).detach())

    # One hook per distinct module, read in call order: a layer shared across depths
    # (ALBERT) reports once per application.
    modules = list({id(m): m for m in self_attention_modules(graph)}.values())
    with analysis_mode(model), hooks_in_place(Hook(m, hook) for m in modules):
        with torch.no_grad():
            run_forward(forward_func, input_ids, None, additional_forward_args)
    if len(captured) != graph.num_layers:
        raise RuntimeError(
            f"capture_attention: expected {graph.num_layers} attention calls, got "
            f"{len(captured)}; forward_func must run the model once"
        )
    return torch.stack(captured, dim=1)


def attention_matrices(
    attention: Tensor,
    heads: HeadAggregation = "mean",
    residual: bool = False,
    normalize: bool = False,
) -> Tensor:
    """Aggregate heads into one (..., L, T, T) matrix per layer.

    Args:
        attention (Tensor): (..., L, A, T, T) probabilities (query rows, key columns).
        heads (str, optional): ``"mean"`` or ``"max"`` over heads. Default: ``"mean"``
        residual (bool, optional): Replace ``M`` by ``(M + I) / 2`` for the skip
            connection (Abnar & Zuidema 2020). Default: False
        normalize (bool, optional): Divide each row by its sum. Default: False

    Returns:
        Tensor: (..., L, T, T) matrices ``M^l[query, key]``.
    """
    if heads == "mean":
        matrices = attention.mean(-3)
    elif heads == "max":
        matrices = attention.amax(-3)
    else:
        raise ValueError(f"heads must be 'mean' or 'max', got {heads!r}")
    if residual:
        eye = torch.eye(
            matrices.shape[-1], dtype=matrices.dtype, device=matrices.device
        )
        matrices = (matrices + eye) / 2
    if normalize:
        matrices = matrices / matrices.sum(-1, keepdim=True).clamp_min(1e-12)
    return matrices


def rollout_matrices(attention: Tensor) -> Tensor:
    """Abnar & Zuidema's matrices: head mean, ``(A + I) / 2``, rows normalized."""
    return attention_matrices(attention, "mean", residual=True, normalize=True)


def attention_rollout(attention: Tensor) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): ``R = Ab^L ... Ab^1``.

    Args:
        attention (Tensor): (L, A, T, T) probabilities of one example.

    Returns:
        Tensor: (T, T) ``R[t, i]``, the rollout score of source ``i`` for output ``t``
        (rows sum to 1).
    """
    matrices = rollout_matrices(attention)
    rollout = torch.eye(
        matrices.shape[-1], dtype=matrices.dtype, device=matrices.device
    )
    for matrix in matrices:
        rollout = matrix @ rollout
    return rollout
