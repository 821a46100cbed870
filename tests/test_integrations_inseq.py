"""The inseq plug-in on a tiny GPT-2: the method is registered, and each generated
token's step holds g (summing to the QoI difference) and the library's own routes."""

from __future__ import annotations

import pytest
import torch

inseq = pytest.importorskip(
    "inseq", reason="inseq is not installed (pip install -e '.[inseq]')"
)

from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

import captum_influence_patterns.integrations.inseq  # noqa: E402,F401
from captum_influence_patterns import InfluencePatterns  # noqa: E402

WORDS = "<|endoftext|> <unk> the a cat cats dog dogs that sees see is are old .".split()
STEPS = 8


@pytest.fixture(scope="module")
def tiny_gpt2():
    """A float64 GPT-2 with large random weights and a word-level tokenizer."""
    core = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
    )
    torch.manual_seed(0)
    config = GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_positions=16, vocab_size=len(WORDS),
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    model = GPT2LMHeadModel(config).double().eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.mul_(4.0)
    return model, tokenizer


def test_the_method_is_registered():
    assert "influence_patterns" in inseq.list_feature_attribution_methods()


def test_each_generated_token_gets_g_and_routes(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    attribution_model = inseq.load_model(model, "influence_patterns", tokenizer=tokenizer)
    texts = ["the cat that", "the dogs"]
    generated = ["the cat that sees old", "the dogs are old"]
    out = attribution_model.attribute(
        texts, generated, n_steps=STEPS, show_progress=False
    )
    ip = InfluencePatterns(lambda ids, token: model(input_ids=ids).logits[:, -1, token], model)
    for text, full, sequence in zip(texts, generated, out.sequence_attributions):
        prompt = len(text.split())
        ids = tokenizer(full, return_tensors="pt")["input_ids"]
        steps = ids.shape[1] - prompt
        assert sequence.target_attributions.shape[1] == steps
        scores = sequence.sequence_scores
        for step in range(steps):
            prefix, token = ids[:, : prompt + step], int(ids[0, prompt + step])
            g = sequence.target_attributions[: prompt + step, step].double()
            # completeness against two plain forward passes (baselines=None: token
            # id 0 everywhere, as in Captum)
            with torch.no_grad():
                at_input = model(input_ids=prefix).logits[0, -1, token]
                zeros = torch.zeros_like(prefix)
                at_baseline = model(input_ids=zeros).logits[0, -1, token]
            assert float(g.sum()) == pytest.approx(
                float(at_input - at_baseline), rel=1e-4, abs=1e-5
            )
            assert float(sequence.step_scores["deltas"][step]) == pytest.approx(
                0.0, abs=1e-4
            )
            difference = float(at_input - at_baseline)
            assert float(sequence.step_scores["relative_deltas"][step]) == (
                pytest.approx(
                    abs(float(sequence.step_scores["deltas"][step])) / abs(difference),
                    rel=1e-3, abs=1e-7,
                )
            )
            assert int(sequence.step_scores["n_steps_used"][step]) == STEPS
            direct = ip.attribute(
                prefix,
                additional_forward_args=(token,),
                output_position=prefix.shape[1] - 1,
                n_steps=STEPS,
            )
            torch.testing.assert_close(
                g, direct.token_influence[0].float().double(), rtol=1e-5, atol=1e-6
            )
            for pattern in direct.patterns[0]:
                i = pattern.source
                assert scores["pattern_positions"][0, step, i].tolist() == [
                    float(j) for j in pattern.positions
                ]
                assert scores["pattern_heads"][0, step, i].tolist() == [
                    -1.0 if n.head is None else float(n.head) for n in pattern.nodes
                ]
                assert float(scores["pattern_influence"][0, step, i]) == pytest.approx(
                    pattern.influence, rel=1e-5, abs=1e-6
                )
            assert torch.isnan(scores["pattern_influence"][0, step, prompt + step :]).all()


def test_encoder_decoders_are_refused():
    class Fake:
        is_encoder_decoder = True

    with pytest.raises(ValueError, match="decoder-only"):
        captum_influence_patterns.integrations.inseq.InfluencePatternsAttribution(Fake())


def test_show_renders_like_integrated_gradients(tiny_gpt2):
    """inseq's ``.show()`` renders our output as it does integrated gradients'
    (a granular layout failed in its aggregator), with the signed g of each step."""
    model, tokenizer = tiny_gpt2
    pages = {}
    for method in ("integrated_gradients", "influence_patterns"):
        attribution_model = inseq.load_model(model, method, tokenizer=tokenizer)
        out = attribution_model.attribute(
            ["the cat that"], ["the cat that sees old"], n_steps=4,
            show_progress=False,
        )
        pages[method] = out.show(display=False, return_html=True)
        assert isinstance(pages[method], str) and "<table" in pages[method]
    g = out.sequence_attributions[0].target_attributions[:, 0]
    shown = pages["influence_patterns"]
    for value in g[~torch.isnan(g)].tolist():
        assert f"{value:.3f}" in shown  # signed, not a norm
