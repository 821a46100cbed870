"""Guided pattern refinement (docs/method.md, section 6): the decision rules and the
search state, shared by every search so that they choose and refuse alike.

The decision rules (sign; position choice, in a causal model never backwards nor past
the output position; head-or-skip choice, where a skip never changes position), the
checks (finite influences, an output position the QoI reads) and :class:`SearchState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..influence import ExampleProblem
from ..results import Pattern, PatternNode

# ---------------------------------------------------------------------- decision rules
def search_sign(layer_one_influence: Tensor) -> Tensor:
    """+1, or -1 where the source's total influence (sum over layer 1) is negative."""
    total = layer_one_influence.sum(-1)
    return torch.where(total < 0, -torch.ones_like(total), torch.ones_like(total))


def choose_positions(
    influence: Tensor,
    sign: Tensor,
    earliest: Optional[Tensor] = None,
    latest: Optional[int] = None,
) -> Tensor:
    """Stage A: the position with the largest sign-adjusted influence (ties: lowest j).

    ``earliest`` (S,) forbids positions before it and ``latest`` positions after it
    (causal models: a route never moves backwards, nor past the output position; every
    influence there is exactly zero, which would otherwise beat a negative one).
    """
    adjusted = sign[:, None] * influence
    positions = torch.arange(influence.shape[-1], device=influence.device)
    if earliest is not None:
        adjusted = adjusted.masked_fill(positions < earliest[:, None], float("-inf"))
    if latest is not None:
        adjusted = adjusted.masked_fill(positions > latest, float("-inf"))
    return adjusted.argmax(-1)


def choose_nodes(
    head_influence: Tensor,
    skip_influence: Tensor,
    sign: Tensor,
    moved: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor]:
    """Stage B: the best head if strictly better than the skip, else the skip.

    ``moved`` (S,) marks routes whose position changes at this layer: a skip never
    changes position, so there the best head is chosen whatever its influence (all
    zero: head 0).

    Returns:
        (is_head, head): (S,) bools and (S,) head indices (meaningful where is_head).
    """
    adjusted = sign[:, None] * head_influence
    head = adjusted.argmax(-1)
    best = adjusted.gather(1, head[:, None])[:, 0]
    is_head = best > sign * skip_influence
    if moved is not None:
        is_head = is_head | moved
    return is_head, head


