"""Pairs to token batches: chat templating, then prompt and answer tokenized separately and joined.

Row layout of every `PairBatch`: row 2i = question i + positive answer i, row 2i+1 = question i
+ negative answer i. Prompt and answer are tokenized separately and concatenated, so the
boundary between them never merges into one token.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from jinja2 import TemplateError

from .errors import SplitPluginError, TemplateRenderError
from .pairs import ContrastivePair, _short

IGNORE_INDEX = -100
_SENTINEL = "\u2063SPLIT_ANSWER_SENTINEL\u2063"


# --------------------------------------------------------------------------- templating
#: how a pair becomes text: "chat" (template, stripped answer, end-of-turn), "plain"
#: (`question + " " + answer`, as EasyEdit scores edits) and "chat_plain" (template + " " + answer,
#: EasyEdit with use_chat_template)
PROMPT_FORMATS = ("chat", "plain", "chat_plain")


def _has_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template rendered to text; a system turn the template rejects joins the user turn."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except TemplateError as err:  # the template itself refused (e.g. "System role not supported")
        if messages[0]["role"] != "system":
            raise TemplateRenderError(f"the tokenizer's chat template failed to render ({err}); "
                                      "fix tokenizer.chat_template or set it to None for plain prompts") from None
        merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
        return tokenizer.apply_chat_template(merged + messages[2:], tokenize=False,
                                             add_generation_prompt=add_generation_prompt)


def format_prompt(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The prompt the model sees: the chat template with one user turn and the generation prompt.

    Without a chat template the prompt is plain text: `"{question}\\n"`, preceded by
    `"{system_prompt}\\n\\n"` when a system prompt is given. Templates that add a default system
    prompt (SmolLM2 does) keep it unless `system_prompt` replaces it.
    """
    if not _has_template(tokenizer):
        return (f"{system_prompt}\n\n" if system_prompt else "") + f"{question}\n"
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return _render(tokenizer, messages, add_generation_prompt=True)


def answer_suffix(tokenizer) -> str:
    """The end-of-turn text that follows an assistant message (e.g. "<|im_end|>" for ChatML).

    Found by rendering a conversation whose assistant message is a sentinel and taking what
    follows it, minus trailing whitespace (the newline that separates turns is not something
    the model must produce). Without a template, or when the template renders nothing after
    the answer, it is the eos token (the model still has to stop), or "" if there is none.
    """
    eos = getattr(tokenizer, "eos_token", None) or ""
    if not _has_template(tokenizer):
        return eos
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = _render(tokenizer, messages, add_generation_prompt=False)
    except TemplateRenderError:  # a template that cannot show an assistant turn: the eos ends it
        return eos
    if _SENTINEL not in text:
        return eos
    return text[text.rindex(_SENTINEL) + len(_SENTINEL):].rstrip() or eos


# --------------------------------------------------------------------------- tokenization


@dataclass
class PairBatch:
    """Token rows for pairs: row 2i = question i + positive, row 2i+1 = question i + negative.

    `labels` equals `input_ids` on answer tokens (end-of-turn suffix included) and is -100 on
    prompt and padding; `attention_mask` comes from the row lengths, never from pad ids.
    `len(batch)` is the number of rows (2 x pairs).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_lengths: torch.Tensor
    answer_lengths: torch.Tensor
    padding_side: str = "right"

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_pairs(self) -> int:
        """Number of pairs (half the rows)."""
        return len(self) // 2

    @staticmethod
    def pair_rows(pairs: torch.Tensor, negative: bool) -> torch.Tensor:
        """The rows holding pairs `pairs`' positive (or negative) answer."""
        return 2 * pairs + int(negative)

    @staticmethod
    def split_pairs(per_row: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(positive rows, negative rows) of a tensor with one entry per row along `dim`."""
        index = [slice(None)] * dim
        return per_row[(*index, slice(0, None, 2))], per_row[(*index, slice(1, None, 2))]

    def to(self, device: torch.device | str) -> "PairBatch":
        """A copy with every tensor on `device`."""
        return replace(self, **{k: getattr(self, k).to(device) for k in _TENSOR_FIELDS})

    def select(self, rows: Sequence[int] | torch.Tensor) -> "PairBatch":
        """A batch of the chosen rows (padding width unchanged)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.input_ids.device)
        return replace(self, **{k: getattr(self, k)[index] for k in _TENSOR_FIELDS})


_TENSOR_FIELDS = ("input_ids", "attention_mask", "labels", "prompt_lengths", "answer_lengths")


def _check_tokenizer(tokenizer) -> None:
    """Refuse something that is not a Hugging Face tokenizer (None, the model, a name)."""
    if not callable(tokenizer) or not hasattr(tokenizer, "pad_token_id"):
        raise SplitPluginError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}; "
                               "pass the tokenizer that load_model returns with the model")


