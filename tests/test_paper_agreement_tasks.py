"""Tests of the agreement task generators (docs/method.md, section 10)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from captum_influence_patterns.paper import agreement_tasks as at

try:
    from captum_influence_patterns.models.embedded import load_embedded_tokenizer

    TOKENIZER = load_embedded_tokenizer()
except Exception:  # pragma: no cover - the packaged model is a test dependency
    TOKENIZER = None

pytestmark = pytest.mark.skipif(TOKENIZER is None, reason="embedded tokenizer missing")

N = 24  # six per form


class TestVocabulary:
    def test_single_word_pieces(self) -> None:
        words = set(at.ADJECTIVES + at.PAST_VERBS + at.COMPLEMENT_VERBS)
        words |= set(at.DETERMINERS + at.MODALS + at.BARE_VERBS + at.RELATIVIZERS)
        for pairs in (at.NUMBER_NOUNS, at.GENDER_NOUNS, at.AGREEING_VERBS,
                      at.PREPOSITIONS):
            for pair in pairs:
                words |= set(pair)
        for spec in at.TASKS.values():
            words |= set(spec.words)
        for word in sorted(words):
            assert len(TOKENIZER.tokenize(word)) == 1, word

    def test_vocabulary_is_declared_package_data(self) -> None:
        import configparser
        from pathlib import Path

        root = Path(at.__file__).resolve().parents[2]
        config = configparser.ConfigParser()
        config.read(root / "setup.cfg", encoding="utf-8")
        data = config["options.package_data"][at.__package__].split(",")
        assert at.VOCABULARY_FILE in [pattern.strip() for pattern in data] or any(
            Path(at.VOCABULARY_FILE).match(pattern.strip()) for pattern in data
        )
        with open(Path(at.__file__).parent / at.VOCABULARY_FILE, encoding="utf-8") as fh:
            lists = json.load(fh)["lists"]
        assert at.NUMBER_NOUNS[0] == ("author", "authors")
        assert len(at.NUMBER_NOUNS) == len(lists["number_nouns"]["words"]) == 84
        assert all(entry["about"] for entry in lists.values())
        for name, entry in lists.items():  # pairs are tuples, words strings
            value = getattr(at, name.upper())
            assert [list(w) if isinstance(w, tuple) else w for w in value] == entry[
                "words"
            ]

    def test_noun_split_disjoint(self) -> None:
        for kind in ("number", "gender"):
            train = at.nouns(kind, "train")
            test = at.nouns(kind, "test")
            train_words = {w for pair in train for w in pair}
            test_words = {w for pair in test for w in pair}
            assert not train_words & test_words
            assert len(test) > 5
            assert sorted(train + test) == sorted(at.nouns(kind, "all"))
        with pytest.raises(ValueError):
            at.nouns("number", "dev")

    def test_six_tasks(self) -> None:
        assert len(at.TASKS) == 6
        features = Counter(spec.feature for spec in at.TASKS.values())
        assert features == Counter({"number": 5, "gender": 1})


class TestGenerate:
    def test_balance_length_roles(self) -> None:
        for task, spec in at.TASKS.items():
            examples, stats = at.generate_with_stats(task, N, TOKENIZER, seed=3)
            assert len(examples) == N
            assert stats.dropped_length == 0
            counts = Counter(e.form for e in examples)
            assert counts == Counter({f: N // 4 for f in spec.forms}), task
            lengths = {len(TOKENIZER(e.text)["input_ids"]) for e in examples}
            assert lengths == {spec.n_words + 2}, task
            for e in examples:
                ids = TOKENIZER(e.text)["input_ids"]
                assert ids == e.input_ids
                assert ids[e.output_position] == TOKENIZER.mask_token_id
                assert e.roles["mask"] == e.output_position
                assert e.roles["subject"] != e.roles["attractor"]
                tokens = TOKENIZER.convert_ids_to_tokens(ids)
                assert ids[e.roles["subject"]] == \
                                 TOKENIZER.convert_tokens_to_ids(
                                     tokens[e.roles["subject"]])

    def test_prefix_balanced(self) -> None:
        examples = at.generate("sva_pp", 10, TOKENIZER, seed=1)
        counts = Counter(e.form for e in examples)
        assert max(counts.values()) - min(counts.values()) <= 1

    def test_deterministic(self) -> None:
        for task in at.TASKS:
            a = at.generate(task, N, TOKENIZER, seed=5, noun_split="train")
            b = at.generate(task, N, TOKENIZER, seed=5, noun_split="train")
            c = at.generate(task, N, TOKENIZER, seed=6, noun_split="train")
            assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
            assert [e.text for e in a] != [e.text for e in c]

    def test_labels_follow_subject(self) -> None:
        sg = {s for s, _ in at.NUMBER_NOUNS}
        pl = {p for _, p in at.NUMBER_NOUNS}
        male = {m for m, _ in at.GENDER_NOUNS}
        female = {f for _, f in at.GENDER_NOUNS}
        for task, spec in at.TASKS.items():
            first, second = (sg, pl) if spec.feature == "number" else (male, female)
            for e in at.generate(task, N, TOKENIZER, seed=2):
                tokens = TOKENIZER.convert_ids_to_tokens(e.input_ids)
                subject = tokens[e.roles["subject"]]
                attractor = tokens[e.roles["attractor"]]
                subj_first = subject in first
                assert subj_first or subject in second
                assert (e.form[0] in "SM") == subj_first, e.text
                assert (e.form[1] in "SM") == (attractor in first), e.text
                assert e.label == int(subj_first)
                assert e.correct == spec.words[0 if subj_first else 1]
                assert e.wrong == spec.words[1 if subj_first else 0]
                correct_id = TOKENIZER.convert_tokens_to_ids(e.correct)
                assert e.correct_id == correct_id
                assert e.sign == (1.0 if subj_first else -1.0)

    def test_relative_clause_verb_agreement(self) -> None:
        sg_verbs = {s for s, _ in at.AGREEING_VERBS}
        for task, agrees_with in (("sva_obj_rc", 1), ("sva_subj_rc", 0),
                                  ("reflexive_rc", 1)):
            for e in at.generate(task, N, TOKENIZER, seed=4):
                verb = TOKENIZER.convert_ids_to_tokens(e.input_ids)[e.roles["rc_verb"]]
                assert (verb in sg_verbs) == (e.form[agrees_with] == "S"), e.text

    def test_noun_split_used(self) -> None:
        test_words = {w for pair in at.nouns("number", "test") for w in pair}
        for split, inside in (("test", True), ("train", False)):
            for e in at.generate("sva_obj_rc", N, TOKENIZER, seed=0, noun_split=split):
                tokens = TOKENIZER.convert_ids_to_tokens(e.input_ids)
                for role in ("subject", "attractor"):
                    assert (tokens[e.roles[role]] in test_words) == inside

    def test_json_round_trip(self) -> None:
        examples = at.generate("reflexive_gender", 8, TOKENIZER, seed=0)
        text = json.dumps(at.examples_to_json(examples))
        back = at.examples_from_json(json.loads(text))
        assert back == examples
        first = examples[0]
        assert at.AgreementExample.from_dict(first.to_dict()) == first

    def test_batch_inputs(self) -> None:
        examples = at.generate("sva_sent_comp", 8, TOKENIZER, seed=0)
        batch = at.batch_inputs(examples)
        assert tuple(batch["input_ids"].shape) == (8, 10)
        assert batch["output_position"].tolist() == [6] * 8
        assert batch["sign"].tolist() == [e.sign for e in examples]

    def test_errors(self) -> None:
        with pytest.raises(KeyError):
            at.generate("nope", 4, TOKENIZER)
        with pytest.raises(ValueError):
            at.generate("sva_pp", 4, TOKENIZER, noun_split="dev")
