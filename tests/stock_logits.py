"""Load exports with stock transformers / peft only, in a fresh process, and save their logits.

    python tests/stock_logits.py JOBS.json OUT.safetensors

JOBS.json: {"input_ids": [[...]], "jobs": {"name": {"hf": DIR} | {"base": DIR, "peft": DIR}}}.
The script never imports split_plugin, and fails if anything it loads does.
"""
import json
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM


def load(job: dict):
    if "hf" in job:
        return AutoModelForCausalLM.from_pretrained(job["hf"], dtype=torch.float32)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(job["base"], dtype=torch.float32)
    return PeftModel.from_pretrained(base, job["peft"])


def main() -> None:
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    ids = torch.tensor(spec["input_ids"])
    out = {}
    for name, job in spec["jobs"].items():
        model = load(job).eval()
        with torch.no_grad():
            out[name] = model(input_ids=ids).logits.float().contiguous()
    assert not any(m == "split_plugin" or m.startswith("split_plugin.") for m in sys.modules), \
        "a stock loader imported split_plugin"
    save_file(out, sys.argv[2])


if __name__ == "__main__":
    main()
