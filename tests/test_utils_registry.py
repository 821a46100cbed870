"""The registries: every entry keeps its declared contract, and a newcomer's entry is
one registration."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from transformers import BertConfig, BertForTokenClassification

from captum_influence_patterns.cli import main
from captum_influence_patterns.graph import UnsupportedModelError, analysis_mode
from captum_influence_patterns.models.loading import model_kind
from captum_influence_patterns.models.qoi_kinds import (
    QOI_KINDS,
    Explanation,
    QoIKind,
    register_qoi_kind,
)
from captum_influence_patterns.routes.compare import RouteSpec, compare
from captum_influence_patterns.routes.finders import (
    ROUTE_FINDERS,
    Route,
    register_route_finder,
)
from captum_influence_patterns.search import (
    SEARCHES,
    reference_search,
    register_search,
)
from captum_influence_patterns.testing import (
    CHECKPOINT_SHAPE,
    MASK_ID,
    MLM_TEXT,
    agreement_batch,
    assert_same_patterns,
    attribution,
    masked_lm,
    problem,
    run_search,
    tiny_tokenizer,
)

STEPS = 4
#: The searches every model runs (row-wise needs a post-LN encoder).
ANY_MODEL = ("fast", "forward-mode", "reference", "beam")


def _attribute(model, **kwargs):
    return run_search(model, *agreement_batch(batch=1), STEPS, **kwargs)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_search_reports_its_declared_stages(family, name):
    """``done`` is called with exactly the entry's stages, in order, and the greedy
    searches agree with the fast schedule."""
    if name == "row-wise" and family != "bert":
        pytest.skip("the row-wise search needs a post-LN encoder")
    model = masked_lm(family)
    ids, args = agreement_batch(batch=1)
    built = problem(model, ids, args, n_steps=STEPS)
    search = SEARCHES[name]
    reported = []
    with analysis_mode(model):
        state, g = search.run(
            built,
            torch.tensor([0, 1, 2]),
            4,
            reported.append,
            **{option: 1 for option in search.options},
        )
    assert tuple(reported) == search.stages(model.config.num_hidden_layers)
    assert g.shape == (ids.shape[1],)
    assert len(state.patterns(g)) == 3


@pytest.mark.parametrize("name", ANY_MODEL)
def test_every_search_is_a_schedule_of_attribute(name):
    model = masked_lm("bert")
    result = _attribute(model, schedule=name)
    assert result.metadata["schedule"] == name
    assert_same_patterns(
        result, _attribute(model, schedule="reference"), atol=1e-10, rtol=1e-8
    )


def test_unknown_schedule_lists_the_table():
    with pytest.raises(ValueError, match=r"schedule: expected one of \(.*'row-wise'"):
        _attribute(masked_lm("bert"), schedule="quick")


@pytest.fixture
def restored(request):
    """Puts a registry (the parametrised dict) back as it was after the test."""
    table = request.param
    saved = dict(table)
    yield table
    table.clear()
    table.update(saved)


@pytest.mark.parametrize("restored", [SEARCHES], indirect=True)
def test_a_new_search_is_one_registration(restored):
    """A newcomer's search: the reference search with stages of its own."""

    @register_search("reference-twice", lambda num_layers: ("once", "twice"))
    def reference_twice(problem, sources, output_position, done):
        reference_search(problem, sources, output_position)
        done("once")
        result = reference_search(problem, sources, output_position)
        done("twice")
        return result

    model = masked_lm("bert")
    result = _attribute(model, schedule="reference-twice")
    assert result.metadata["schedule"] == "reference-twice"
    assert_same_patterns(result, _attribute(model, schedule="reference"))
    with pytest.raises(ValueError, match="'reference-twice' is registered already"):
        register_search("reference-twice", lambda num_layers: ())


def test_registration_refuses_a_taken_name():
    with pytest.raises(ValueError, match="name: a search 'fast' is registered"):
        register_search("fast", lambda num_layers: ())


# ---------------------------------------------------------------------- route finders
@pytest.mark.parametrize("restored", [ROUTE_FINDERS], indirect=True)
def test_a_new_route_kind_is_one_registration(restored):
    """A newcomer's route kind: stay at the source, then step to the output."""

    @register_route_finder("stay")
    def stay_routes(spec, query):
        layers = query.attention.shape[0]
        return [
            Route([i] * layers + [query.output_position], math.nan)
            for i in query.sources
        ]

    model = masked_lm("bert")
    ids, args = agreement_batch(batch=1)
    ip = attribution(model)
    result = compare(
        ip,
        ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=STEPS),
        methods=[("stay", RouteSpec("stay", skip_threshold=1.0))],
    )
    for pattern in result.patterns[0]["stay"]:
        i = pattern.source
        assert pattern.positions == [i, i, i, 4]
        assert [n.kind for n in pattern.nodes[:2]] == ["skip", "skip"]
    (scored,) = ip.pattern_influence(
        ids, [result.patterns[0]["stay"]], MASK_ID, None, args, n_steps=STEPS
    )
    torch.testing.assert_close(
        scored,
        torch.tensor(
            [p.influence for p in result.patterns[0]["stay"]], dtype=torch.float64
        ),
    )
    with pytest.raises(ValueError, match="'stay' is registered already"):
        register_route_finder("stay")(stay_routes)


