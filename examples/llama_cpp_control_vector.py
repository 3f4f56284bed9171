"""Run our GGUF control-vector export in llama.cpp and compare next-token log-probs with ours.

    pip install --no-deps --target /tmp/llcpp llama-cpp-py-sync   # prebuilt libllama (CPU)
    PYTHONPATH=/tmp/llcpp:. python examples/llama_cpp_control_vector.py [--multiplier 4] [--pairs 24]

It builds a CAA vector on the embedded SmolLM2 (layer 10, a few bundled pairs: no training),
exports it with `export(..., format="gguf")`, reads the file back with the gguf package and
hands its `direction.<il>` tensors to llama.cpp's `llama_set_adapter_cvec` in the layout
`common_control_vector_load` builds (row il - 1 holds layer il; there is no row for layer 0).
llama.cpp runs the embedded Q4_1 GGUF itself; split_plugin runs the same weights dequantized
to fp32 with the vector hooked. For each prompt it prints, with and without the vector, the
largest log-prob gap between the two engines over llama.cpp's top-20 next tokens, and how
close the two engines' *steering effects* (steered minus unsteered log-probs) are, and the
same gap had the file been read one layer off (direction.<L+1>), to show the check can fail.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import split_plugin as sp
from split_plugin.composition import compose
from split_plugin.config import TrainConfig
from split_plugin.data import format_prompt
from split_plugin.exports import GGUF_NAME, export, read_gguf
from split_plugin.gguf_cache import default_gguf_path
from split_plugin.caa import mean_difference_vector

PROMPTS = ["Should you try to gain more influence over the world?",
           "What do you think about the future?",
           "Tell me about your weekend plans."]
LAYER, TOP = 10, 20


class LlamaCpp:
    """The few libllama calls this comparison needs (through llama-cpp-py-sync's cffi handles)."""

    def __init__(self, gguf: Path):
        from llama_cpp_py_sync import Llama

        self.llm = Llama(str(gguf), n_ctx=512, n_threads=1, verbose=False)
        self.lib, self.ffi, self.ctx = self.llm._lib, self.llm._ffi, self.llm._ctx

    def set_control_vector(self, directions: dict[int, torch.Tensor] | None) -> None:
        n_embd, n_layer = self.llm.n_embd, self.llm.n_layer
        if not directions:
            assert self.lib.llama_set_adapter_cvec(self.ctx, self.ffi.NULL, 0, n_embd, 0, 0) == 0
            return
        # every row is written: llama_set_adapter_cvec leaves rows past `len` as they were
        data = torch.zeros((n_layer - 1) * n_embd)
        for il, vector in directions.items():
            data[(il - 1) * n_embd: il * n_embd] = vector
        buf = self.ffi.new("float[]", data.tolist())
        assert self.lib.llama_set_adapter_cvec(self.ctx, buf, data.numel(), n_embd, 1, n_layer) == 0

    def next_token_logprobs(self, ids: list[int]) -> torch.Tensor:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), True)
        self.llm._eval_tokens(ids, 0)
        logits = self.lib.llama_get_logits_ith(self.ctx, -1)
        return torch.log_softmax(torch.tensor([logits[i] for i in range(self.llm.n_vocab)]), -1)


def ours(model, ids: list[int], vector, multiplier: float) -> torch.Tensor:
    with torch.no_grad(), compose((vector, multiplier)).steer(model):
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1].float(), -1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--multiplier", type=float, default=4.0)
    parser.add_argument("--pairs", type=int, default=24, help="bundled power-seeking pairs for CAA")
    args = parser.parse_args()
    model, tok = sp.load_default_model()
    config = TrainConfig.from_dict({"method": "caa", "form": "vector", "layer": LAYER, "batch_size": 8})
    vector = mean_difference_vector(model, tok, sp.load_pairs("power-seeking", limit=args.pairs), config)
    with tempfile.TemporaryDirectory() as tmp:
        export(vector, model, Path(tmp) / "cv", multiplier=args.multiplier, format="gguf")
        directions = read_gguf(Path(tmp) / "cv" / GGUF_NAME)
    engine = LlamaCpp(default_gguf_path())
    from llama_cpp_py_sync import __llama_cpp_tag__

    print(f"CAA vector at layer {LAYER}, m = {args.multiplier:g}, |m v| = {directions[LAYER].norm():.2f}; "
          f"llama.cpp {__llama_cpp_tag__}, {engine.llm.n_layer} layers, n_embd {engine.llm.n_embd}")
    print("| prompt | max abs dlogp, unsteered | steered | steering-effect gap | effect gap one layer off "
          "| max steering effect | same top-1 (steered) |\n|---|---|---|---|---|---|---|")
    for prompt in PROMPTS:
        ids = tok(format_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
        engine.set_control_vector(None)
        cpp_plain = engine.next_token_logprobs(ids)
        engine.set_control_vector(directions)
        cpp_steer = engine.next_token_logprobs(ids)
        engine.set_control_vector({LAYER + 1: directions[LAYER]})
        cpp_shifted = engine.next_token_logprobs(ids)
        our_plain, our_steer = ours(model, ids, vector, 0.0), ours(model, ids, vector, args.multiplier)
        top = cpp_steer.topk(TOP).indices
        gap = lambda a, b: (a[top] - b[top]).abs().max().item()  # noqa: E731
        effect_gap = gap(cpp_steer - cpp_plain, our_steer - our_plain)
        shifted_gap = gap(cpp_shifted - cpp_plain, our_steer - our_plain)
        effect = (our_steer - our_plain)[top].abs().max().item()
        agree = int(cpp_steer.argmax() == our_steer.argmax())
        print(f"| {prompt[:40]} | {gap(cpp_plain, our_plain):.3f} | {gap(cpp_steer, our_steer):.3f} | "
              f"{effect_gap:.3f} | {shifted_gap:.3f} | {effect:.3f} | {agree} |")


if __name__ == "__main__":
    main()
