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
    RouteFinder,
    register_route_finder,
)
from captum_influence_patterns.search import (
    SEARCHES,
    Search,
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

    def reference_twice(problem, sources, output_position, done):
        reference_search(problem, sources, output_position)
        done("once")
        result = reference_search(problem, sources, output_position)
        done("twice")
        return result

    entry = Search("reference-twice", reference_twice, lambda layers: ("once", "twice"))
    assert register_search(entry) is entry is SEARCHES["reference-twice"]
    model = masked_lm("bert")
    result = _attribute(model, schedule="reference-twice")
    assert result.metadata["schedule"] == "reference-twice"
    assert_same_patterns(result, _attribute(model, schedule="reference"))
    with pytest.raises(ValueError, match="'reference-twice' is registered already"):
        register_search(Search("reference-twice", reference_search, lambda layers: ()))
    assert SEARCHES["reference-twice"] is entry


# ---------------------------------------------------------------------- route finders
@pytest.mark.parametrize("restored", [ROUTE_FINDERS], indirect=True)
def test_a_new_route_kind_is_one_registration(restored):
    """A newcomer's route kind: stay at the source, then step to the output."""

    def stay_routes(spec, query):
        layers = query.attention.shape[0]
        return [
            Route([i] * layers + [query.output_position], math.nan)
            for i in query.sources
        ]

    entry = register_route_finder(RouteFinder("stay", stay_routes))
    assert ROUTE_FINDERS["stay"] is entry
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
        register_route_finder(RouteFinder("stay", stay_routes))


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


def _taken(table):
    """An entry of ``table`` (one of the built-in ones)."""
    return next(iter(table.values()))


@pytest.mark.parametrize(
    "register, table, argument, entry_type, what",
    [
        ("register_family", "MODEL_FAMILIES", "family", "Family", "a family"),
        ("register_qoi_kind", "QOI_KINDS", "kind", "QoIKind", "a QoI kind"),
        ("register_route_finder", "ROUTE_FINDERS", "finder", "RouteFinder",
         "a route finder"),
        ("register_search", "SEARCHES", "search", "Search", "a search"),
    ],
)
def test_the_four_registries_have_one_shape(
    register, table, argument, entry_type, what
):
    """Every registry and its entry type are exported from the package; it takes the
    entry object (keyed by its ``name``) and ``overwrite`` by keyword only, returns the
    entry, and refuses a taken name and a wrong type in one wording each."""
    import inspect

    import captum_influence_patterns as cip
    from captum_influence_patterns.graph import MODEL_FAMILIES

    tables = {
        "MODEL_FAMILIES": MODEL_FAMILIES, "QOI_KINDS": QOI_KINDS,
        "ROUTE_FINDERS": ROUTE_FINDERS, "SEARCHES": SEARCHES,
    }
    table = tables[table]
    register = getattr(cip, register)
    assert {register.__name__, entry_type} <= set(cip.__all__)
    parameters = list(inspect.signature(register).parameters.values())
    assert [(p.name, p.kind, p.default) for p in parameters] == [
        (argument, inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("overwrite", inspect.Parameter.KEYWORD_ONLY, False),
    ]
    entry = _taken(table)
    assert isinstance(entry, getattr(cip, entry_type))
    message = (
        f"name: {what} {entry.name!r} is registered already; pass overwrite=True to "
        "replace it"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        register(entry)
    wrong_type = f"^{argument}: expected a {entry_type}, got str$"
    with pytest.raises(TypeError, match=wrong_type):
        register(entry.name)
    assert table[entry.name] is entry
    assert register(entry, overwrite=True) is entry is table[entry.name]


def test_the_tables_are_complete_once_the_package_is_imported():
    """A fresh interpreter that imports only the package (and the tables' public
    modules) finds every built-in entry."""
    import subprocess
    import sys

    code = (
        "import captum_influence_patterns\n"
        "from captum_influence_patterns.graph import MODEL_FAMILIES\n"
        "from captum_influence_patterns.models.qoi_kinds import QOI_KINDS\n"
        "from captum_influence_patterns.routes.finders import ROUTE_FINDERS\n"
        "from captum_influence_patterns.search import SEARCHES\n"
        "for table in (MODEL_FAMILIES, QOI_KINDS, ROUTE_FINDERS, SEARCHES):\n"
        "    print(' '.join(sorted(table)))\n"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split() for line in printed] == [
        ["albert", "bert", "distilbert", "electra", "gpt2", "llama", "mistral", "qwen2",
         "roberta"],
        ["causal_lm", "classifier", "embedded_readout", "masked_lm"],
        ["alti", "alti_logit", "attention_beam", "attention_norm", "best",
         "conductance", "conductance_all", "flow", "greedy", "information_flow",
         "rollout"],
        ["beam", "fast", "forward-mode", "reference", "row-wise"],
    ]
