"""A user's own forward hooks on the model (steering, ablation, scaling): every
schedule gives the hooked model's exact answer, or the call is refused naming the
hooked modules; never a silently different number.

The known answer does not come through the library's hooks: g of the hooked model is
integrated from ``model(inputs_embeds=...)`` at numpy's Gauss-Legendre nodes
(``oracle_token_influence``), with the user's hooks the only hooks on the model. The hooked modules are
named from the Hugging Face classes, not from the adapters.
"""

from __future__ import annotations

import functools
import re

import pytest
import torch
from torch import Tensor, nn

from captum_influence_patterns import InfluencePatterns, masked_lm_logit_difference
from captum_influence_patterns.testing import (
    MASK_ID,
    agreement_batch,
    agreement_keywords,
    assert_same_patterns,
    masked_lm,
)
from captum_influence_patterns.testing.exactness import (
    case_model,
    float64_internals,
    oracle_token_influence,
)

STEPS = 4
TOL = dict(atol=1e-12, rtol=1e-9)
FAMILIES = ("bert", "distilbert", "albert", "gpt2", "llama")
#: BERT's and Llama's layouts under other names: checked with fewer hooks.
BERT_LIKE = ("roberta", "electra")
LLAMA_LIKE = ("mistral", "qwen2")
ENCODERS = ("bert", "roberta", "electra", "distilbert", "albert")

def _modules(layer, mlp, neurons, attention_output, projection, norm):
    """Module paths of one layer, the others relative to ``layer``."""
    return dict(
        layer=layer,
        **{
            key: f"{layer}.{path}"
            for key, path in dict(
                mlp=mlp,
                neurons=neurons,
                attention_output=attention_output,
                projection=projection,
                norm=norm,
            ).items()
        },
    )


