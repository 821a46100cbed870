"""Generators for the six Marvin & Linzen style agreement tasks (docs/method.md,
section 10).

Four subject-verb agreement (SVA) tasks ask for ``is``/``are`` at a masked position, two
reflexive-anaphora tasks ask for a reflexive pronoun (``himself``/``themselves`` across
a relative clause, ``himself``/``herself`` in the gender task). Every task has four
balanced *forms*: the subject's feature crossed with the attractor's feature (``"SS"``,
``"SP"``, ``"PS"``, ``"PP"`` for number; ``"MM"``, ``"MF"``, ``"FM"``, ``"FF"`` for
gender), the first letter being the subject's.

The vocabulary is this project's own, package data in ``data/vocabulary.json``. Every word is a single word piece of the
BERT uncased vocabulary, so within a task every sentence has the same token length;
sentences that tokenize to a different length under the given tokenizer are dropped and
counted (:func:`generate_with_stats`). Nouns are split into training and held-out (test)
nouns, so a readout fitted on one set can be evaluated on the other (``noun_split``).

Example:
    >>> from captum_influence_patterns.paper.agreement_tasks import generate
    >>> examples = generate("sva_obj_rc", 8, tokenizer, seed=0)  # doctest: +SKIP
    >>> examples[1].text  # doctest: +SKIP
    'the clerk that the directors help [MASK] happy .'
"""

from __future__ import annotations

import json
import logging
import random
from importlib import resources
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..models.embedded import final_hidden_at, load_embedded_tokenizer

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Vocabulary: package data (data/vocabulary.json), each list with what it holds
# --------------------------------------------------------------------------------------

#: The vocabulary's file, in this package.
VOCABULARY_FILE = "data/vocabulary.json"


def _vocabulary() -> Dict[str, Any]:
    text = resources.files(__package__).joinpath(VOCABULARY_FILE).read_text("utf-8")
    return {
        name: tuple(tuple(w) if isinstance(w, list) else w for w in entry["words"])
        for name, entry in json.loads(text)["lists"].items()
    }


_WORDS = _vocabulary()

#: Nouns with number, as (singular, plural); every fourth one is a held-out (test) noun.
NUMBER_NOUNS: Tuple[Tuple[str, str], ...] = _WORDS["number_nouns"]
#: Gendered nouns, as (male, female); every fourth pair is held out (test).
GENDER_NOUNS: Tuple[Tuple[str, str], ...] = _WORDS["gender_nouns"]
#: Transitive verbs in the present tense, as (singular, plural) agreeing forms.
AGREEING_VERBS: Tuple[Tuple[str, str], ...] = _WORDS["agreeing_verbs"]
#: Past-tense transitive verbs (the same form for either number).
PAST_VERBS: Tuple[str, ...] = _WORDS["past_verbs"]
#: Past-tense verbs taking a sentential complement.
COMPLEMENT_VERBS: Tuple[str, ...] = _WORDS["complement_verbs"]
#: Two-word prepositions (``next to``): all the same length keeps token length fixed.
PREPOSITIONS: Tuple[Tuple[str, str], ...] = _WORDS["prepositions"]
#: Predicate adjectives.
ADJECTIVES: Tuple[str, ...] = _WORDS["adjectives"]
#: Gender-neutral determiners for the gender task (no possessive ``his``/``her``).
DETERMINERS: Tuple[str, ...] = _WORDS["determiners"]
#: Relative pronouns for the gender task.
RELATIVIZERS: Tuple[str, ...] = _WORDS["relativizers"]
#: Modal verbs for the gender task.
MODALS: Tuple[str, ...] = _WORDS["modals"]
#: Bare transitive verbs for the gender task.
BARE_VERBS: Tuple[str, ...] = _WORDS["bare_verbs"]

NOUN_SPLITS = ("train", "test", "all")
NUMBER_FORMS = ("SS", "SP", "PS", "PP")
GENDER_FORMS = ("MM", "MF", "FM", "FF")


def _split(items: Sequence[Any], noun_split: str) -> List[Any]:
    """Select training (index % 4 != 3), test (index % 4 == 3) or all items."""
    if noun_split not in NOUN_SPLITS:
        raise ValueError(f"noun_split must be one of {NOUN_SPLITS}, got {noun_split!r}")
    if noun_split == "all":
        return list(items)
    test = noun_split == "test"
    return [item for i, item in enumerate(items) if (i % 4 == 3) == test]


