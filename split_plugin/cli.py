"""`split-steer`: train, generate, sweep and the demo from the command line."""
from __future__ import annotations

import argparse
import sys

from .errors import SplitPluginError


def _load_model(name: str):
    from .models import load_default_model, load_model

    return load_default_model() if name in ("default", None) else load_model(name)


def _train(args: argparse.Namespace) -> None:
    from .config import TrainConfig
    from .data import load_pairs
    from .distributed import is_main_process, place_model
    from .fileio import check_replaceable
    from .serialization import SAVED_FILES
    from .trainer import train

    check_replaceable(args.out, owned=SAVED_FILES, what="saved intervention")
    config = TrainConfig.from_yaml(args.hparams)
    overrides = {k: getattr(args, k) for k in ("layer", "method", "form", "epochs", "device")
                 if getattr(args, k) is not None}
    if overrides:
        config = TrainConfig.from_dict({**config.to_dict(), **overrides}, source=args.hparams)
    # under `accelerate launch` / `torchrun` every process trains on its share of each batch
    # (cuda: the GPU of its LOCAL_RANK) and rank 0 alone saves
    model, tokenizer = _load_model(args.model)
    place_model(model, config.device)
    pairs = load_pairs(args.data, split=args.split, limit=args.limit)
    intervention = train(model, tokenizer, pairs, config, resume=args.resume)
    if is_main_process():
        intervention.save_pretrained(args.out)
        print(f"saved {intervention.form} intervention ({intervention.num_parameters()} parameters) "
              f"at layer {intervention.layer} to {args.out}")


def _generate(args: argparse.Namespace) -> None:
    from .generation import generate
    from .intervention import Intervention

    prompts = _prompts(args.prompt)
    intervention = Intervention.from_pretrained(args.intervention) if args.intervention else None
    multiplier, why = args.multiplier, "given by --multiplier"
    if multiplier is None and intervention is not None:
        multiplier, why = default_multiplier(intervention)
    model, tokenizer = _load_model(args.model)
    outputs = generate(model, tokenizer, prompts, intervention, multiplier=multiplier or 0.0,
                       max_new_tokens=args.max_new_tokens, do_sample=args.sample,
                       temperature=args.temperature, seed=args.seed)
    if intervention is not None:
        print(f"[steered at m = {multiplier:g}: {why}]\n")
    for prompt, text in zip(prompts, outputs):
        print(f"> {prompt}\n{text}\n")


def _prompts(given: list[str] | None) -> list[str]:
    """--prompt values, else non-empty stdin lines; none at all is an error that says what to pass."""
    if given is not None:
        prompts = [p for p in given if p.strip()]
    elif sys.stdin is None or sys.stdin.isatty():
        prompts = []  # nothing piped in: do not wait for typing
    else:
        prompts = [line.strip() for line in sys.stdin if line.strip()]
    if not prompts:
        raise SplitPluginError("no prompt to answer: pass --prompt \"...\" (repeatable) or pipe prompts "
                               "on stdin, one per line")
    return prompts


def default_multiplier(intervention) -> tuple[float, str]:
    """The strength `generate` uses when none is given, and why: inside the trained range."""
    trained = intervention.config.trained_range
    if trained:
        return float(trained[0]), (f"the lowest strength it was trained at, of {trained[0]:g}..{trained[1]:g}; "
                                   "--multiplier sets another")
    return 1.0, "m = 1 adds the intervention as computed (it records no trained range); --multiplier sets another"


def _export(args: argparse.Namespace) -> None:
    from .exports import export
    from .intervention import Intervention

    model, tokenizer = _load_model(args.model)
    intervention = Intervention.from_pretrained(args.intervention)
    out = export(intervention, model, args.out, multiplier=args.multiplier, format=args.format,
                 tokenizer=tokenizer)
    print(f"exported the {intervention.form} intervention at m = {args.multiplier:g} as {args.format} to {out}")


