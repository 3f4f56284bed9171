"""Tiny random models and a character tokenizer, built offline, for fast unit tests."""
from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GemmaConfig,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    OPTConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

SPECIALS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 128

_IDS = dict(bos_token_id=1, eos_token_id=3, pad_token_id=0)
_COMMON = dict(**_IDS, vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)

ARCH_CONFIGS = {
    "llama": lambda: LlamaConfig(**_COMMON),
    "mistral": lambda: MistralConfig(**_COMMON),
    "qwen2": lambda: Qwen2Config(**_COMMON),
    "qwen3": lambda: Qwen3Config(**_COMMON, head_dim=8),
    "gemma": lambda: GemmaConfig(**_COMMON, head_dim=8),
    "gemma2": lambda: Gemma2Config(**_COMMON, head_dim=8, sliding_window=4),
    "phi3": lambda: Phi3Config(**{**_COMMON, "num_key_value_heads": 4}),
    "gpt2": lambda: GPT2Config(**_IDS, vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, n_positions=128),
    "gpt_neox": lambda: GPTNeoXConfig(**_IDS, vocab_size=VOCAB, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=4, num_attention_heads=4,
                                      max_position_embeddings=128),
    "opt": lambda: OPTConfig(**_IDS, vocab_size=VOCAB, hidden_size=32, ffn_dim=48, num_hidden_layers=4,
                             num_attention_heads=4, word_embed_proj_dim=32,
                             max_position_embeddings=128),
}


def tiny_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32):
    """A 4-layer random model of the given architecture, in eval mode."""
    torch.manual_seed(seed)
    config = ARCH_CONFIGS[arch]()
    config._attn_implementation = "eager"
    model = AutoModelForCausalLM.from_config(config).to(dtype).eval()
    return model


def tiny_tokenizer(padding_side: str = "right", pad_is_eos: bool = False) -> PreTrainedTokenizerFast:
    """A character-level tokenizer with a ChatML template; ids stay below VOCAB."""
    chars = [c for c in string.printable if c not in "\x0b\x0c"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    vocab["[UNK]"] = len(vocab)
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>" if pad_is_eos else "<pad>",
        bos_token=None,
        additional_special_tokens=["<|im_start|>", "<|endoftext|>"],
    )
    fast.padding_side = padding_side
    fast.chat_template = CHATML
    return fast