def nouns(kind: str, noun_split: str = "all") -> List[Tuple[str, str]]:
    """Nouns of one split.

    Args:
        kind: ``"number"`` for (singular, plural) pairs, ``"gender"`` for
            (male, female).
        noun_split: ``"train"``, ``"test"`` or ``"all"``; train and test are disjoint.

    Returns:
        The noun pairs of that split, in vocabulary order.
    """
    if kind == "number":
        return _split(NUMBER_NOUNS, noun_split)
    if kind == "gender":
        return _split(GENDER_NOUNS, noun_split)
    raise ValueError(f"kind must be 'number' or 'gender', got {kind!r}")


# --------------------------------------------------------------------------------------
# Examples and task specifications
# --------------------------------------------------------------------------------------


@dataclass
class AgreementExample:
    """One generated sentence with a masked agreement target.

    Attributes:
        text: The sentence, with the tokenizer's mask token at the target.
        task: Task name (a key of :data:`TASKS`).
        form: Subject feature then attractor feature, e.g. ``"SP"`` or ``"FM"``.
        output_position: Token index of the mask token, counting ``[CLS]`` as 0.
        correct: The correct word at the mask (agrees with the subject).
        wrong: The wrong word (agrees with the other feature value).
        roles: Word role -> token index (``[CLS]`` is 0), e.g. ``{"subject": 2, ...}``.
        label: 1 when the correct word is the readout's positive class (singular for
            number, male for gender), 0 otherwise.
        feature: ``"number"`` or ``"gender"``: which feature the task tests.
        input_ids: Token ids of ``text`` as tokenized when generated (with special
            tokens).
        correct_id: Token id of ``correct`` (-1 when unknown).
        wrong_id: Token id of ``wrong`` (-1 when unknown).
    """

    text: str
    task: str
    form: str
    output_position: int
    correct: str
    wrong: str
    roles: Dict[str, int]
    label: int
    feature: str = "number"
    input_ids: List[int] = field(default_factory=list)
    correct_id: int = -1
    wrong_id: int = -1

    @property
    def sign(self) -> float:
        """+1.0 when the correct word is the readout's positive class, else -1.0."""
        return 1.0 if self.label == 1 else -1.0

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable dict of all fields."""
        out = asdict(self)
        out["roles"] = dict(self.roles)
        out["input_ids"] = list(self.input_ids)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "AgreementExample":
        """Rebuild an example from :meth:`to_dict` output (e.g. after JSON).

        Args:
            data: The dict.

        Returns:
            The example.
        """
        values = dict(data)
        values["roles"] = {str(k): int(v) for k, v in values["roles"].items()}
        values["input_ids"] = [int(i) for i in values.get("input_ids", [])]
        return cls(**values)


@dataclass(frozen=True)
class TaskSpec:
    """Specification of one agreement task.

    Attributes:
        name: Task name (identifier).
        title: The task in words, for reports.
        description: Template in the style of Marvin & Linzen (capitals vary).
        feature: ``"number"`` or ``"gender"``.
        forms: The four balanced forms.
        words: (positive-class word, negative-class word): ``("is", "are")``,
            ``("himself", "themselves")`` or ``("himself", "herself")``.
        template: Word roles in order; ``"mask"`` marks the target.
    """

    name: str
    title: str
    description: str
    feature: str
    forms: Tuple[str, ...]
    words: Tuple[str, str]
    template: Tuple[str, ...]

    @property
    def n_words(self) -> int:
        """Number of words in a sentence (the token length is this plus 2)."""
        return len(self.template)


TASKS: Dict[str, TaskSpec] = {
    "sva_obj_rc": TaskSpec(
        name="sva_obj_rc",
        title="Subject-verb agreement across an object relative clause",
        description="the AUTHOR that the GUARD LIKES [MASK] YOUNG .",
        feature="number",
        forms=NUMBER_FORMS,
        words=("is", "are"),
        template=(
            "subject_det", "subject", "complementizer", "attractor_det", "attractor",
            "rc_verb", "mask", "adjective", "period",
        ),
    ),
    "sva_subj_rc": TaskSpec(
        name="sva_subj_rc",
        title="Subject-verb agreement across a subject relative clause",
        description="the AUTHOR that LIKES the GUARD [MASK] YOUNG .",
        feature="number",
        forms=NUMBER_FORMS,
        words=("is", "are"),
        template=(
            "subject_det", "subject", "complementizer", "rc_verb", "attractor_det",
            "attractor", "mask", "adjective", "period",
        ),
    ),
    "sva_sent_comp": TaskSpec(
        name="sva_sent_comp",
        title="Subject-verb agreement in a sentential complement",
        description="the GUARD SAID the AUTHOR [MASK] YOUNG .",
        feature="number",
        forms=NUMBER_FORMS,
        words=("is", "are"),
        template=(
            "attractor_det", "attractor", "matrix_verb", "subject_det", "subject",
            "mask", "adjective", "period",
        ),
    ),
    "sva_pp": TaskSpec(
        name="sva_pp",
        title="Subject-verb agreement across a prepositional phrase",
        description="the AUTHOR NEXT TO the GUARD [MASK] YOUNG .",
        feature="number",
        forms=NUMBER_FORMS,
        words=("is", "are"),
        template=(
            "subject_det", "subject", "preposition", "preposition_2", "attractor_det",
            "attractor", "mask", "adjective", "period",
        ),
    ),
    "reflexive_rc": TaskSpec(
        name="reflexive_rc",
        title="Reflexive anaphora (number) across a relative clause",
        description="the AUTHOR that the GUARD LIKES HURT [MASK] .",
        feature="number",
        forms=NUMBER_FORMS,
        words=("himself", "themselves"),
        template=(
            "subject_det", "subject", "complementizer", "attractor_det", "attractor",
            "rc_verb", "verb", "mask", "period",
        ),
    ),
    "reflexive_gender": TaskSpec(
        name="reflexive_gender",
        title="Reflexive anaphora (gender) across a relative clause",
        description="SOME WIZARD WHO CAN DRESS OUR MAN CAN CLEAN [MASK]",
        feature="gender",
        forms=GENDER_FORMS,
        words=("himself", "herself"),
        template=(
            "subject_det", "subject", "relativizer", "rc_modal", "rc_verb",
            "attractor_det", "attractor", "modal", "verb", "mask",
        ),
    ),
}


def _fill(
    spec: TaskSpec, form: str, rng: random.Random, pool: Sequence[Tuple[str, str]]
) -> Tuple[List[str], str, str]:
    """Draw the varying words of one sentence of ``spec`` in ``form``.

    Returns:
        (words with the literal placeholder ``"<mask>"`` at the target, correct, wrong).
    """
    subject_pair, attractor_pair = rng.sample(list(pool), 2)
    subj_first = form[0] in ("S", "M")  # singular / male subject
    attr_first = form[1] in ("S", "M")
    subject = subject_pair[0 if subj_first else 1]
    attractor = attractor_pair[0 if attr_first else 1]
    positive, negative = spec.words
    correct, wrong = (positive, negative) if subj_first else (negative, positive)

    if spec.feature == "gender":
        filler = {
            "subject_det": rng.choice(DETERMINERS),
            "relativizer": rng.choice(RELATIVIZERS),
            "rc_modal": rng.choice(MODALS),
            "rc_verb": rng.choice(BARE_VERBS),
            "attractor_det": rng.choice(DETERMINERS),
            "modal": rng.choice(MODALS),
            "verb": rng.choice(BARE_VERBS),
        }
    else:
        sg, pl = rng.choice(AGREEING_VERBS)
        # The relative-clause verb agrees with its own subject: the attractor in
        # object relative clauses, the head noun (the task's subject) in subject
        # relative clauses.
        agrees_with_first = subj_first if spec.name == "sva_subj_rc" else attr_first
        prep, prep_2 = rng.choice(PREPOSITIONS)
        filler = {
            "subject_det": "the",
            "attractor_det": "the",
            "complementizer": "that",
            "rc_verb": sg if agrees_with_first else pl,
            "matrix_verb": rng.choice(COMPLEMENT_VERBS),
            "verb": rng.choice(PAST_VERBS),
            "preposition": prep,
            "preposition_2": prep_2,
            "adjective": rng.choice(ADJECTIVES),
            "period": ".",
        }
    filler["subject"] = subject
    filler["attractor"] = attractor
    filler["mask"] = "<mask>"
    return [filler[role] for role in spec.template], correct, wrong


@dataclass
class GenerationStats:
    """Bookkeeping of one :func:`generate_with_stats` call.

    Attributes:
        requested: Examples asked for.
        generated: Examples returned.
        dropped_length: Sentences dropped because they did not tokenize to
            ``n_words + 2`` tokens (some word was not a single word piece).
        dropped_duplicate: Sentences dropped as repeats of earlier ones.
        token_length: The fixed token length of the task (with special tokens).
    """

    requested: int = 0
    generated: int = 0
    dropped_length: int = 0
    dropped_duplicate: int = 0
    token_length: int = 0


def _token_ids(tokenizer: Any, text: str) -> List[int]:
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def generate_with_stats(
    task: str,
    n: int,
    tokenizer: Optional[Any] = None,
    seed: int = 0,
    noun_split: str = "all",
    allow_duplicates: bool = False,
) -> Tuple[List[AgreementExample], GenerationStats]:
    """Generate ``n`` examples of one task, and say how many sentences were dropped.

    Forms are interleaved (``SS, SP, PS, PP, SS, ...``), so the result and every prefix
    of it are balanced across forms (counts differ by at most one).

    Args:
        task: A key of :data:`TASKS`.
        n: Number of examples.
        tokenizer: A Hugging Face tokenizer with a mask token (BERT uncased vocabulary
            keeps every word a single piece); ``None`` for the embedded MiniLM's.
        seed: Seed of the ``random.Random`` that draws the words.
        noun_split: ``"train"``, ``"test"`` or ``"all"`` nouns.
        allow_duplicates: Keep repeated sentences (otherwise redrawn while possible).

    Returns:
        (examples, stats).

    Raises:
        KeyError: Unknown task.
        RuntimeError: Too many sentences were dropped to reach ``n``.
    """
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    spec = TASKS[task]
    if n < 0:
        raise ValueError("n must be non-negative")
    pool = nouns(spec.feature, noun_split)
    tokenizer = default_tokenizer(tokenizer)
    mask_token = tokenizer.mask_token
    mask_id = tokenizer.mask_token_id
    if mask_token is None or mask_id is None:
        raise ValueError("the tokenizer has no mask token")
    token_length = spec.n_words + 2
    stats = GenerationStats(requested=n, token_length=token_length)
    rng = random.Random(seed)
    seen: set = set()
    examples: List[AgreementExample] = []
    max_attempts = 50 * n + 100
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(
                f"could only generate {len(examples)} of {n} examples of {task!r} "
                f"({stats.dropped_length} dropped for token length, "
                f"{stats.dropped_duplicate} duplicates)"
            )
        form = spec.forms[len(examples) % len(spec.forms)]
        words, correct, wrong = _fill(spec, form, rng, pool)
        text = " ".join(mask_token if w == "<mask>" else w for w in words)
        # Redraw repeated sentences, unless so many attempts were spent that the
        # vocabulary is nearly exhausted (then repeats are accepted).
        if not allow_duplicates and text in seen and attempts <= 10 * n + 50:
            stats.dropped_duplicate += 1
            continue
        ids = _token_ids(tokenizer, text)
        output_position = spec.template.index("mask") + 1
        if len(ids) != token_length or ids[output_position] != mask_id:
            stats.dropped_length += 1
            continue
        seen.add(text)
        examples.append(
            _example(task, form, text, ids, (correct, wrong), tokenizer)
        )
    stats.generated = len(examples)
    if stats.dropped_length:
        logger.warning(
            "%s: dropped %d sentences that did not tokenize to %d tokens",
            task,
            stats.dropped_length,
            token_length,
        )
    return examples, stats


def _example(
    task: str,
    form: str,
    text: str,
    ids: List[int],
    words: Tuple[str, str],
    tokenizer: Any,
) -> AgreementExample:
    """One generated sentence as an example: its roles are the template's slots."""
    spec = TASKS[task]
    correct, wrong = words
    correct_id = tokenizer.convert_tokens_to_ids(correct)
    wrong_id = tokenizer.convert_tokens_to_ids(wrong)
    return AgreementExample(
        text=text,
        task=task,
        form=form,
        output_position=spec.template.index("mask") + 1,
        correct=correct,
        wrong=wrong,
        roles={
            role: i + 1
            for i, role in enumerate(spec.template)
            if role not in ("period", "preposition_2")
        },
        label=1 if form[0] in ("S", "M") else 0,
        feature=spec.feature,
        input_ids=ids,
        correct_id=int(correct_id) if correct_id is not None else -1,
        wrong_id=int(wrong_id) if wrong_id is not None else -1,
    )


