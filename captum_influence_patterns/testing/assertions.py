"""Assertions shared by the test suite, the benchmarks and :func:`check_adapter`.

Each compares everything it names and fails on a missing row or pattern, so a dropped
result cannot pass unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Sequence, Tuple, Union

import torch
from torch import nn

from ..attribution import InfluencePatterns
from ..results import InfluencePatternsResult, Pattern, PatternNode

#: Default tolerance of :func:`assert_same_patterns`, for float64 runs.
ATOL, RTOL = 1e-12, 1e-9


def assert_same_patterns(
    first: Union[InfluencePatternsResult, Sequence[Sequence[Pattern]]],
    second: Union[InfluencePatternsResult, Sequence[Sequence[Pattern]]],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> None:
    """Assert that two results (or their ``patterns``, a list of rows) hold the same
    patterns: as many rows, as many patterns per row, the same routes, nodes and signs,
    and every influence and candidate score equal within ``atol + rtol * |second|``."""
    rows_a = getattr(first, "patterns", first)
    rows_b = getattr(second, "patterns", second)
    assert len(rows_a) == len(rows_b), f"{len(rows_a)} rows != {len(rows_b)} rows"
    for k, (row_a, row_b) in enumerate(zip(rows_a, rows_b)):
        assert len(row_a) == len(row_b), (
            f"row {k}: {len(row_a)} patterns != {len(row_b)} patterns"
        )
        for a, b in zip(row_a, row_b):
            _assert_same_pattern(a, b, f"row {k}, source {b.source}", atol, rtol)


def assert_brute_force_influences(
    ip: InfluencePatterns,
    inputs: torch.Tensor,
    result: InfluencePatternsResult,
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    **kwargs: Any,
) -> None:
    """Assert that ``result``'s reported influences of its routes (``influence`` at the
    attention level, ``embedding_influence`` at the embedding level) are the ones
    :meth:`~.attribution.InfluencePatterns.pattern_influence` computes for the same
    routes by brute force; ``kwargs`` (baselines, additional_forward_args, n_steps)
    go to it."""
    for level, name in (("attention", "influence"), ("embedding", "embedding_influence")):
        brute = ip.pattern_influence(inputs, result.patterns, level=level, **kwargs)
        assert len(brute) == len(result.patterns), (
            f"{level}: {len(brute)} rows != {len(result.patterns)} rows"
        )
        for row, values in zip(result.patterns, brute):
            reported = torch.tensor([getattr(p, name) for p in row], dtype=torch.float64)
            torch.testing.assert_close(values, reported, atol=atol, rtol=rtol)


def _assert_same_pattern(a: Pattern, b: Pattern, where: str, atol, rtol) -> None:
    assert a.source == b.source, f"{where}: source {a.source} != {b.source}"
    assert a.positions == b.positions, f"{where}: {a.positions} != {b.positions}"
    assert [_route(n) for n in a.nodes] == [_route(n) for n in b.nodes], (
        f"{where}: nodes {[_route(n) for n in a.nodes]} != "
        f"{[_route(n) for n in b.nodes]}"
    )
    assert a.sign == b.sign, f"{where}: sign {a.sign} != {b.sign}"
    values = {
        "token_influence": ([a.token_influence], [b.token_influence]),
        "embedding_influence": ([a.embedding_influence], [b.embedding_influence]),
        "influence": ([a.influence], [b.influence]),
        "position_influence": (a.position_influence, b.position_influence),
        "node influence": (
            [n.influence for n in a.nodes], [n.influence for n in b.nodes]
        ),
        "ffn_influence": (
            [n.ffn_influence for n in a.nodes if n.ffn is not None],
            [n.ffn_influence for n in b.nodes if n.ffn is not None],
        ),
        "position_candidates": (a.position_candidates, b.position_candidates),
        "node_candidates": (a.node_candidates, b.node_candidates),
        "ffn_candidates": (a.ffn_candidates, b.ffn_candidates),
    }
    for name, (x, y) in values.items():
        assert len(x) == len(y), f"{where}: {name}: {len(x)} != {len(y)} entries"
        for u, v in zip(x, y):
            torch.testing.assert_close(
                torch.tensor(u, dtype=torch.float64),
                torch.tensor(v, dtype=torch.float64),
                atol=atol,
                rtol=rtol,
                msg=lambda text, name=name: f"{where}: {name}: {text}",
            )


def _route(node: PatternNode) -> Tuple:
    return (node.layer, node.position, node.kind, node.head, node.ffn)


def assert_no_hooks(model: nn.Module) -> None:
    """Assert that no forward, forward-pre or backward hook is left on ``model``."""
    for name, module in model.named_modules():
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"):
            assert not getattr(module, kind), f"{kind} left on {name!r}"


@dataclass(frozen=True)
class ModelState:
    """What a call must leave as it found it: train flags, the attention setting,
    requires_grad and every tensor of the state dict."""

    training: Dict[str, bool]
    attention: str
    requires_grad: Dict[str, bool]
    state: Dict[str, torch.Tensor]

    @classmethod
    def of(cls, model: nn.Module) -> "ModelState":
        """The state of ``model`` now (tensors copied)."""
        return cls(
            {n: m.training for n, m in model.named_modules()},
            model.config._attn_implementation,
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: t.detach().clone() for n, t in model.state_dict().items()},
        )

    def assert_unchanged(self, model: nn.Module) -> None:
        """Assert that ``model`` is as it was when this state was taken, hooks
        included."""
        now = ModelState.of(model)
        assert now.training == self.training, "train flags changed"
        assert now.attention == self.attention, (
            f"attention {self.attention!r} became {now.attention!r}"
        )
        assert now.requires_grad == self.requires_grad, "requires_grad changed"
        assert now.state.keys() == self.state.keys(), "state dict keys changed"
        for name, value in self.state.items():
            assert torch.equal(now.state[name], value), f"{name} changed"
        assert_no_hooks(model)
