"""paper/datasets.py: data files (GLUE-style labelled sentences, Marvin & Linzen pairs,
JSONL) and the agreement tasks, read into evaluation items whose QoIs are checked
against the model's own logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from captum_influence_patterns.paper.datasets import (
    FORMATS,
    EvaluationError,
    detect_format,
    glue_items,
    jsonl_items,
    marvin_linzen_items,
    read_items,
    read_marvin_linzen,
    stable_id,
    task_items,
    task_title,
)
from captum_influence_patterns.models.embedded import load_embedded_tokenizer
from captum_influence_patterns.models.explanation import explain, prepare_explanation
from captum_influence_patterns.models.loading import LoadedModel
from captum_influence_patterns.paper.evaluation import evaluate
from captum_influence_patterns.paper.records import read_records
from captum_influence_patterns.paper.settings import EvaluationSettings
from captum_influence_patterns.testing import SHAPE, masked_lm


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_embedded_tokenizer()


# ------------------------------------------------------------------------ GLUE files
def test_glue_items_target_is_the_label_and_contrast_the_other(tmp_path):
    path = _write(
        tmp_path / "dev.tsv",
        [
            "sentence\tlabel",
            "it 's a charming and often \" affecting journey . \t1",
            "unflinchingly bleak and desperate \t0",
            "",
        ],
    )
    items = glue_items(path)
    assert [(i.target, i.contrast, i.form) for i in items] == [
        ("1", "0", "1"),
        ("0", "1", "0"),
    ]
    assert items[0].text == "it 's a charming and often \" affecting journey ."
    assert [i.index for i in items] == [0, 1] and {i.task for i in items} == {"glue"}
    assert items[0].id == stable_id("glue", 0, items[0].text) and not items[0].roles


def test_glue_items_column_order_names_and_one_label_files(tmp_path):
    path = _write(
        tmp_path / "named.tsv",
        ["idx\tlabel\tsentence", "0\tpositive\ta fine film", "1\tnegative\tdull"],
    )
    items = glue_items(path, task="sst2")
    assert [(i.text, i.target, i.contrast) for i in items] == [
        ("a fine film", "positive", "negative"),
        ("dull", "negative", "positive"),
    ]
    one = _write(tmp_path / "one.tsv", ["sentence\tlabel", "good\t1"])
    assert glue_items(one)[0].contrast == "0"  # 0/1 labels: binary assumed
    named = _write(tmp_path / "named1.tsv", ["sentence\tlabel", "good\tpos"])
    with pytest.raises(ValueError, match="exactly two labels"):
        glue_items(named)
    assert glue_items(named, labels=("pos", "neg"))[0].contrast == "neg"


@pytest.mark.parametrize(
    "lines, message",
    [
        (["text\tgold", "a\t1"], "header with 'sentence' and 'label'"),
        (["sentence\tlabel", "a\t0", "b\t1", "c\t2"], "exactly two labels"),
        (["sentence\tlabel", "a\t"], "dev.tsv:2: empty sentence or label"),
        (["sentence\tlabel"], "no sentences"),
        ([], "empty file"),
    ],
)
def test_glue_items_bad_files(tmp_path, lines, message):
    path = tmp_path / "dev.tsv"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        glue_items(path)


def test_glue_items_give_the_classifier_qoi(tmp_path, tokenizer):
    """logit(label) - logit(other label) at [CLS], read off the model directly."""
    torch.manual_seed(0)
    config = BertConfig(
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        **{**SHAPE, "vocab_size": tokenizer.vocab_size},
    )
    model = BertForSequenceClassification(config).double().eval()
    loaded = LoadedModel(model=model, tokenizer=tokenizer, kind="classifier", name="c")
    path = _write(
        tmp_path / "dev.tsv",
        ["sentence\tlabel", "a charming film\t1", "dull and long\t0"],
    )
    for item in glue_items(path):
        explanation = prepare_explanation(
            loaded, item.text, target_class=item.target, contrast_class=item.contrast
        )
        with torch.no_grad():
            logits = model(**tokenizer(item.text, return_tensors="pt")).logits[0]
        gold = int(item.target)
        expected = float(logits[gold] - logits[1 - gold])
        assert explanation.qoi_value() == pytest.approx(expected, abs=1e-9)
        assert explanation.output_position == 0
    result = explain(loaded, explanation, n_steps=4, sources=[1, 2])
    assert [p.source for p in result.patterns[0]] == [1, 2]


# --------------------------------------------------------------- Marvin & Linzen files
ML_LINES = [
    "type\tform\tgood sentence\tbad sentence",
    "obj_rel_across_anim\tsing_MS_MV\tthe author that the guards like laughs .\t"
    "the author that the guards like laugh .",
    "obj_rel_across_anim\tplur_MS_MV\tthe authors that the guard likes laugh .\t"
    "the authors that the guard like laugh .",
    "simple_agrmt\tsing\tthe author is young .\tthe authors are young .",
    "simple_agrmt\tsing\tthe author is here .\tthe author is here now .",
    "simple_reflexives\tsing\tthe pilot hurt himself .\tthe pilot hurt themselves .",
]


def test_marvin_linzen_keeps_pairs_differing_in_one_word(tmp_path):
    path = _write(tmp_path / "ml.tsv", ML_LINES)
    items, skipped = read_marvin_linzen(path)
    assert skipped == 2  # two differing words; different lengths
    assert [(i.task, i.form, i.target, i.contrast) for i in items] == [
        ("obj_rel_across_anim", "sing_MS_MV", "laughs", "laugh"),
        ("obj_rel_across_anim", "plur_MS_MV", "likes", "like"),
        ("simple_reflexives", "sing", "himself", "themselves"),
    ]
    assert items[0].text == "the author that the guards like [MASK] ."
    assert items[1].text == "the authors that the guard [MASK] laugh ."
    assert [i.index for i in items] == [0, 1, 2]
    assert len({i.id for i in items}) == 3
    # No header row: the same items; another mask token.
    bare = _write(tmp_path / "bare.tsv", ML_LINES[1:])
    assert [i.text for i in marvin_linzen_items(bare)] == [i.text for i in items]
    roberta = marvin_linzen_items(bare, mask_token="<mask>")
    assert roberta[2].text == "the pilot hurt <mask> ."


def test_marvin_linzen_with_a_tokenizer_skips_words_of_several_pieces(
    tmp_path, tokenizer
):
    assert len(tokenizer.tokenize("unflinchingly")) > 1
    lines = ML_LINES[1:2] + ["t\tf\tthe author unflinchingly .\tthe author sang ."]
    path = _write(tmp_path / "ml.tsv", lines)
    items, skipped = read_marvin_linzen(path, tokenizer=tokenizer)
    assert len(items) == 1 and skipped == 1
    with pytest.raises(ValueError, match="expected 4 tab-separated columns"):
        marvin_linzen_items(_write(tmp_path / "short.tsv", ["a\tb\tc"]))
    with pytest.raises(ValueError, match="no pair of sentences"):
        marvin_linzen_items(_write(tmp_path / "none.tsv", ML_LINES[3:5]))


def test_marvin_linzen_items_give_the_masked_lm_qoi(tmp_path, tokenizer):
    """logit(good word) - logit(bad word) at the masked word, read off the model."""
    model = masked_lm("bert", vocab_size=tokenizer.vocab_size)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, kind="masked_lm", name="m")
    items = marvin_linzen_items(_write(tmp_path / "ml.tsv", ML_LINES), tokenizer=None)
    for item in items:
        explanation = prepare_explanation(loaded, item.text, item.target, item.contrast)
        ids = tokenizer(item.text, return_tensors="pt")["input_ids"]
        at = int((ids[0] == tokenizer.mask_token_id).nonzero())
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, at]
        good, bad = tokenizer.convert_tokens_to_ids([item.target, item.contrast])
        assert explanation.output_position == at
        assert explanation.qoi_value() == pytest.approx(
            float(logits[good] - logits[bad]), abs=1e-9
        )


# ------------------------------------------------------------------------- by format
def test_read_items_by_format(tmp_path, tokenizer):
    ml = _write(tmp_path / "ml.tsv", ML_LINES)
    items, description = read_items(ml, "marvin-linzen", tokenizer)
    assert description["format"] == "marvin-linzen" and description["skipped"] == 2
    assert description["items"] == len(items) == 3
    glue = _write(tmp_path / "dev.tsv", ["sentence\tlabel", "fine\t1"])
    items, description = read_items(glue, "glue")
    assert description == {
        "input": str(glue.resolve()),
        "format": "glue",
        "items": 1,
    }
    jsonl = _write(
        tmp_path / "x.jsonl",
        [
            '{"text": "a [MASK] .", "target": "is", '
            '"contrast": "are", "roles": {"a": 1}}'
        ],
    )
    items, _ = read_items(jsonl)
    assert items == jsonl_items(jsonl) and items[0].roles == {"a": 1}
    with pytest.raises(ValueError, match="format must be one of"):
        read_items(jsonl, "csv")
    assert FORMATS == ("jsonl", "glue", "marvin-linzen")


def test_format_read_from_the_file(tmp_path):
    """Issue 19, items 10 and 13: the format comes from the first line and the
    extension, and a byte-order mark is not part of the first cell."""
    cases = {
        "dev.tsv": (["sentence\tlabel", "fine\t1"], "glue"),
        "dev.txt": (["label\tsentence", "1\tfine"], "glue"),
        "pairs.txt": (["type\tform\tgood sentence\tbad sentence",
                       "t\tf\tit is\tit are"], "marvin-linzen"),
        "pairs.tsv": (["t\tf\tit is\tit are"], "marvin-linzen"),
        "items.txt": (['{"text": "a [MASK] .", "target": "is", "contrast": "are"}'],
                      "jsonl"),
        "items.jsonl": (["not json yet"], "jsonl"),
    }
    for name, (lines, expected) in cases.items():
        path = _write(tmp_path / name, lines)
        assert detect_format(path) == expected, name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
        assert detect_format(path) == expected, f"{name} with a byte-order mark"
    glue = tmp_path / "dev.tsv"  # with its byte-order mark
    items, description = read_items(glue)
    assert description["format"] == "glue" and items[0].text == "fine"
    with pytest.raises(ValueError, match="--format"):
        detect_format(_write(tmp_path / "notes.md", ["# notes"]))
    with pytest.raises(ValueError, match="--format glue"):
        read_items(glue, "jsonl")


def test_task_items_are_the_generated_sentences(tokenizer):
    items = task_items(["sva_obj_rc", "sva_pp"], 4, tokenizer)
    assert [i.index for i in items] == list(range(8))
    assert [i.task for i in items] == ["sva_obj_rc"] * 4 + ["sva_pp"] * 4
    assert all("[MASK]" in i.text and i.roles for i in items)


def test_task_titles_in_words():
    assert task_title("sva_pp").startswith("Subject-verb agreement across a prep")
    assert task_title("obj_rel_across_anim") == (
        "Agreement across an object relative clause (animate)"
    )
    assert task_title("glue").startswith("Labelled sentences")
    assert task_title("my_own_task") == "my own task"


# ------------------------------------------------- agreement tasks and JSONL files
# (on the tiny loaded model and conftest's items: six sva_obj_rc sentences)
N = 6


def test_items_have_stable_unique_ids(loaded, items):
    again = task_items(["sva_obj_rc"], N, loaded.tokenizer)
    assert [i.id for i in again] == [i.id for i in items]
    assert len({i.id for i in items}) == N
    assert [i.index for i in items] == list(range(N))
    assert all(i.id.startswith("sva_obj_rc-") for i in items)
    assert all(i.roles["subject"] == 2 for i in items)


def test_jsonl_input(loaded, tmp_path):
    source = tmp_path / "in.jsonl"
    rows = [
        {
            "text": "the author that the guard likes [MASK] young .",
            "target": "is",
            "contrast": "are",
            "roles": {"subject": 2, "attractor": 5},
        },
        {
            "text": "the guards [MASK] here .",
            "target": "are",
            "contrast": "is",
            "id": "mine",
        },
    ]
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    parsed = jsonl_items(source)
    assert parsed[1].id == "mine" and parsed[0].task == "custom"
    path = tmp_path / "out.jsonl"
    settings = EvaluationSettings(n_steps=2, sources="roles")
    evaluate(loaded, parsed, path, settings, show_progress=False)
    records = read_records(path)
    assert records[0]["sources"] == [2, 5]
    assert records[1]["sources"] == [1, 2, 4, 5]  # no roles: every non-special token
    every = tmp_path / "every.jsonl"
    evaluate(loaded, parsed, every, EvaluationSettings(n_steps=2), show_progress=False)
    # the default explains every token: all positions but the [MASK] output (its
    # embedding equals the [MASK] baseline's), [CLS] and [SEP] included
    assert read_records(every)[1]["sources"] == [0, 1, 2, 4, 5, 6]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n' + json.dumps(rows[0]) + "\n[1]\n")
    with pytest.raises(EvaluationError, match=r"2 invalid item\(s\): line 1: .*"
                       r"KeyError: 'target'.*; line 3: "):
        jsonl_items(bad)
    repeated = tmp_path / "repeated.jsonl"
    repeated.write_text(json.dumps(rows[1]) + "\n" + json.dumps(rows[1]) + "\n")
    with pytest.raises(EvaluationError, match=r"ids repeat: \['mine'\]"):
        jsonl_items(repeated)


def test_bad_task_names(loaded):
    with pytest.raises(EvaluationError, match="nosuch"):
        task_items(["sva_obj_rc", "nosuch"], 2, loaded.tokenizer)
    with pytest.raises(EvaluationError, match="n: expected"):
        task_items(["sva_obj_rc"], 0, loaded.tokenizer)