def generate(
    task: str,
    n: int,
    tokenizer: Optional[Any] = None,
    seed: int = 0,
    noun_split: str = "all",
) -> List[AgreementExample]:
    """Generate ``n`` examples of one task, balanced across its four forms.

    Deterministic for a given ``(task, n, tokenizer, seed, noun_split)``; every example
    of a task has the same token length. Dropped sentences are logged (see
    :func:`generate_with_stats` for the counts).

    Args:
        task: A key of :data:`TASKS`.
        n: Number of examples.
        tokenizer: A Hugging Face tokenizer with a mask token; ``None`` for the
            embedded MiniLM's.
        seed: Seed of the ``random.Random`` that draws the words.
        noun_split: ``"train"``, ``"test"`` or ``"all"`` nouns.

    Returns:
        The examples.
    """
    return generate_with_stats(task, n, tokenizer, seed=seed, noun_split=noun_split)[0]


def batch_inputs(examples: Sequence[AgreementExample]) -> Dict[str, Any]:
    """Stack examples of one task into tensors for a forward function.

    Args:
        examples: Examples with equal token length (e.g. of one task).

    Returns:
        ``{"input_ids": (B, T) long, "attention_mask": (B, T) long,
        "output_position": (B,) long, "sign": (B,) float, "correct_id": (B,) long,
        "wrong_id": (B,) long}``.
    """
    import torch

    if not examples:
        raise ValueError("no examples")
    lengths = {len(e.input_ids) for e in examples}
    if len(lengths) != 1:
        raise ValueError(f"examples have different token lengths: {sorted(lengths)}")
    input_ids = torch.tensor([e.input_ids for e in examples], dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "output_position": torch.tensor([e.output_position for e in examples]),
        "sign": torch.tensor([e.sign for e in examples], dtype=torch.float),
        "correct_id": torch.tensor([e.correct_id for e in examples]),
        "wrong_id": torch.tensor([e.wrong_id for e in examples]),
    }


