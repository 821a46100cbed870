"""The shared exactness suite on DistilBERT, ALBERT, GPT-2 and Llama (grouped-query
attention), whose residual adds are inline code rather than a submodule's arguments."""

from __future__ import annotations


import torch

from captum_influence_patterns import (
    InfluencePatterns,
    NodeController,
    analysis_mode,
    masked_lm_logit_difference,
    model_graph,
    restrict_paths,
)
from captum_influence_patterns.graph import EncoderSublayers
from captum_influence_patterns.influence import node_influence, token_influence
from captum_influence_patterns.testing import (
    MASK_ID,
    MORE_FAMILIES,
    ModelState,
    agreement_batch,
    agreement_keywords,
    assert_no_hooks,
    assert_same_patterns,
    attribution,
    family_model,
    gated_outputs_equal,
    masked_lm,
    problem,
    run_search,
)
import pytest

# Llama's RMSNorm and rotary tables compute in float32 even in a float64 model, so its
# forward-mode and reverse derivatives agree to float32 precision only.
TOLERANCE = {"llama": dict(atol=1e-6, rtol=1e-5)}
EXACT = dict(atol=1e-12, rtol=1e-9)


def _run(model, ids, args, **kwargs):
    return run_search(model, ids, args, n_steps=8, **kwargs)


class _Recorder(NodeController):
    """Identity at every node; records (hook, layer) in call order."""

    def __init__(self) -> None:
        self.calls = []

    def embedding_node(self, layer, hidden):
        self.calls.append(("embedding", layer))
        return hidden

    def attention_inputs(self, layer, heads, skip):
        self.calls.append(("attention", layer))
        return heads, skip

    def mlp_inputs(self, layer, mlp, residual):
        self.calls.append(("mlp", layer))
        return mlp, residual


