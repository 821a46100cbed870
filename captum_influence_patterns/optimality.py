"""The optimality test: each explained source's route against random routes of the
same source (docs/beam.md).

The authors test their greedy patterns against random patterns. Here every random
route starts at the source and ends at the output position (searched like the others
for a pooled QoI); in a causal model its positions never decrease. Positions are drawn
uniformly over all such routes; at the attention level each layer then takes a head
drawn uniformly, or, where the route stays at its position, a head or the skip (and,
with the MLP split off, the MLP or the residual). Every route, the explained one
included, is scored by the same gated integrated gradient
(:meth:`.attribution.InfluencePatterns.pattern_influence`), with the result's
``n_steps`` and ``method``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Union

from torch import Tensor
from tqdm.auto import tqdm

from ._captum_compat import TargetType
from ._validation import describe_baseline
from .attribution import InfluencePatterns
from .results import LEVELS, InfluencePatternsResult, Level, Pattern, PatternNode


def random_positions(
    source: int,
    output_position: Optional[int],
    num_positions: int,
    num_layers: int,
    causal: bool,
    rng: random.Random,
) -> List[int]:
    """One route ``j_0..j_L`` drawn uniformly among the valid routes of ``source``.

    ``j_0`` is the source; ``j_L`` the output position, or free when it is None. In a
    causal model the positions never decrease (and so stay at or before the output
    position): a uniform draw of a non-decreasing sequence is a uniform multiset,
    drawn by stars and bars.
    """
    free = num_layers - 1 if output_position is not None else num_layers
    end = [] if output_position is None else [output_position]
    if not causal:
        return [source] + [rng.randrange(num_positions) for _ in range(free)] + end
    last = num_positions - 1 if output_position is None else output_position
    bars = sorted(rng.sample(range(last - source + free), free))
    return [source] + [source + bar - k for k, bar in enumerate(bars)] + end


def random_nodes(
    positions: List[int], num_heads: int, split_mlp: bool, rng: random.Random
) -> List[PatternNode]:
    """Attention-level nodes along ``positions``, drawn uniformly: a head where the
    route moves, a head or the skip where it stays (and the MLP or the residual)."""
    nodes = []
    for layer in range(1, len(positions)):
        stays = positions[layer] == positions[layer - 1]
        choice = rng.randrange(num_heads + 1 if stays else num_heads)
        node = PatternNode(
            layer=layer,
            position=positions[layer],
            kind="head" if choice < num_heads else "skip",
            head=choice if choice < num_heads else None,
            influence=0.0,
        )
        if split_mlp:
            node.ffn = rng.choice(("mlp", "residual"))
        nodes.append(node)
    return nodes


def _route(source: int, positions: List[int], nodes: List[PatternNode]) -> Pattern:
    return Pattern(
        source=source,
        sign=1,
        token_influence=0.0,
        positions=positions,
        position_influence=[],
        embedding_influence=0.0,
        nodes=nodes,
        influence=0.0,
        label="random",
    )


def optimality_test(
    ip: InfluencePatterns,
    inputs: Tensor,
    result: InfluencePatternsResult,
    baselines: Union[None, int, Tensor] = None,
    target: TargetType = None,
    additional_forward_args: Any = None,
    *,
    n_random: int = 100,
    seed: int = 0,
    level: Level = "embedding",
    internal_batch_size: Optional[int] = None,
    return_routes: bool = False,
    show_progress: bool = False,
) -> List[Dict[str, Any]]:
    """Test every explained route against ``n_random`` random routes of its source.

    Args:
        ip (InfluencePatterns): The attribution that produced ``result``.
        inputs (Tensor): (B, T) token ids, those of ``result``.
        result (InfluencePatternsResult): The patterns to test.
        baselines, target, additional_forward_args: As given to
            :meth:`~.attribution.InfluencePatterns.attribute` for ``result``; the
            baselines must match the result's.
        n_random (int, optional): Random routes per source. Default: 100
        seed (int, optional): Seed of the route draws. Default: 0
        level (str, optional): ``"embedding"`` compares ``I(pi^e)`` over random
            position sequences; ``"attention"`` compares ``I(pi^a)`` over random
            attention-level routes. Default: ``"embedding"``
        internal_batch_size (int, optional): Most rows per pass. Default: None
        return_routes (bool, optional): Also return every random route and its
            influence. Default: False
        show_progress (bool, optional): A tqdm bar over the examples. Default: False

    Returns:
        list of dict: one JSON-safe record per (example, source), in result order:
        ``example``, ``source``, ``level``, ``sign``, ``n_random``, ``guided`` (the
        route's influence), ``random_best`` and ``random_mean`` (random routes'
        influences; best is sign-adjusted), ``share_beaten`` (the share of random
        routes whose sign-adjusted influence is strictly below the guided one's),
        ``gap`` (``sign * (guided - random_best)``; >= 0 when no random route beats
        it), ``gap_relative`` (``gap / |guided|``, None when guided is 0), and with
        ``return_routes`` ``random`` (a list of ``{"positions", "nodes",
        "influence"}``; nodes only at the attention level).

    Raises:
        ValueError: for a bad ``level`` or ``n_random``, inputs that are not the
            result's, or baselines other than the result's.
    """
    _check(ip, inputs, result, baselines, n_random, level)
    n_steps, method = result.metadata["n_steps"], result.metadata["method"]
    rng = random.Random(seed)
    graph = ip.graph
    records: List[Dict[str, Any]] = []
    for b in tqdm(range(len(result)), desc="optimality", disable=not show_progress):
        explained = result.patterns[b]
        drawn: List[List[Pattern]] = []
        for pattern in explained:
            row = []
            for _ in range(n_random):
                positions = random_positions(
                    pattern.source,
                    result.output_positions[b],
                    inputs.shape[1],
                    graph.num_layers,
                    graph.is_causal,
                    rng,
                )
                nodes = (
                    random_nodes(positions, graph.num_heads, graph.split_mlp, rng)
                    if level == "attention"
                    else []
                )
                row.append(_route(pattern.source, positions, nodes))
            drawn.append(row)
        batch: List[List[Pattern]] = [[] for _ in range(len(result))]
        batch[b] = list(explained) + [route for row in drawn for route in row]
        values = ip.pattern_influence(
            inputs,
            batch,
            baselines,
            target,
            additional_forward_args,
            level=level,
            n_steps=n_steps,
            method=method,
            internal_batch_size=internal_batch_size,
        )[b]
        guided, random_values = values[: len(explained)], values[len(explained) :]
        for s, pattern in enumerate(explained):
            scores = random_values[s * n_random : (s + 1) * n_random]
            routes = drawn[s] if return_routes else None
            records.append(_record(b, pattern, level, float(guided[s]), scores, routes))
    return records


def _record(
    example: int,
    pattern: Pattern,
    level: str,
    guided: float,
    scores: Tensor,
    routes: Optional[List[Pattern]] = None,
) -> Dict[str, Any]:
    sign = pattern.sign
    adjusted = sign * scores
    best = sign * float(adjusted.max())
    gap = sign * (guided - best)
    record = {
        "example": example,
        "source": pattern.source,
        "level": level,
        "sign": sign,
        "n_random": int(scores.shape[0]),
        "guided": guided,
        "random_best": best,
        "random_mean": float(scores.mean()),
        "share_beaten": float((adjusted < sign * guided).double().mean()),
        "gap": gap,
        "gap_relative": gap / abs(guided) if guided != 0 else None,
    }
    if routes is not None:
        record["random"] = [
            {
                "positions": list(route.positions),
                "nodes": [
                    {"kind": n.kind, "head": n.head, "ffn": n.ffn} for n in route.nodes
                ],
                "influence": float(value),
            }
            for route, value in zip(routes, scores.tolist())
        ]
    return record


def _check(
    ip: InfluencePatterns,
    inputs: Tensor,
    result: InfluencePatternsResult,
    baselines: Any,
    n_random: Any,
    level: str,
) -> None:
    if level not in LEVELS:
        raise ValueError(f"level: expected one of {LEVELS}, got {level!r}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 1:
        raise ValueError(f"n_random: expected an int >= 1, got {n_random!r}")
    if not isinstance(inputs, Tensor) or inputs.tolist() != result.input_ids:
        raise ValueError(
            "inputs: these are not the token ids the result explains; pass the "
            "inputs given to attribute"
        )
    used = result.metadata.get("baseline")
    if "baseline_id" in result.metadata:  # explain(): the input's name and its id
        same = describe_baseline(baselines) == describe_baseline(
            result.metadata["baseline_id"]
        )
    else:
        same = describe_baseline(baselines) == used
    if not same:
        raise ValueError(
            f"baselines: the result was computed with baseline {used!r}, got "
            f"{describe_baseline(baselines)!r}; pass the baselines given to attribute"
        )