def check_finite(values: Tensor, what: str) -> None:
    """Raise a clear error for NaN or infinite influences (no made-up routes)."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError(
            f"model: {what} is NaN or infinite: the model or the QoI overflows along "
            "the path from the baseline to the input. Check forward_func for NaN/inf "
            "outputs, use float32/float64 weights, or a baseline closer to the input"
        )


def check_output_read(influence: Tensor, output_position: int) -> None:
    """Stage A at the last layer: the QoI must read ``h^L`` at ``output_position``.

    ``influence`` (S, T) is stage A's open influence through ``h^L_j``. Exactly zero
    at the output position for every source while non-zero elsewhere means
    ``dQoI/dh^L`` vanishes there: the QoI reads other positions (which are named).
    Sources without any influence (padding, tokens equal to the baseline) say nothing
    and raise nothing.
    """
    column = influence[:, output_position]
    if bool((column == 0).all()) and bool((influence != 0).any()):
        read = (influence != 0).any(0).nonzero().flatten().tolist()
        raise ValueError(
            f"output_position: the QoI does not read position {output_position} "
            f"(no source has influence through h^L there); it reads position(s) "
            f"{read}. Pass the "
            "position the QoI reads, or None for a QoI reading several positions"
        )


def one_hot_positions(positions: Tensor, num_positions: int) -> Tensor:
    """(S,) positions -> (S, T) float masks."""
    return torch.nn.functional.one_hot(positions, num_positions).float()


# ----------------------------------------------------------------------- search state
@dataclass
class SearchState:
    """Choices and candidate influences of every source of one example."""

    sign: Tensor  # (S,)
    positions: Tensor  # (S, L + 1)
    position_candidates: Tensor  # (S, L, T)
    is_head: Tensor  # (S, L)
    head: Tensor  # (S, L)
    node_candidates: Tensor  # (S, L, A + 1), the skip last
    is_mlp: Tensor  # (S, L), with the MLP split off
    ffn_candidates: Tensor  # (S, L, 2): [I(mlp), I(residual)]
    causal: bool = False
    split_mlp: bool = False

    @classmethod
    def empty(cls, problem: ExampleProblem, sources: Tensor) -> "SearchState":
        graph = problem.graph
        count, layers = sources.shape[0], graph.num_layers
        options = {"dtype": problem.delta.dtype, "device": problem.delta.device}
        positions = torch.zeros(
            count, layers + 1, dtype=torch.long, device=sources.device
        )
        positions[:, 0] = sources
        return cls(
            sign=torch.ones(count, **options),
            positions=positions,
            position_candidates=torch.zeros(
                count, layers, problem.num_positions, **options
            ),
            is_head=torch.zeros(count, layers, dtype=torch.bool, device=sources.device),
            head=torch.zeros(count, layers, dtype=torch.long, device=sources.device),
            node_candidates=torch.zeros(count, layers, graph.num_heads + 1, **options),
            is_mlp=torch.zeros(count, layers, dtype=torch.bool, device=sources.device),
            ffn_candidates=torch.zeros(count, layers, 2, **options),
            causal=graph.is_causal,
            split_mlp=graph.split_mlp,
        )

    def record_positions(
        self,
        index: Tensor,
        layer: int,
        influence: Tensor,
        output_position: Optional[int],
    ) -> Tensor:
        """Store stage A's influences at ``layer``; choose and return ``j_layer``."""
        check_finite(influence, f"stage A's influence at layer {layer}")
        self.position_candidates[index, layer - 1] = influence
        if layer == 1:
            self.sign[index] = search_sign(influence)
        last = layer == self.positions.shape[1] - 1
        if last and output_position is not None:
            check_output_read(influence, output_position)
            chosen = torch.full_like(index, output_position)
        else:  # j_L is searched too when the QoI reads every position (pooling)
            earliest = self.positions[index, layer - 1] if self.causal else None
            latest = output_position if self.causal else None
            chosen = choose_positions(influence, self.sign[index], earliest, latest)
        self.positions[index, layer] = chosen
        return chosen

    def record_nodes(
        self, index: Tensor, layer: int, head_influence: Tensor, skip_influence: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Store stage B's influences at ``layer`` and choose the node; returns it.

        Where the route moves (``j_{layer-1} != j_layer``) only heads are candidates.
        """
        self.node_candidates[index, layer - 1] = torch.cat(
            [head_influence, skip_influence[:, None]], dim=1
        )
        check_finite(
            self.node_candidates[index, layer - 1],
            f"stage B's influence at layer {layer}",
        )
        moved = self.positions[index, layer - 1] != self.positions[index, layer]
        is_head, head = choose_nodes(
            head_influence, skip_influence, self.sign[index], moved
        )
        self.is_head[index, layer - 1], self.head[index, layer - 1] = is_head, head
        return is_head, head

    def record_ffn(
        self, index: Tensor, layer: int, mlp_influence: Tensor, residual: Tensor
    ) -> Tensor:
        """Store the MLP-or-residual influences at ``layer`` and choose; ``True``
        where the MLP is strictly better (ties go to the residual, like the skip)."""
        self.ffn_candidates[index, layer - 1] = torch.stack(
            [mlp_influence, residual], dim=1
        )
        sign = self.sign[index]
        is_mlp = sign * mlp_influence > sign * residual
        self.is_mlp[index, layer - 1] = is_mlp
        return is_mlp

    def patterns(self, token_influence: Tensor) -> List[Pattern]:
        """One :class:`Pattern` per source, from the recorded choices."""
        patterns = []
        layers = self.positions.shape[1] - 1
        for s in range(self.positions.shape[0]):
            positions = self.positions[s].tolist()
            chosen_positions = [
                float(self.position_candidates[s, k - 1, positions[k]])
                for k in range(1, layers + 1)
            ]
            nodes = []
            for k in range(1, layers + 1):
                head = int(self.head[s, k - 1]) if self.is_head[s, k - 1] else None
                column = head if head is not None else -1
                node = PatternNode(
                    layer=k,
                    position=positions[k],
                    kind="skip" if head is None else "head",
                    head=head,
                    influence=float(self.node_candidates[s, k - 1, column]),
                )
                if self.split_mlp:
                    through = bool(self.is_mlp[s, k - 1])
                    node.ffn = "mlp" if through else "residual"
                    node.ffn_influence = float(
                        self.ffn_candidates[s, k - 1, 0 if through else 1]
                    )
                nodes.append(node)
            patterns.append(
                Pattern(
                    source=positions[0],
                    sign=int(self.sign[s]),
                    token_influence=float(token_influence[positions[0]]),
                    positions=positions,
                    position_influence=chosen_positions,
                    embedding_influence=chosen_positions[-1],
                    nodes=nodes,
                    influence=(
                        nodes[-1].ffn_influence
                        if self.split_mlp
                        else nodes[-1].influence
                    ),
                    position_candidates=self.position_candidates[s].tolist(),
                    node_candidates=self.node_candidates[s].tolist(),
                    ffn_candidates=(
                        self.ffn_candidates[s].tolist() if self.split_mlp else []
                    ),
                )
            )
        return patterns


def ignore_progress(stage: str) -> None:
    """The default progress callback: does nothing."""
    return None