class TestMoreFamilies:
    def test_hooks_visit_every_node_set_in_order(self, subtests) -> None:
        """h^0, then per layer the heads and skip, the MLP split only where the graph
        was built with it, and h^l; ALBERT's shared layer gives one set per call."""
        ids, args = agreement_batch()
        for family in ("bert",) + MORE_FAMILIES:
            model = masked_lm(family)
            forward = masked_lm_logit_difference(model)
            for split_mlp in (False, True):
                with subtests.test(family=family, split_mlp=split_mlp):
                    graph = model_graph(model, split_mlp=split_mlp)
                    assert graph.split_mlp is split_mlp
                    recorder = _Recorder()
                    with analysis_mode(model), torch.no_grad():
                        with restrict_paths(graph, recorder):
                            forward(ids, *args)
                    expected = [("embedding", 0)]
                    for layer in range(1, 4):
                        expected.append(("attention", layer))
                        expected += [("mlp", layer)] if split_mlp else []
                        expected.append(("embedding", layer))
                    assert recorder.calls == expected
                    assert_no_hooks(model)

    def test_config_variants(self, subtests) -> None:
        """ELECTRA without an embedding projection (h^0 is the embeddings module),
        Llama with head_dim != hidden / heads, ALBERT with a layer group per layer."""
        variants = {
            "electra": (
                family_model("electra", config=dict(embedding_size=24)),
                "embeddings",
            ),
            "llama": (family_model("llama", config=dict(head_dim=8)), None),
            "albert": (
                family_model("albert", config=dict(num_hidden_groups=3)),
                "encoder.embedding_hidden_mapping_in",
            ),
        }
        for family, (model, embedding_output) in variants.items():
            with subtests.test(family=family):
                graph = model_graph(model)
                expected = embedding_output and model.base_model.get_submodule(
                    embedding_output
                )
                assert graph.embedding_output is expected
                slot = (
                    "attention_output"
                    if isinstance(graph.spec.block, EncoderSublayers)
                    else "output_projection"
                )
                first = graph.part(graph.layers[0], slot)
                projection = getattr(first, "dense", first)  # BertSelfOutput.dense
                assert graph.num_heads * graph.head_size == projection.in_features
                assert len({id(layer) for layer in graph.layers}) == 3
                assert gated_outputs_equal(model)

    def test_split_mlp_is_per_graph(self) -> None:
        model = masked_lm("gpt2")
        split = InfluencePatterns(
            masked_lm_logit_difference(model), model, split_mlp=True
        )
        plain = attribution(model)
        assert split.graph.split_mlp
        assert not plain.graph.split_mlp
        assert not model_graph(model).split_mlp

    def test_cut_conservation(self, subtests) -> None:
        for family in MORE_FAMILIES:
            with subtests.test(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                ids, args = agreement_batch()
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=6)
                    g, _ = token_influence(p)
                    sources = torch.tensor([0, 3])
                    for layer in range(p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "embedding")
                        torch.testing.assert_close(
                            cut[("embedding", layer)].sum(-1), g[sources], **tol
                        )
                    for layer in range(1, p.graph.num_layers + 1):
                        cut = node_influence(p, sources, layer, "attention")
                        total = cut[("heads", layer)].sum((1, 2)) + cut[
                            ("skip", layer)
                        ].sum(1)
                        torch.testing.assert_close(total, g[sources], **tol)

    def test_fast_equals_reference_equals_brute_force(self, subtests) -> None:
        for family in MORE_FAMILIES:
            with subtests.test(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                before = ModelState.of(model)
                ids, args = agreement_batch()
                fast = _run(model, ids, args)
                reference = _run(model, ids, args, schedule="reference")
                if family == "llama":
                    assert_same_patterns(fast, reference, atol=1e-5, rtol=0)
                else:
                    assert_same_patterns(fast, reference)
                brute = attribution(model).pattern_influence(
                    ids,
                    fast.patterns,
                    baselines=MASK_ID,
                    additional_forward_args=args,
                    n_steps=8,
                )
                for row, values in zip(fast.patterns, brute):
                    reported = torch.tensor(
                        [p.influence for p in row], dtype=torch.float64
                    )
                    torch.testing.assert_close(values, reported, **tol)
                before.assert_unchanged(model)
                if attribution(model).graph.is_causal:
                    for row in fast.patterns:
                        for p in row:
                            assert p.source < 4
                            assert p.positions == sorted(p.positions)

    def test_gates_keep_forward_values(self, subtests) -> None:
        for family in ("bert",) + MORE_FAMILIES:
            for split_mlp in (False, True):
                with subtests.test(family=family, split_mlp=split_mlp):
                    model = masked_lm(family)
                    assert gated_outputs_equal(model, split_mlp)

    def test_mlp_split_exactness_every_family(self, subtests) -> None:
        """With the MLP split off: MLP + residual = node at every layer, and the
        finer route agrees across fast, reference and brute force."""
        for family in ("bert",) + MORE_FAMILIES:
            with subtests.test(family=family):
                tol = TOLERANCE.get(family, EXACT)
                model = masked_lm(family)
                ids, args = agreement_batch()
                ip = InfluencePatterns(
                    masked_lm_logit_difference(model), model, split_mlp=True
                )
                kwargs = agreement_keywords(args, n_steps=6)
                fast = ip.attribute(ids, **kwargs)
                reference = ip.attribute(ids, schedule="reference", **kwargs)
                for a, b in zip(fast.patterns[0], reference.patterns[0]):
                    assert [(n.kind, n.head, n.ffn) for n in a.nodes] == \
                        [(n.kind, n.head, n.ffn) for n in b.nodes]
                    assert abs(a.influence - b.influence) <= 1e-6
                    for node, (mlp, residual) in zip(a.nodes, a.ffn_candidates):
                        sign = a.sign
                        assert node.ffn == \
                            ("mlp" if sign * mlp > sign * residual else "residual")
                    assert a.influence == a.nodes[-1].ffn_influence
                brute = ip.pattern_influence(
                    ids,
                    fast.patterns,
                    baselines=MASK_ID,
                    additional_forward_args=args,
                    n_steps=6,
                )[0]
                reported = torch.tensor(
                    [p.influence for p in fast.patterns[0]], dtype=torch.float64
                )
                torch.testing.assert_close(brute, reported, **tol)
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=6, split_mlp=True)
                    sources = torch.tensor([0, 2])
                    for layer in range(1, p.graph.num_layers + 1):
                        ffn = node_influence(p, sources, layer, "feedforward")
                        node = node_influence(p, sources, layer, "embedding")
                        torch.testing.assert_close(
                            ffn[("mlp", layer)] + ffn[("residual", layer)],
                            node[("embedding", layer)],
                            **tol,
                        )
                with pytest.raises(ValueError, match="split_mlp=True"):
                    attribution(model).pattern_influence(
                        ids,
                        fast.patterns,
                        baselines=MASK_ID,
                        additional_forward_args=args,
                        n_steps=6,
                    )
                assert_no_hooks(model)

    def test_causal_sources_after_the_output_are_refused(self) -> None:
        model = masked_lm("gpt2")
        ids, args = agreement_batch()
        with pytest.raises(ValueError, match="sources: .* after the output position"):
            _run(model, ids, args, sources=[1, 5])