def examples_to_json(examples: Sequence[AgreementExample]) -> List[Dict[str, Any]]:
    """Dicts of examples, ready for ``json.dump``."""
    return [e.to_dict() for e in examples]


def examples_from_json(data: Sequence[Dict[str, Any]]) -> List[AgreementExample]:
    """Examples from :func:`examples_to_json` output."""
    return [AgreementExample.from_dict(d) for d in data]


def default_tokenizer(tokenizer: Optional[Any] = None) -> Any:
    """The given tokenizer, or the embedded MiniLM's (offline) when ``None``."""
    return load_embedded_tokenizer() if tokenizer is None else tokenizer


def readout_sign(example: AgreementExample) -> Tuple[str, float]:
    """Readout kind and sign for an example.

    Args:
        example: An agreement example.

    Returns:
        (kind, sign): ``kind`` is the task's feature (``"number"``/``"gender"``);
        ``sign`` is +1.0 when the correct word is the readout's positive class
        (singular / male), else -1.0, so ``sign * (w . h + b)`` is
        ``logit(correct) - logit(wrong)``.
    """
    kind = TASKS[example.task].feature
    return kind, (1.0 if example.label == 1 else -1.0)


@torch.no_grad()
def mask_hidden_states(
    model: nn.Module,
    examples: Sequence[AgreementExample],
    batch_size: int = 256,
) -> Tensor:
    """Final hidden states at the mask position of examples of one token length.

    Args:
        model: The encoder.
        examples: Examples (of one task, so of one token length).
        batch_size: Rows per forward pass.

    Returns:
        (len(examples), hidden) in the model's dtype.
    """
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        ids = torch.tensor([e.input_ids for e in chunk], dtype=torch.long)
        pos = torch.tensor([e.output_position for e in chunk], dtype=torch.long)
        out.append(final_hidden_at(model, ids, pos, torch.ones_like(ids)))
    return torch.cat(out)