#: Per family, Hugging Face module paths (relative to ``model.base_model``): the
#: second layer, its MLP output, its MLP's hidden neurons, its attention module, its
#: output projection and the norm after it.
_ENCODER = _modules(
    "encoder.layer.1", "output", "intermediate", "attention.output",
    "attention.output.dense", "attention.output.LayerNorm",
)
MODULES: dict = {
    "bert": _ENCODER,
    "roberta": _ENCODER,
    "electra": _ENCODER,
    "distilbert": _modules(
        "transformer.layer.1", "ffn", "ffn.lin1", "attention", "attention.out_lin",
        "sa_layer_norm",
    ),
    "albert": _modules(
        "encoder.albert_layer_groups.0.albert_layers.0", "ffn_output", "ffn",
        "attention", "attention.dense", "attention.LayerNorm",
    ),
    "gpt2": _modules("h.1", "mlp", "mlp.c_fc", "attn", "attn.c_proj", "ln_2"),
    "llama": _modules(
        "layers.1", "mlp", "mlp.up_proj", "self_attn", "self_attn.o_proj",
        "post_attention_layernorm",
    ),
}


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _with_first(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def _scale(module, args, output):
    return _with_first(output, 1.5 * _first(output))


def _zero_position(module, args, output):
    hidden = _first(output).clone()
    hidden[:, 2] = 0
    return _with_first(output, hidden)


def _zero_neuron(module, args, output):
    hidden = _first(output).clone()
    hidden[..., 3] = 0
    return _with_first(output, hidden)


def _bias(hidden: Tensor, size: float) -> Tensor:
    """A bias that changes with the position and along the hidden dimensions (a
    constant shift per position would vanish in the next LayerNorm)."""
    positions = torch.linspace(-size, size, hidden.shape[1], dtype=hidden.dtype)
    directions = torch.sin(torch.arange(hidden.shape[-1], dtype=hidden.dtype))
    return hidden + positions[:, None] * directions


def _kwargs_scale(module, args, kwargs, output):
    return _with_first(output, 0.7 * _first(output))


def _position_bias(module, args, output):
    return _with_first(output, _bias(_first(output), 0.5))


def _pre_bias_kwargs(module, args, kwargs):
    if args:
        return (_bias(args[0], 1.0), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": _bias(kwargs["hidden_states"], 1.0)}


def _zero_head(module, args):
    contexts = args[0].clone()
    contexts[..., 6:12] = 0  # head 1 of 4 heads of size 6
    return (contexts, *args[1:])


def _pre_bias(module, args):
    return (_bias(args[0], 1.0), *args[1:])


MODULES.update(mistral=MODULES["llama"], qwen2=MODULES["llama"])

#: Hook kinds: (module key, how registered, hook).
HOOKS = {
    "scale the layer output": ("layer", "forward", _scale),
    "zero one position of the MLP output": ("mlp", "forward", _zero_position),
    "zero one MLP neuron": ("neurons", "forward", _zero_neuron),
    "pre-hook on the layer input": ("layer", "pre-kwargs", _pre_bias_kwargs),
    "hook with kwargs on the layer": ("layer", "forward-kwargs", _kwargs_scale),
    "zero one head's context (pre-hook on the output projection)": (
        "projection",
        "pre",
        _zero_head,
    ),
    "pre-hook on the post-attention norm": ("norm", "pre", _pre_bias),
    "position bias on the attention output": (
        "attention_output",
        "forward",
        _position_bias,
    ),
}
#: The kinds also checked with split_mlp (hooks next to the MLP branch).
SPLIT_KINDS = ("zero one position of the MLP output", "pre-hook on the post-attention norm")
#: Hooks the graph cannot follow: between the attention projection and an inline
#: residual sum (the attention module's output where the sum is recomputed).
REFUSED = {
    ("distilbert", "position bias on the attention output"),
    ("gpt2", "position bias on the attention output"),
    ("llama", "position bias on the attention output"),
    ("mistral", "position bias on the attention output"),
    ("qwen2", "position bias on the attention output"),
}


def _register(model: nn.Module, family: str, kind: str):
    key, how, hook = HOOKS[kind]
    module = model.base_model.get_submodule(MODULES[family][key])
    if how == "forward":
        return module.register_forward_hook(hook)
    if how == "forward-kwargs":
        return module.register_forward_hook(hook, with_kwargs=True)
    if how == "pre":
        return module.register_forward_pre_hook(hook)
    return module.register_forward_pre_hook(hook, with_kwargs=True)


@functools.lru_cache(maxsize=None)
def _model(family: str) -> nn.Module:
    return case_model(family) if family in LLAMA_LIKE else masked_lm(family)


def _attribute(model, ids, args, schedule, sources, split_mlp):
    ip = InfluencePatterns(
        masked_lm_logit_difference(model), model, split_mlp=split_mlp
    )
    keywords = agreement_keywords(args, STEPS, schedule=schedule, sources=sources)
    return ip, ip.attribute(ids, **keywords)


CASES = (
    [(family, kind, False) for family in FAMILIES for kind in HOOKS]
    + [(family, kind, True) for family in FAMILIES for kind in SPLIT_KINDS]
    + [(family, "scale the layer output", False) for family in BERT_LIKE]
    + [
        (family, kind, False)
        for family in LLAMA_LIKE
        for kind in ("scale the layer output", "position bias on the attention output")
    ]
)


@pytest.mark.parametrize("family, kind, split_mlp", CASES)
def test_every_schedule_is_exact_or_refuses(family, kind, split_mlp):
    """fast == forward-mode == reference == the oracle's g of the hooked model, the
    same patterns, every reported influence == its brute-force gated integrated
    gradient and == the fast route scorer's; row-wise refused naming the hook."""
    model = _model(family)
    ids, args = agreement_batch(batch=1)
    sources = [0, 2, 5] if family in ENCODERS else [0, 1, 2, 3]
    handle = _register(model, family, kind)
    try:
        with float64_internals():
            if (family, kind) in REFUSED:
                for schedule in ("fast", "reference", "forward-mode", "row-wise"):
                    hooked = MODULES[family]["attention_output"] + " (forward hook)"
                    with pytest.raises(ValueError, match=re.escape(hooked)):
                        _attribute(model, ids, args, schedule, sources, split_mlp)
                return
            expected = oracle_token_influence(model, ids, args, STEPS)
            results = {}
            for schedule in ("fast", "forward-mode", "reference"):
                ip, result = _attribute(
                    model, ids, args, schedule, sources, split_mlp
                )
                torch.testing.assert_close(
                    result.token_influence, expected, **TOL, msg=schedule
                )
                results[schedule] = result
            with pytest.raises(ValueError, match="row-wise.*" + MODULES[family][
                HOOKS[kind][0]
            ].replace(".", r"\.")):
                _attribute(model, ids, args, "row-wise", sources, split_mlp)
            reference = results["reference"]
            for schedule in ("fast", "forward-mode"):
                assert_same_patterns(results[schedule], reference)
            for level, field in (
                ("attention", "influence"),
                ("embedding", "embedding_influence"),
            ):
                brute, fast = (
                    ip.pattern_influence(
                        ids,
                        reference.patterns,
                        MASK_ID,
                        None,
                        args,
                        n_steps=STEPS,
                        level=level,
                        schedule=scorer,
                    )[0]
                    for scorer in ("reference", "fast")
                )
                torch.testing.assert_close(fast, brute, **TOL)
                reported = torch.tensor(
                    [getattr(p, field) for p in reference.patterns[0]],
                    dtype=torch.float64,
                )
                torch.testing.assert_close(reported, brute, **TOL)
    finally:
        handle.remove()
    # the hook changed the answer: the case is not trivially the unhooked one
    with float64_internals():
        unhooked = oracle_token_influence(model, ids, args, STEPS)
    assert (unhooked - expected).abs().max() > 1e-6


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_a_hook_on_the_word_embeddings_is_refused(family):
    """Inputs are interpolated at the word-embedding module's output: a hook there
    would be replaced, so every schedule refuses it."""
    model = _model(family)
    ids, args = agreement_batch(batch=1)
    handle = model.get_input_embeddings().register_forward_hook(_scale)
    try:
        for schedule in ("fast", "reference", "forward-mode", "row-wise"):
            with pytest.raises(ValueError, match="hook on the word-embedding module"):
                _attribute(model, ids, args, schedule, [0, 1], False)
    finally:
        handle.remove()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_the_beam_is_exact_through_a_users_hook(family):
    """The beam (width 2) through a hook on a layer: g of the hooked model, and every
    returned route's influence equal to its brute-force gated integrated gradient."""
    model = _model(family)
    ids, args = agreement_batch(batch=1)
    handle = _register(model, family, "scale the layer output")
    try:
        ip = InfluencePatterns(masked_lm_logit_difference(model), model)
        result = ip.attribute(
            ids, baselines=MASK_ID, additional_forward_args=args, output_position=4,
            n_steps=STEPS, sources=[0, 1, 2, 3], beam_width=2,
        )
        expected = oracle_token_influence(model, ids, args, STEPS)
        brute = ip.pattern_influence(
            ids, result.patterns, MASK_ID, None, args, n_steps=STEPS
        )[0]
    finally:
        handle.remove()
    torch.testing.assert_close(result.token_influence, expected, **TOL)
    reported = torch.tensor(
        [p.influence for p in result.patterns[0]], dtype=torch.float64
    )
    torch.testing.assert_close(reported, brute, **TOL)


@pytest.mark.parametrize(
    "family, kind",
    [("bert", "scale the layer output"), ("gpt2", "scale the layer output"),
     ("gpt2", "position bias on the attention output")],
)
def test_ablation_runs_the_hook_or_refuses(family, kind):
    """Keeping every node is the hooked model's own QoI (a plain forward pass with
    the hook, no library hook in place); a hook the graph would bypass is refused."""
    from captum_influence_patterns.paper.ablation import (
        NodeSet,
        ablated_qoi,
        node_means,
    )
    from captum_influence_patterns.graph import analysis_mode, model_graph

    model = _model(family)
    ids, args = agreement_batch(batch=1)
    forward = masked_lm_logit_difference(model)
    means = node_means(model, ids.tolist())
    full = NodeSet.full(model_graph(model), ids.shape[1])
    request = InfluencePatterns(forward, model).request(ids, None, None, args)
    handle = _register(model, family, kind)
    try:
        with analysis_mode(model), torch.no_grad():
            hooked = float(forward(ids, *args))
        if (family, kind) in REFUSED:
            with pytest.raises(ValueError, match="change what the model computes"):
                ablated_qoi(model, forward, request, [full], means, "keep")
            return
        kept = ablated_qoi(model, forward, request, [full], means, "keep")
    finally:
        handle.remove()
    with analysis_mode(model), torch.no_grad():
        plain = float(forward(ids, *args))
    assert float(kept[0]) == pytest.approx(hooked, abs=1e-10)
    assert hooked != pytest.approx(plain, abs=1e-6)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_contribution_routes_refuse_a_users_hook(family):
    """The decomposition calls submodules directly, so a user's hook is refused by
    name rather than skipped."""
    from captum_influence_patterns.graph import analysis_mode
    from captum_influence_patterns.routes.contributions import example_contributions
    from captum_influence_patterns.testing import problem

    model = _model(family)
    ids, args = agreement_batch(batch=1)
    handle = _register(model, family, "scale the layer output")
    try:
        refused = r"cannot run the hooks on \S+ \(forward hook\)"
        with analysis_mode(model), pytest.raises(ValueError, match=refused):
            example_contributions(problem(model, ids, args, n_steps=2), 4)
    finally:
        handle.remove()
