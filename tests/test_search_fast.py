"""The fast schedule is exact for every family, and its dispatch and chunking rules.

The row-wise schedule (:mod:`captum_influence_patterns.search.rowwise`: explicit
single-position linearisations of each layer) must equal the reference schedule (the
authors' fresh forward-mode and reverse passes per layer) on every recorded candidate,
and the brute-force gated integrated gradient (reverse passes only) on every reported
influence and on random fixed routes, to 1e-12 in float64: for every family, with and
without the MLP split, under padding masks, for a batch with an output position per
row, and for ALBERT with several layer groups. Llama, Mistral and Qwen2 compute their
RMSNorm and softmax in float32 even in a float64 model; they are checked to 1e-12 with
those two computed in float64 (``float64_internals``) and to float32 precision as
they are.
"""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch

from captum_influence_patterns import analysis_mode
from captum_influence_patterns.search.fast import (
    fast_search,
    route_influence,
    rowwise_supported,
)
from captum_influence_patterns.search.forward_mode import forward_mode_search
from captum_influence_patterns.influence import (
    gated_influence,
    pattern_influence,
    route_gates,
)
from captum_influence_patterns.search import (
    SearchState,
    reference_nodes,
    reference_search,
)
from captum_influence_patterns.search.rowwise import driver
from captum_influence_patterns.search.rowwise.driver import (
    rowwise_nodes,
    rowwise_search,
)
from captum_influence_patterns.search.rowwise.linearisation import (
    RowwiseMismatch,
    close_enough,
)
from captum_influence_patterns.testing import (
    FAMILIES,
    MORE_FAMILIES,
    agreement_batch,
    assert_same_patterns,
    attribution,
    family_model,
    masked_lm,
    problem,
)
from captum_influence_patterns.testing.exactness import (
    CASES,
    ROTARY,
    assert_same_search_state,
    case_model,
    float64_internals,
    padded_problem,
    per_row_output_batch,
)

ROWWISE = "captum_influence_patterns.search.rowwise"

TOL = dict(atol=1e-12, rtol=1e-9)
FLOAT32_TOL = dict(atol=1e-6, rtol=1e-5)


def _random_routes(count, layers, length, heads, output_position, seed=3):
    """Routes with random positions (ending at ``output_position``), random heads or
    skips (-1) and random MLP-or-residual choices."""
    generator = torch.Generator().manual_seed(seed)
    positions = torch.randint(0, length, (count, layers + 1), generator=generator)
    positions[:, -1] = output_position
    positions[0] = output_position  # a route that never moves
    chosen = torch.randint(-1, heads, (count, layers), generator=generator)
    mlp = torch.randint(0, 2, (count, layers), generator=generator).bool()
    return positions, chosen, mlp


# ------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("split_mlp", [False, True], ids=["paper", "split_mlp"])
@pytest.mark.parametrize("case", CASES)
def test_rowwise_equals_reference_and_brute_force(case, split_mlp):
    """Row-wise == reference schedule on every candidate, and every reported
    influence == the brute-force gated integrated gradient, on a padded row."""
    model = case_model(case)
    example = padded_problem(model, split_mlp)
    sources = torch.arange(8)
    with float64_internals(), analysis_mode(model):
        assert rowwise_supported(example)
        state, g = rowwise_search(example, sources, 4)
        reference, g_reference = reference_search(example, sources, 4)
        patterns = state.patterns(g)
        attention = pattern_influence(example, patterns, "attention")
        embedding = pattern_influence(example, patterns, "embedding")
    torch.testing.assert_close(g, g_reference, **TOL)
    assert_same_search_state(state, reference, TOL)
    reported = torch.tensor([p.influence for p in patterns], dtype=torch.float64)
    torch.testing.assert_close(reported, attention, **TOL)
    reported = torch.tensor(
        [p.embedding_influence for p in patterns], dtype=torch.float64
    )
    torch.testing.assert_close(reported, embedding, **TOL)
    assert attention.abs().max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("split_mlp", [False, True], ids=["paper", "split_mlp"])
