"""Tiny random models and a character tokenizer, built offline, for fast unit tests; and what the
failure-path tests share: a toy training set, random interventions, and a check that a failure left
the user's model exactly as it was."""
from __future__ import annotations

import contextlib
import string
from pathlib import Path

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

from split_plugin import Intervention, resolve_layout
from split_plugin.pairs import ContrastivePair
from split_plugin.safety import hooked_modules

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


# -- shared by the failure-path tests ---------------------------------------------------------------
LAYER = 2
PAIRS = [ContrastivePair(f"question number {i}?", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes")
         for i in range(7)]
_PROBE = torch.randint(4, 100, (2, 9), generator=torch.Generator().manual_seed(0))

# an intervention onto a model of another shape or type:
# (trained on, applied to, form, the message that refuses it)
FOREIGN = [
    ("llama", "gpt2", "local_weight",
     r"intermediate size 48 .*has hidden size 32 and intermediate size 128; load it onto the model"),
    ("llama", "gpt2", "lora", r"intermediate size 48 .*has hidden size 32 and intermediate size 128"),
    ("llama", "gpt_neox", "vector", r"trained on a llama model, but this model is a gpt_neox"),
    ("qwen2", "llama", "local_weight", r"trained on a qwen2 model, but this model is a llama"),
]


def short_run(**kw) -> dict:
    """Settings for a one-epoch run of four steps on PAIRS at LAYER; keywords override them."""
    base = dict(layer=LAYER, epochs=1, batch_size=2, lr=0.05, factors=[1.0, 2.0], progress=False, seed=3)
    return {**base, **kw}


def randomized(model, form: str, layer: int = LAYER, seed: int = 1, rank: int = 3) -> Intervention:
    """An intervention for `model` with random (non-zero) parameters, so that it changes the output."""
    iv = Intervention.for_model(model, form, layer, rank=rank if form == "lora" else None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return iv


def param_copies(iv: Intervention) -> dict[str, torch.Tensor]:
    """A copy of the intervention's parameters, by name."""
    return {k: v.detach().clone() for k, v in iv.named_parameters()}


def names(folder: Path) -> list[str]:
    """The sorted names in a folder: what a failed write left there."""
    return sorted(p.name for p in folder.iterdir())


def user_model(arch: str = "llama"):
    """A model in a state a trainer must not disturb: train mode, one frozen weight."""
    model = tiny_model(arch)
    model.train()
    next(iter(resolve_layout(model).down_proj(0).parameters())).requires_grad_(False)
    return model


def snapshot(model) -> dict:
    """Everything a failure must not change: hooks, layer objects, flags, modes, weights, logits."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(_PROBE).logits.clone()
    model.train(was_training)
    return {"layers": list(resolve_layout(model).layers),
            "flags": [p.requires_grad for p in model.parameters()],
            "modes": [m.training for m in model.modules()],
            "state": {k: v.clone() for k, v in model.state_dict().items()},
            "logits": logits}


def assert_intact(model, snap: dict) -> None:
    """The model is as `snapshot` saw it: no hook or recorder left, same layers, flags, modes, weights, logits."""
    assert hooked_modules(model) == []
    assert not any(type(m).__name__ == "_Recorder" for m in model.modules())
    assert all(a is b for a, b in zip(resolve_layout(model).layers, snap["layers"]))
    assert [p.requires_grad for p in model.parameters()] == snap["flags"]
    assert [m.training for m in model.modules()] == snap["modes"]
    state = model.state_dict()
    assert state.keys() == snap["state"].keys()
    assert all(torch.equal(state[k], v) for k, v in snap["state"].items())
    was_training = model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(_PROBE).logits, snap["logits"])
    model.train(was_training)


@contextlib.contextmanager
def replaced_output(model, layer: int, make):
    """While open, a user's hook replaces the output of decoder layer `layer` by `make(output)`."""
    handle = resolve_layout(model).layers[layer].register_forward_hook(lambda module, args, out: make(out))
    try:
        yield
    finally:
        handle.remove()


def boom(output):
    """A `replaced_output` maker: the forward fails."""
    raise RuntimeError("boom in the forward")