def add_export_parser(sub) -> None:
    """`split-steer export`: a folder an inference engine loads (see docs/SERVING.md)."""
    p = sub.add_parser("export", help="export an intervention at a strength for transformers, peft/vLLM or llama.cpp")
    p.add_argument("--intervention", required=True, help="a saved intervention folder")
    p.add_argument("--multiplier", type=float, required=True, help="the strength m folded into the export")
    p.add_argument("--format", choices=("hf", "peft", "gguf"), default="hf",
                   help="hf: a full model folder (transformers, vLLM); peft: a LoRA adapter (lora form); "
                        "gguf: a llama.cpp control vector (vector form) (default: %(default)s)")
    p.add_argument("--out", required=True, help="a new folder for the export")
    p.add_argument("--model", default="default",
                   help="the base model: 'default' (embedded SmolLM2) or a local HF folder (default: %(default)s)")
    p.set_defaults(func=_export)


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    run_demo(out_dir=args.out, concept=args.concept, quick=args.quick, methods=args.methods)


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option shows its default, unless there is none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="split-steer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shown = {"formatter_class": _ShowDefaults}

    p = sub.add_parser("train", help="train an intervention and save it", **shown)
    p.add_argument("--hparams", required=True,
                   help="a training YAML, e.g. hparams/smollm2-135m-instruct/split-vector.yaml")
    p.add_argument("--data", required=True, help="a bundled dataset name or a data file")
    p.add_argument("--split", default="train", help="which split of a bundled dataset: train, test (persona datasets also: freetext-train, freetext-test)")
    p.add_argument("--limit", type=int, default=None, help="use the first N pairs (default: all)")
    p.add_argument("--out", required=True, help="folder for the saved intervention")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2) or a local HF folder")
    p.add_argument("--layer", type=int, default=None, help="decoder layer to train at (default: the YAML's)")
    p.add_argument("--method", default=None, help="training objective: split, sft, reps or caa (default: the YAML's)")
    p.add_argument("--form", default=None, help="vector, lora or local_weight (default: the YAML's)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the pairs (default: the YAML's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: the YAML's)")
    p.add_argument("--resume", default=None, help="a checkpoint folder to continue from")
    p.set_defaults(func=_train)

    p = sub.add_parser("generate", help="generate with an intervention at a multiplier", **shown)
    p.add_argument("--intervention", default=None, help="a saved intervention folder (none: unsteered)")
    p.add_argument("--multiplier", type=float, default=None,
                   help="steering strength m (default: the lowest strength the intervention was trained "
                        "at; 1 for CAA)")
    p.add_argument("--prompt", action="append", help="repeatable; read from stdin (one per line) when absent")
    p.add_argument("--model", default="default", help="'default' (embedded SmolLM2) or a local HF folder")
    p.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per prompt")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (with --sample)")
    p.add_argument("--seed", type=int, default=0, help="random seed for --sample")
    p.set_defaults(func=_generate)

    p = sub.add_parser("demo", help="the main job: CAA, SFT and SPLIT side by side on the embedded model",
                       **shown)
    p.add_argument("--out", default="reports/demo", help="report folder (replaced atomically)")
    p.add_argument("--concept", default="optimism",
                   help="a bundled dataset (optimism, power-seeking, self-preservation)")
    p.add_argument("--methods", default="CAA,SFT,SPLIT-tuned,SPLIT-lora",  # demo.DEFAULT_METHODS (kept lazy)
                   help="comma list of CAA, SFT, SPLIT, SPLIT-tuned, SPLIT-lora, SPLIT+KL, SPLIT-local_weight")
    p.add_argument("--quick", action="store_true", help="fewer pairs and one epoch (a smoke run)")
    p.set_defaults(func=_demo)

    add_export_parser(sub)

    from .analysis.cli import add_sweep_arguments, run_sweep_command  # argparse only until it runs

    p = sub.add_parser("sweep", help="preference/utility log-odds over multipliers, with fits and plots",
                       **shown)
    add_sweep_arguments(p)
    p.set_defaults(func=run_sweep_command)
    _add_easyedit_contrib(sub)
    return parser


def _add_easyedit_contrib(sub) -> None:
    """`split-steer easyedit-contrib DIR`: python -m split_plugin.easyedit.contrib DIR."""
    p = sub.add_parser("easyedit-contrib", help="write SPLIT into an EasyEdit checkout as an upstream PR")
    p.add_argument("easyedit", help="the EasyEdit checkout (the folder holding easyeditor/)")

    def run(args: argparse.Namespace) -> None:
        from .easyedit.contrib import write_contribution

        changed = write_contribution(args.easyedit)
        print("\n".join(changed) if changed else "nothing to change: the contribution is already there")

    p.set_defaults(func=run)


def one_line(exc: BaseException) -> str:
    """The error message on one line (wrapped library messages may span several)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SplitPluginError as exc:
        print(f"split-steer: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("split-steer: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