@pytest.mark.parametrize("case", ["bert", "gpt2"])
def test_stage_b_along_given_routes_equals_the_reference(case, split_mlp):
    """Stage B alone along random routes (the null of claim 1): the row-wise
    choices and candidates equal the reference schedule's, and each chosen route's
    reported influence the brute-force gated integrated gradient."""
    model = case_model(case)
    example = padded_problem(model, split_mlp)
    positions, _, _ = _random_routes(6, model.config.num_hidden_layers, 7,
                                     model.config.num_attention_heads, 4)
    if example.graph.is_causal:  # routes never move backwards nor past the output
        positions = positions.clamp(max=4).sort(dim=1).values
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    with float64_internals(), analysis_mode(model):
        state = rowwise_nodes(example, positions, sign)
        reference = SearchState.empty(example, positions[:, 0])
        reference.positions[:] = positions
        reference.sign[:] = sign
        reference_nodes(example, positions[:, 0], reference)
        patterns = state.patterns(torch.zeros(8, dtype=torch.float64))
        brute = pattern_influence(example, patterns, "attention")
    assert_same_search_state(state, reference, TOL)
    assert torch.equal(state.positions, positions)
    reported = torch.tensor([p.influence for p in patterns], dtype=torch.float64)
    torch.testing.assert_close(reported, brute, **TOL)
    assert state.node_candidates.abs().max() > 1e-4  # not trivially zero


@pytest.mark.parametrize("split_mlp", [False, True], ids=["paper", "split_mlp"])
@pytest.mark.parametrize("case", CASES)
def test_route_influence_equals_the_gated_integrated_gradient(case, split_mlp):
    """Random fixed routes at both levels, on a padded row."""
    model = case_model(case)
    example = padded_problem(model, split_mlp, n_steps=3)
    layers = example.graph.num_layers
    positions, heads, mlp = _random_routes(7, layers, 8, 4, 4)
    if example.graph.is_causal:  # routes never move backwards in a causal model
        positions = positions.sort(dim=1).values.clamp(max=4)
    mlp = mlp if split_mlp else None
    with float64_internals(), analysis_mode(model):
        assert rowwise_supported(example)
        for choices in ((None, None), (heads, mlp)):
            gates = route_gates(positions, 8, 4, *choices)
            expected = gated_influence(example, positions[:, 0], gates)
            if choices[0] is None:  # (random heads often carry almost nothing)
                assert expected.abs().max() > 1e-6  # not trivially zero
            torch.testing.assert_close(
                route_influence(example, positions, *choices), expected, **TOL
            )


