"""Faithfulness of token attributions: removals checked against the model run by
hand, the measures against their definitions, and the summary's intervals."""

from __future__ import annotations

import math

import pytest
import torch

from captum_influence_patterns.paper.faithfulness import (
    TOKEN_METHODS,
    faithfulness_record,
    faithfulness_summary,
    token_scores,
)
from captum_influence_patterns.paper.faithfulness_report import (
    FIGURE,
    faithfulness_section,
    records_faithfulness,
)
from captum_influence_patterns.testing import (
    MASK_ID,
    agreement_batch,
    attribution,
    masked_lm,
)


def _qoi(model, ids, args, mask=None):
    """The masked-LM logit difference at position 4, run on the model directly."""
    with torch.no_grad():
        logits = model(ids[None], attention_mask=mask).logits[0, int(args[0])]
    return float(logits[int(args[1])] - logits[int(args[2])])


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_measures_against_the_model_run_by_hand(family):
    model = masked_lm(family)
    ids, args = agreement_batch(batch=1)
    ip = attribution(model)
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=8)
    positions = [0, 1, 2, 3]
    blanks = {"unk": 1, "deletion": "deletion"}
    scores = {"ordered": torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, 0.0, 0.0])}
    record = faithfulness_record(
        ip, request, 0, 4, positions, blanks, scores=scores, ks=(1, 2)
    )
    row = ids[0]
    full = _qoi(model, row, [a[0] for a in args])
    assert record["qoi"] == pytest.approx(full, abs=1e-9)

    def blanked(removed, blank):
        if blank == "deletion":
            keep = [j for j in range(7) if j not in removed]
            padded = torch.cat([torch.zeros(len(removed), dtype=row.dtype), row[keep]])
            mask = torch.ones(7, dtype=torch.long)
            mask[: len(removed)] = 0
            return _qoi(model, padded, [a[0] for a in args], mask[None])
        changed = row.clone()
        changed[removed] = blank
        return _qoi(model, changed, [a[0] for a in args])

    for name, blank in blanks.items():
        effects = [full - blanked([j], blank) for j in positions]
        assert record["blank_out"][name] == pytest.approx(effects, abs=1e-9)
        # top-1 is position 0, top-2 positions 0 and 1
        comprehensive = [full - blanked([0], blank), full - blanked([0, 1], blank)]
        sufficient = [full - blanked([1, 2, 3], blank), full - blanked([2, 3], blank)]
        assert record["comprehensiveness"][name]["ordered"] == pytest.approx(
            sum(comprehensive) / 2, abs=1e-9
        )
        assert record["sufficiency"][name]["ordered"] == pytest.approx(
            sum(sufficient) / 2, abs=1e-9
        )
    # scores equal to the blank-out effects correlate perfectly
    oracle = torch.zeros(7, dtype=torch.float64)
    oracle[positions] = torch.tensor(record["blank_out"]["unk"], dtype=torch.float64)
    again = faithfulness_record(
        ip, request, 0, 4, positions, {"unk": 1}, scores={"oracle": oracle}
    )
    assert again["spearman"]["unk"]["oracle"] == pytest.approx(1.0)


def test_token_scores_and_summary(tmp_path):
    model = masked_lm("bert")
    ids, args = agreement_batch(batch=2)
    ip = attribution(model)
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=8)
    records = []
    for b in range(2):
        scores = token_scores(ip, request, b, 4)
        assert list(scores) == list(TOKEN_METHODS)
        assert all(s.shape == (7,) for s in scores.values())
        records.append(
            faithfulness_record(
                ip, request, b, 4, [0, 1, 2, 3, 5, 6], {"mask": MASK_ID}
            )
        )
    summary = faithfulness_summary(records, n_resamples=50)
    cell = summary["mask"]["alti"]["spearman"]
    mean = sum(r["spearman"]["mask"]["alti"] for r in records) / 2
    assert cell["value"] == pytest.approx(mean)
    assert cell["low"] <= cell["value"] <= cell["high"] or math.isnan(cell["low"])
    assert cell["n"] == 2
    # the report's section counts the sentences that carry measures, not all of them
    evaluation = [{"faithfulness": r} for r in records] + [{"faithfulness": None}]
    assert records_faithfulness(evaluation, 50, 0) == summary
    lines = faithfulness_section(summary, evaluation, str(tmp_path))
    assert (tmp_path / FIGURE).exists()
    assert any(line.startswith("On 2 sentences:") for line in lines)
    assert faithfulness_section(None, evaluation, "unused") == []


def test_deletion_after_the_output_is_refused():
    model = masked_lm("gpt2")
    ids, args = agreement_batch(batch=1)
    ip = attribution(model)
    request = ip.request(ids, MASK_ID, None, args, output_position=4, n_steps=4)
    with pytest.raises(ValueError, match="deletion removes only positions before"):
        faithfulness_record(
            ip, request, 0, 4, [3, 5], {"deletion": "deletion"},
            scores={"s": torch.zeros(7)},
        )