def test_unknown_route_kind_lists_the_finders():
    with pytest.raises(ValueError, match=r"RouteSpec.search: expected one of .*flow"):
        RouteSpec("straight")


# ------------------------------------------------------------------------- QoI kinds
def _token_class_explanation(loaded, common, target, contrast):
    """A newcomer's QoI: logit(class) - logit(other class) of a token classifier at
    the mask token."""
    ids = common["input_ids"]
    position = int((ids[0] == loaded.tokenizer.mask_token_id).nonzero()[0])
    model = loaded.model

    def forward(input_ids, positions, first, second):
        logits = model(input_ids=input_ids).logits
        rows = torch.arange(input_ids.shape[0])
        return logits[rows, positions, first] - logits[rows, positions, second]

    return Explanation(
        forward_func=forward,
        additional_forward_args=tuple(
            torch.tensor([value]) for value in (position, int(target), int(contrast))
        ),
        output_position=position,
        qoi=f"logit({target}) - logit({contrast}) at position {position}",
        target=str(target),
        contrast=str(contrast),
        **common,
    )


@pytest.mark.parametrize("restored", [QOI_KINDS], indirect=True)
def test_a_new_cli_qoi_is_one_registration(restored, tmp_path):
    register_qoi_kind(
        QoIKind(
            "token_classifier",
            "logit(class) - logit(other class) at the mask token",
            _token_class_explanation,
            heads=("ForTokenClassification",),
            auto_class="AutoModelForTokenClassification",
            compares="classes",
            needs_mask=True,
        )
    )
    path = str(tmp_path / "tagger")
    torch.manual_seed(0)
    BertForTokenClassification(
        BertConfig(num_labels=3, **CHECKPOINT_SHAPE)
    ).save_pretrained(path)
    tiny_tokenizer(path).save_pretrained(path)
    out = tmp_path / "out"
    argv = ["explain", MLM_TEXT, "--model", path, "--class", "2", "--contrast-class"]
    assert main([*argv, "0", "--steps", "4", "-o", str(out), "-q"]) == 0
    document = json.loads((out / "pattern.json").read_text())
    assert document["metadata"]["model_kind"] == "token_classifier"
    assert document["metadata"]["qoi"].startswith("logit(2) - logit(0)")
    with pytest.raises(ValueError, match="'token_classifier' is registered already"):
        register_qoi_kind(QOI_KINDS["token_classifier"])


def test_unsupported_head_lists_the_table(tmp_path):
    path = str(tmp_path / "tagger")
    BertForTokenClassification(BertConfig(**CHECKPOINT_SHAPE)).save_pretrained(path)
    with pytest.raises(UnsupportedModelError) as caught:
        model_kind(path)
    for kind in QOI_KINDS.values():
        for head in kind.heads:
            assert f"...{head}" in str(caught.value)


def test_the_four_registries_have_one_shape() -> None:
    """Every registry is exported from the package, takes ``overwrite`` by keyword
    only, and its refusal of a taken name names the name's argument."""
    import inspect

    import captum_influence_patterns as cip
    from captum_influence_patterns.graph import ADAPTERS
    from captum_influence_patterns.models.qoi_kinds import QOI_KINDS

    registries = [
        cip.register_family, cip.register_qoi_kind, cip.register_route_finder,
        cip.register_search,
    ]
    for register in registries:
        assert register.__name__ in cip.__all__
        overwrite = inspect.signature(register).parameters["overwrite"]
        assert overwrite.kind is inspect.Parameter.KEYWORD_ONLY
        assert overwrite.default is False
    taken = [
        (lambda: cip.register_family(ADAPTERS["gpt2"]), "spec.name: "),
        (lambda: cip.register_qoi_kind(next(iter(QOI_KINDS.values()))), "kind.name: "),
        (lambda: cip.register_route_finder("greedy"), "name: "),
        (lambda: cip.register_search("fast", lambda layers: ()), "name: "),
    ]
    for call, prefix in taken:
        with pytest.raises(ValueError, match=f"^{re.escape(prefix)}.* is registered already"):
            call()