def _shared_routes(layers, length, heads, output_position, causal):
    """Routes that share prefixes and suffixes: three sources, each with routes that
    branch at every layer, all ending at ``output_position``, with random head (or
    skip) and MLP-or-residual choices and some repeated outright."""
    generator = torch.Generator().manual_seed(5)
    base = torch.randint(0, length, (3, layers + 1), generator=generator)
    rows = []
    for route in base:
        for branch in range(1, layers + 1):  # change the route from layer `branch` on
            other = route.clone()
            other[branch:] = torch.randint(
                0, length, (layers + 1 - branch,), generator=generator
            )
            rows += [route, other]
    positions = torch.stack(rows)
    positions[:, -1] = output_position
    if causal:
        positions = positions.sort(dim=1).values.clamp(max=output_position)
    count = positions.shape[0]
    chosen = torch.randint(-1, heads, (count, layers), generator=generator)
    mlp = torch.randint(0, 2, (count, layers), generator=generator).bool()
    half = count // 2  # the same positions with the choices of their partner
    chosen[1::2][: half // 2] = chosen[0::2][: half // 2]
    return positions, chosen, mlp


@pytest.mark.parametrize("case", ["bert", "albert-groups", "gpt2", "llama"])
def test_route_influence_at_every_meeting_layer(case):
    """Fixed routes are scored by tangents up to some ``h^k`` and cotangents down to
    it: with ``k`` forced to every layer, in chunks of 2 and all routes, routes
    sharing prefixes and suffixes score the gated integrated gradient at both
    levels, with the MLP split off."""
    model = case_model(case)
    example = padded_problem(model, True, n_steps=3)
    layers = example.graph.num_layers
    positions, heads, mlp = _shared_routes(layers, 7, 4, 4, example.graph.is_causal)
    meeting = f"{ROWWISE}.driver.RecordedModel._meeting_layer"
    with float64_internals(), analysis_mode(model):
        for choices in ((None, None), (heads, None), (heads, mlp)):
            gates = route_gates(positions, 8, 4, *choices)
            expected = gated_influence(example, positions[:, 0], gates)
            if choices[0] is None:  # (random heads often carry almost nothing)
                assert expected.abs().max() > 1e-6  # not trivially zero
            for meet, size in itertools.product(range(layers + 1), (2, None)):
                chunked = padded_problem(
                    model,
                    True,
                    n_steps=3,
                    internal_batch_size=None if size is None else 3 * size,
                )
                with mock.patch(meeting, return_value=meet):
                    scored = route_influence(chunked, positions, *choices)
                torch.testing.assert_close(scored, expected, **TOL, msg=f"k={meet}")


@pytest.mark.parametrize("family", ROTARY)
def test_float32_internals_agree_to_float32_precision(family):
    """As shipped (RMSNorm and softmax in float32), the row-wise and forward-mode
    schedules agree to float32 precision and choose alike."""
    model = case_model(family)
    example = padded_problem(model, True)
    sources = torch.arange(8)
    with analysis_mode(model):
        rowwise = rowwise_search(example, sources, 4)
        generic = forward_mode_search(example, sources, 4)
    torch.testing.assert_close(rowwise[1], generic[1], **FLOAT32_TOL)
    assert_same_search_state(rowwise[0], generic[0], FLOAT32_TOL)


@pytest.mark.parametrize("family", ["bert", "albert", "gpt2", "llama"])
def test_batch_with_an_output_position_per_row(family):
    """``attribute`` on two padded rows whose QoIs read positions 4 and 5: the fast
    schedule (row by row) equals the reference schedule."""
    ids, keywords = per_row_output_batch()
    explainer = attribution(case_model(family), split_mlp=True)
    results = {}
    with float64_internals():
        for schedule in ("fast", "reference"):
            results[schedule] = explainer.attribute(
                ids, n_steps=4, schedule=schedule, **keywords
            )
    assert_same_patterns(results["fast"], results["reference"], atol=1e-12, rtol=1e-9)


def _without_weights(forward):
    def dropped(*args, **kwargs):
        return forward(*args, **kwargs)[0], None

    return dropped


def test_attention_weights_recomputed_when_the_module_does_not_return_them():
    # transformers < 5 returns eager attention weights only with output_attentions;
    # a forward dropping them stands in for such a version (not a hook: the row-wise
    # schedule does not run with a user's hooks on the model).
    ids, args = agreement_batch(length=8)
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    sources = torch.tensor([0, 2, 7])
    for family in ("bert", "distilbert"):
        model = masked_lm(family)
        example = problem(model, ids, (*args, mask), n_steps=4)
        graph = example.graph
        for attention in set(graph.self_attentions):
            attention.forward = _without_weights(attention.forward)
        with analysis_mode(model):
            rowwise = rowwise_search(example, sources, 4)
            generic = forward_mode_search(example, sources, 4)
        torch.testing.assert_close(rowwise[1], generic[1], **TOL)
        assert_same_search_state(rowwise[0], generic[0], TOL)


def test_pooled_qoi_searches_the_last_layer():
    ids, args = agreement_batch()
    sources = torch.arange(7)
    model = masked_lm("electra")
    example = problem(model, ids, args, n_steps=4)
    with analysis_mode(model):
        state, g = rowwise_search(example, sources, None)
        generic = forward_mode_search(example, sources, None)
    assert_same_search_state(state, generic[0], TOL)
    # Nothing forced j_L: it is the argmax of the last layer's candidates.
    chosen = (state.sign[:, None] * state.position_candidates[:, -1]).argmax(-1)
    assert torch.equal(state.positions[:, -1], chosen)


# ------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("family", FAMILIES + MORE_FAMILIES)
def test_row_wise_in_analysis_mode_only(family):
    ids, args = agreement_batch()
    model = masked_lm(family)
    example = problem(model, ids, args)
    with analysis_mode(model):
        assert rowwise_supported(example)
    model.train()
    assert not rowwise_supported(example)
    with pytest.raises(ValueError, match="^problem: the row-wise schedule needs"):
        rowwise_search(example, torch.tensor([0]), 4)


def test_relative_positions_and_fused_attention_take_the_forward_mode_schedule():
    ids, args = agreement_batch()
    relative = family_model(
        "bert", config=dict(position_embedding_type="relative_key")
    )
    example = problem(relative, ids, args, n_steps=2)
    target = "captum_influence_patterns.search.fast.forward_mode_search"
    with analysis_mode(relative):
        assert not rowwise_supported(example)
        with mock.patch(target, wraps=forward_mode_search) as generic:
            fast_search(example, torch.tensor([0]), 4)
        generic.assert_called_once()
    model = masked_lm("gpt2")
    model.set_attn_implementation("sdpa")
    assert not rowwise_supported(problem(model, ids, args))


def test_fast_search_takes_the_row_wise_schedule():
    ids, args = agreement_batch()
    for family in ("bert", "llama"):
        model = masked_lm(family)
        example = problem(model, ids, args, n_steps=2)
        target = "captum_influence_patterns.search.fast.forward_mode_search"
        with analysis_mode(model), mock.patch(target) as generic:
            fast_search(example, torch.tensor([0, 1]), 4)
        generic.assert_not_called()


def test_unreadable_attention_falls_back_with_a_warning():
    """Contexts that are not weights @ values: never a different answer, the
    forward-mode schedule instead."""
    ids, args = agreement_batch()
    model = masked_lm("gpt2")
    example = problem(model, ids, args, n_steps=2)
    mismatch = RowwiseMismatch("model: contexts != weights @ values")
    target = f"{ROWWISE}.linearisation.LinearisedBlock.finish"
    with analysis_mode(model), mock.patch(target, side_effect=mismatch):
        with pytest.warns(RuntimeWarning, match="falling back"):
            state, g = fast_search(example, torch.tensor([0, 1]), 4)
        with pytest.warns(RuntimeWarning, match="falling back"):
            route_influence(example, state.positions)
        expected = forward_mode_search(example, torch.tensor([0, 1]), 4)
    assert_same_search_state(state, expected[0], TOL)


def test_route_influence_refuses_malformed_routes():
    ids, args = agreement_batch()
    model = masked_lm("bert")
    example = problem(model, ids, args, n_steps=2)
    positions, heads, mlp = _random_routes(2, 3, 7, 4, 4)
    with pytest.raises(ValueError, match="^positions: expected"):
        route_influence(example, positions[:, 1:])
    with pytest.raises(ValueError, match="^heads: expected"):
        route_influence(example, positions, heads[:, 1:])
    with pytest.raises(ValueError, match="^mlp: .*split_mlp"):
        route_influence(example, positions, heads, mlp)


# ----------------------------------------------------- forward-mode schedule chunks
def _forward_mode_passes(n_steps: int, internal_batch_size=None) -> int:
    """Forward-mode passes of stage A and B for four sources on 7 tokens (the QoI
    reads position 4)."""
    ids, args = agreement_batch()
    model = masked_lm("gpt2")
    example = problem(
        model, ids, args, n_steps=n_steps, internal_batch_size=internal_batch_size
    )
    runs = []
    original = example.run

    def counting(controller, rows):
        runs.append(type(controller).__name__)
        return original(controller, rows)

    example.run = counting
    with analysis_mode(model):
        forward_mode_search(example, torch.arange(4), 4)
    return sum(name.startswith("_Stage") and "Sweep" in name for name in runs)


def test_default_is_one_source_per_pass_for_long_problems():
    # 7 tokens x 200 steps = 1400 tokens per source: over the budget of one pass.
    assert _forward_mode_passes(200) == 2 * 4


def test_default_batches_sources_of_small_problems():
    # 7 tokens x 10 steps = 70 tokens per source: all four fit in one pass.
    assert _forward_mode_passes(10) == 2


def test_internal_batch_size_caps_the_rows():
    # 3 sources of 10 steps per pass: two passes for four sources.
    assert _forward_mode_passes(10, internal_batch_size=35) == 2 * 2


def _chunked_rowwise_search(internal_batch_size=None, cap=None):
    """The row-wise search of five sources on 9 tokens of the tiny Llama (3 layers,
    D = 24, 4 heads) at 5 steps, checked against the forward-mode schedule; returns
    the sizes of the chunks of sources it ran."""
    ids, args = agreement_batch(length=9)
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    model = masked_lm("llama")
    example = problem(
        model, ids, (*args, mask), n_steps=5, internal_batch_size=internal_batch_size
    )
    sources = torch.tensor([0, 2, 3, 6, 8])
    sizes = []
    chunks = driver.RecordedModel.chunks

    def spy(recorded, count, per=1):
        made = chunks(recorded, count, per)
        sizes.append([len(chunk) for chunk in made])
        return made

    cap = driver._ROWWISE_ELEMENTS if cap is None else cap
    with float64_internals(), analysis_mode(model), mock.patch.object(
        driver, "_ROWWISE_ELEMENTS", cap
    ), mock.patch.object(driver.RecordedModel, "chunks", spy):
        rowwise = rowwise_search(example, sources, 4)
        generic = forward_mode_search(example, sources, 4)
    assert_same_search_state(rowwise[0], generic[0], TOL)
    return sizes


def test_rowwise_chunks_of_one_source():
    assert _chunked_rowwise_search(cap=1) == [[1] * 5]


@pytest.mark.parametrize(
    "internal_batch_size, sizes", [(None, [5]), (1, [3, 2]), (5, [5])]
)
def test_internal_batch_size_bounds_rowwise_chunks_as_full_rows(
    internal_batch_size, sizes
):
    """One row of a full pass holds 9 positions x 3 layers x 24 = 648 elements; a
    source's (steps, T, heads) tensor 5 x 9 x 4 = 180: three sources per row. (A
    source used to count as 5 rows, its steps: a chunk of one source at every
    ordinary batch size.)"""
    assert _chunked_rowwise_search(internal_batch_size) == [sizes]


def test_the_self_checks_tolerate_rounding_not_a_wrong_slot() -> None:
    """The row-wise self-checks accept float32 rounding summed over a long sequence
    (a few eps of the scale per element, here 4e-5) and refuse what a wrong slot
    gives (a gap of the values' own size); float64 keeps 1e-6 of the scale."""
    generator = torch.Generator().manual_seed(0)
    reference = torch.randn(2, 64, 9, 64, generator=generator)
    scale = float(reference.abs().max())
    noise = torch.randn(reference.shape, generator=generator).clamp(-1, 1)
    assert close_enough(reference + 4e-5 * scale * noise, reference, scale)
    # another token's values in place of each token's
    assert not close_enough(reference.roll(1, dims=1), reference, scale)
    assert not close_enough(reference + 1e-3 * scale, reference, scale)
    double = reference.double()
    assert close_enough(double + 5e-7 * scale, double, scale)
    assert not close_enough(double + 4e-5 * scale, double, scale)