def _ids(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, with no special tokens added."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _special_prefix(tokenizer) -> list[int]:
    """The ids the tokenizer puts before text by default (usually BOS; empty for many)."""
    plain = _ids(tokenizer, ["a"])[0]
    full = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    for start in range(len(full) - len(plain) + 1):
        if full[start:start + len(plain)] == plain:
            return full[:start]
    return []


def _with_prefix(prefix: list[int], ids: list[int]) -> list[int]:
    """ids with the special prefix added unless the text (the template) already starts with it."""
    return ids if not prefix or ids[: len(prefix)] == prefix else prefix + ids


def _pad_id(tokenizer) -> int:
    """The pad id, falling back to eos."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise SplitPluginError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return pad


def _padding_side(tokenizer, padding_side: str | None) -> str:
    """The padding side to use (argument, else the tokenizer's), validated."""
    side = padding_side or getattr(tokenizer, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise SplitPluginError(f"padding_side must be 'left' or 'right', got {side!r}")
    return side


def _pad(rows: list[list[int]], masks: list[list[int]], pad_id: int, side: str):
    """(ids, attention mask, labels) tensors from rows and per-token label masks."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, mask) in enumerate(zip(rows, masks)):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        attention[i, span] = 1
        labels[i, span] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(row, mask)], dtype=torch.long)
    return ids, attention, labels


def _truncate_prompt(prompt: list[int], answers: list[list[int]], max_length: int | None, question: str) -> list[int]:
    """The prompt cut from the left so its longest answer fits in max_length (same cut for both rows)."""
    longest = max(len(a) for a in answers)
    if max_length is None or len(prompt) + longest <= max_length:
        return prompt
    budget = max_length - longest
    if budget < 1:
        raise SplitPluginError(
            f"an answer of {longest} tokens (question {_short(question)}) leaves no room for the prompt "
            f"within max_length={max_length}; raise max_length or shorten the answer")
    return prompt[-budget:]


def encode_pairs(tokenizer, pairs: Sequence[ContrastivePair], max_length: int | None = None,
                 padding_side: str | None = None, system_prompt: str | None = None,
                 prompt_format: str = "chat") -> PairBatch:
    """Tokenize pairs into a PairBatch (prompt and answer tokenized separately, then joined).

    `prompt_format="chat"`: the prompt is `format_prompt(...)` with the tokenizer's own special
    prefix (BOS) added only if the template did not already put it there; the answer is the
    answer text stripped of surrounding whitespace (the model produces "Yes", not " Yes", right
    after the assistant header) plus `answer_suffix(tokenizer)`. "plain" and "chat_plain" are
    EasyEdit's scoring formats (`prompt + " " + answer`, no end-of-turn; the prompt raw or
    through the chat template). With `max_length`, prompts are cut from the left (both rows of
    a pair the same way) and answers are kept whole; at least one prompt token must remain.
    """
    _check_tokenizer(tokenizer)
    if not pairs:
        raise SplitPluginError("encode_pairs got no pairs; pass at least one ContrastivePair")
    if max_length is not None and max_length < 2:
        raise SplitPluginError(f"max_length must be at least 2, got {max_length}")
    if prompt_format not in PROMPT_FORMATS:
        raise SplitPluginError(f"prompt_format must be one of {PROMPT_FORMATS}, got {prompt_format!r}")
    side, pad_id = _padding_side(tokenizer, padding_side), _pad_id(tokenizer)
    prefix = _special_prefix(tokenizer)
    if prompt_format == "plain":
        prompts = _ids(tokenizer, [p.question for p in pairs])
    else:
        prompts = _ids(tokenizer, [format_prompt(tokenizer, p.question, system_prompt) for p in pairs])
    texts = [a.strip() for p in pairs for a in (p.positive, p.negative)]
    suffix = answer_suffix(tokenizer) if prompt_format == "chat" else None
    answers = _ids(tokenizer, [a + suffix if suffix is not None else " " + a for a in texts])
    rows, masks, prompt_lengths = [], [], []
    for i, pair in enumerate(pairs):
        pair_answers = answers[2 * i: 2 * i + 2]
        prompt = _truncate_prompt(_with_prefix(prefix, prompts[i]), pair_answers, max_length, pair.question)
        for answer in pair_answers:
            rows.append(prompt + answer)
            masks.append([False] * len(prompt) + [True] * len(answer))
            prompt_lengths.append(len(prompt))
    ids, attention, labels = _pad(rows, masks, pad_id, side)
    return PairBatch(ids, attention, labels, torch.tensor(prompt_lengths, dtype=torch.long),
                     torch.tensor([len(a) for a in answers], dtype=torch.long), side)


def encode_texts(tokenizer, texts: str | Sequence[str], max_length: int = 512,
                 padding_side: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, labels) for plain-text perplexity.

    Each text gets the tokenizer's special prefix (BOS, if it adds one) and is cut into
    consecutive windows of at most `max_length` tokens, one row each; labels are the ids on
    real tokens and -100 on padding.
    """
    _check_tokenizer(tokenizer)
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SplitPluginError("encode_texts needs one or more non-empty strings")
    if max_length < 2:
        raise SplitPluginError(f"max_length must be at least 2, got {max_length}")
    prefix = _special_prefix(tokenizer)
    rows = []
    for ids in _ids(tokenizer, texts):
        ids = _with_prefix(prefix, ids)
        rows.extend(ids[start:start + max_length] for start in range(0, len(ids), max_length))
    rows = [r for r in rows if len(r) > 1] or rows  # a lone trailing token has nothing to score
    return _pad(rows, [[True] * len(r) for r in rows], _pad_id(tokenizer), _padding_side(tokenizer, padding_side))
