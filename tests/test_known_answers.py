"""Known answers that do not come through the hooks the search reads heads with.

The weights decide the answer: silencing heads through the input columns of each
layer's attention output projection (named here from the Hugging Face modules, not from
the adapters), and a hand-built BERT whose attention is a fixed permutation of the
positions, so that a token's information moves along a route known in advance. A head
view in the wrong order (heads and dimensions transposed) fails both.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor, nn
from transformers import BertConfig, BertForMaskedLM

from captum_influence_patterns import analysis_mode
from captum_influence_patterns.influence import node_influence
from captum_influence_patterns.testing import (
    FAMILIES,
    MASK_ID,
    MORE_FAMILIES,
    agreement_batch,
    agreement_keywords,
    attribution,
    masked_lm,
    problem,
)

HEADS = 4  # captum_influence_patterns.testing.SHAPE


def _output_projections(model: nn.Module, family: str) -> List[Tuple[Tensor, int]]:
    """Per layer application: the attention output projection's weight and the axis
    of its input features (nn.Linear: 1; GPT-2's Conv1D: 0)."""
    base = model.base_model
    if family in ("bert", "roberta", "electra"):
        return [
            (layer.attention.output.dense.weight, 1) for layer in base.encoder.layer
        ]
    if family == "distilbert":
        return [(block.attention.out_lin.weight, 1) for block in base.transformer.layer]
    if family == "albert":  # one shared layer applied at every layer
        shared = base.encoder.albert_layer_groups[0].albert_layers[0]
        return [(shared.attention.dense.weight, 1)] * model.config.num_hidden_layers
    if family == "gpt2":
        return [(block.attn.c_proj.weight, 0) for block in base.h]
    if family == "llama":
        return [(block.self_attn.o_proj.weight, 1) for block in base.layers]
    raise ValueError(family)


def _silence_all_heads_but(model: nn.Module, family: str, live: List[int]) -> None:
    """Zero the projection's inputs from every head but ``live[l]`` at layer l."""
    projections = _output_projections(model, family)
    with torch.no_grad():
        for (weight, axis), head in zip(projections, live):
            size = weight.shape[axis] // HEADS
            for dead in range(HEADS):
                if dead != head:
                    weight.narrow(axis, dead * size, size).zero_()


class TestSilencedHeads:
    def test_only_the_live_head_carries_influence_every_family(self, subtests) -> None:
        chosen_heads = 0
        for family in FAMILIES + MORE_FAMILIES:
            with subtests.test(family=family):
                model = masked_lm(family)
                live = [2, 2, 2] if family == "albert" else [1, 3, 0]
                _silence_all_heads_but(model, family, live)
                ids, args = agreement_batch(batch=1)
                result = attribution(model).attribute(
                    ids, **agreement_keywords(args, n_steps=4)
                )
                live_values = []
                for p in result.patterns[0]:
                    for node, candidates, head in zip(p.nodes, p.node_candidates, live):
                        dead = [c for n, c in enumerate(candidates[:-1]) if n != head]
                        assert dead == [0.0] * (HEADS - 1), (p.source, node)
                        live_values.append(candidates[head])
                        if node.kind == "head":
                            assert node.head == head
                            chosen_heads += 1
                assert any(v != 0.0 for v in live_values)
                # the per-position primitive too: zero at every position, every source
                with analysis_mode(model):
                    p = problem(model, ids, args, n_steps=3)
                    sources = torch.tensor([0, 3])
                    for layer, head in enumerate(live, start=1):
                        heads = node_influence(p, sources, layer, "heads")
                        values = heads[("heads", layer)]
                        dead = [n for n in range(HEADS) if n != head]
                        assert bool((values[..., dead] == 0).all())
                        assert bool((values[..., head] != 0).any())
        assert chosen_heads > 0, "no route chose a head: nothing checked"


def _permutation_bert(perm: List[int], live: List[int], seed: int = 0) -> nn.Module:
    """A BERT whose head ``live[l]`` of layer l makes position j attend to ``perm[j]``
    only (the other head is silent), with no MLP; positions are one-hot dimensions,
    words live in the others. Information at position m therefore moves, through that
    head, to the position attending to it, or stays through the skip."""
    length, words, width, heads = len(perm), 16, 32, 2
    size = width // heads
    config = BertConfig(
        vocab_size=20,
        hidden_size=width,
        num_hidden_layers=len(live),
        num_attention_heads=heads,
        intermediate_size=8,
        max_position_embeddings=length,
        type_vocab_size=1,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config).double().eval()
    scale, position = 6.0, 4.0  # saturated softmax: attention is the permutation
    with torch.no_grad():
        embeddings = model.bert.embeddings
        embeddings.word_embeddings.weight.zero_()
        embeddings.word_embeddings.weight[:, :words].normal_()
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        for j in range(length):
            embeddings.position_embeddings.weight[j, words + j] = position
        for layer, head in zip(model.bert.encoder.layer, live):
            attention = layer.attention.self
            linears = (
                attention.query,
                attention.key,
                attention.value,
                layer.attention.output.dense,
                layer.intermediate.dense,
                layer.output.dense,
            )
            for linear in linears:
                linear.weight.zero_()
                linear.bias.zero_()
            first = head * size
            for j in range(length):
                attention.query.weight[first + j, words + j] = scale
                attention.key.weight[first + j, words + perm[j]] = scale
            for k in range(words):
                attention.value.weight[first + k, k] = 1.0
                layer.attention.output.dense.weight[k, first + k] = 1.0
    return model


class TestPermutationAttention:
    def test_route_known_in_advance(self, subtests) -> None:
        perm = [3, 6, 0, 7, 1, 4, 2, 5]  # position j attends to perm[j]
        live = [1, 0, 1]
        model = _permutation_bert(perm, live)
        output = 2
        # x_i reaches the output only through the chain output <- perm[output] <- ...
        chain = [output]
        for _ in live:
            chain.append(perm[chain[-1]])
        source = chain[-1]
        assert len(set(chain)) == len(chain)  # one route, all heads
        with torch.no_grad():
            attentions = model(
                torch.full((1, len(perm)), 9), output_attentions=True
            ).attentions
        for attention, head in zip(attentions, live):
            assert attention[0, head].argmax(-1).tolist() == perm
        generator = torch.Generator().manual_seed(3)
        ids = torch.randint(5, 20, (1, len(perm)), generator=generator)
        ids[0, output] = MASK_ID
        ip = attribution(model)
        for schedule in ("fast", "reference"):
            with subtests.test(schedule=schedule):
                result = ip.attribute(
                    ids,
                    baselines=MASK_ID,
                    additional_forward_args=(output, 7, 9),
                    output_position=output,
                    n_steps=16,
                    schedule=schedule,
                )
                by_source = {p.source: p for p in result.patterns[0]}
                pattern = by_source[source]
                assert pattern.positions == chain[::-1]
                assert [n.kind for n in pattern.nodes] == ["head"] * len(live)
                assert [n.head for n in pattern.nodes] == live
                g = pattern.token_influence
                assert abs(g) > 0.1
                assert pattern.influence / g > 0.999
                # positions with no route of at most L moves have (almost) no influence
                reachable = {
                    position
                    for k in range(len(live) + 1)
                    for position in _reach(perm, output, k)
                }
                for j, p in by_source.items():
                    if j not in reachable:
                        assert abs(p.token_influence) < 1e-6 * abs(g), j


def _reach(perm: List[int], output: int, moves: int) -> List[int]:
    """Positions whose information reaches ``output`` in exactly ``moves`` head moves
    (any number of skips)."""
    position = output
    for _ in range(moves):
        position = perm[position]
    return [position]



class TestContributionRoutes:
    def test_every_finder_finds_the_one_carrying_head(self, subtests) -> None:
        """The permutation BERT with its values tripled (so that the moved word
        outweighs the residual in every layer's sum): each contribution finder must
        follow the chain of the live heads."""
        from captum_influence_patterns.routes.compare import (
            CONTRIBUTION_ROUTES,
            compare,
        )

        perm = [3, 6, 0, 7, 1, 4, 2, 5]
        live = [1, 0, 1]
        model = _permutation_bert(perm, live)
        with torch.no_grad():
            for layer in model.bert.encoder.layer:
                layer.attention.self.value.weight.mul_(3.0)
        output = 2
        chain = [output]
        for _ in live:
            chain.append(perm[chain[-1]])
        source = chain[-1]
        generator = torch.Generator().manual_seed(3)
        ids = torch.randint(5, 20, (1, len(perm)), generator=generator)
        ids[0, output] = MASK_ID
        ip = attribution(model)
        result = compare(
            ip,
            ip.request(
                ids,
                baselines=MASK_ID,
                additional_forward_args=(output, 7, 9),
                output_position=output,
                n_steps=8,
            ),
            sources=[[source]],
            methods=list(CONTRIBUTION_ROUTES),
        )
        for name in CONTRIBUTION_ROUTES:
            with subtests.test(route=name):
                (pattern,) = result.patterns[0][name]
                assert pattern.positions == chain[::-1]
                assert [n.head for n in pattern.nodes] == live
                assert pattern.influence / pattern.token_influence > 0.999
