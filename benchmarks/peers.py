"""Side by side with the libraries users would pick instead: steering-vectors, repeng, pyreft.

    pip install --no-deps -r requirements-peers.txt      # the peers themselves, pinned
    pip install -r requirements-peers-deps.txt           # what they need that we do not already have
    python benchmarks/peers.py [--concepts power-seeking self-preservation optimism] [--seeds 0 1 2]
        [--train-pairs N] [--test-pairs N] [--methods steering-vectors repeng pyreft-NoReFT ...]
        [--out benchmarks/results/peers] [--markdown BENCHMARKS.md] [--cached-only]
        [--speed-repeats 3] [--speed-methods SPLIT pyreft-NoReFT ...] [--speed-only]

The peers pin old numpy/transformers/torch, so they are installed with --no-deps next to our
torch / transformers; they are benchmark-only and never a dependency of split_plugin.

One cell = concept x method x seed, on the embedded SmolLM2-135M-Instruct at layer 15, trained
on the training split minus its last 40 pairs (the first --train-pairs of them):

- steering-vectors: `train_steering_vector` with the mean aggregator on "prompt + answer"
  strings, read at the last answer token (its `read_token_index`, one token per string is all
  the library allows); the layer-15 vector becomes our vector `Intervention`.
- repeng: `ControlVector.train(method="pca_diff")` on the same strings (numpy's removed
  `np.float_` is aliased first); PCA has no sign, so the vector is oriented with training
  pairs only: the sign whose +0.1-strength sweep on the first 16 training pairs gives the larger
  mean preference log-odds is kept. Then it becomes our vector `Intervention`.
- pyreft NoReFT / LoReFT, rank 4, at the layer's output on every position, trained with the
  library's own intervention modules and forward (a plain AdamW loop, the loss of
  `ReftTrainerForCausalLM` on the positive answers). Its edit depends on the input, so it is
  evaluated through pyreft/pyvene with a forward hook that scales the intervention's output
  delta by m; the metrics come from our own functions (`encode_pairs`, `sequence_logprobs`,
  `SweepResult.from_logprobs`) on the same pairs and text, a path that `tests/test_peers.py`
  checks against `split_plugin.sweep` for a plain vector. A LoReFT whose orthogonal weight is
  zero after training (torch >= 2.1's orthogonal parametrization under AdamW) is reported as
  collapsed and evaluated unsteered only. pyvene clears every forward hook of the model it wraps
  (transformers 5 returns hidden states through such hooks), so each cell gets a freshly loaded model.
- ours (CAA, SFT, SPLIT, SPLIT-lora, SPLIT-local_weight): `benchmarks/quality.py`'s cells,
  read from (or computed into) its cache folder with its own file names.

Every method goes through the same comparison protocol (split_plugin.analysis.protocol):
`evaluate` for vectors, `evaluate_with` and `score_forward` for pyreft (its grid placed by the
median of its input-dependent edit at m = 1). The peers are trained at m = 1, so that is their
trained point. Strengths are chosen on the 40 held-back validation pairs; the test split is
scored at those choices only. Cells are the Evaluations' JSON under --out (gitignored), skipped
when present, so an interrupted run resumes; the grid runs seed-major, and the methods without
randomness (steering-vectors, repeng, CAA) run once per concept and count for every seed.
`--cached-only` reports what a cut-short run has computed. The report: per method, test accuracy
within a held-out perplexity increase of 2 / 5 / 10% (mean ± 95% t-interval over seeds), the
strength chosen for +5% and its perplexity change, a frontier plot (test accuracy against the
budget; frontier.png under --out and a small copy in docs/peers_frontier.png), training/extraction
speed, and a reading computed from the numbers; with --markdown it replaces the section between
`<!-- peers:begin -->` and `<!-- peers:end -->` of that file (appended if missing) and nothing else.

Speed is also measured side by side (`_peer_speed.py`, section `peers-speed`): the cells' own
training seconds come from different runs, so the run ends by training each of --speed-methods on
the first concept's training pairs (first seed) in alternating order, --speed-repeats times, and
prints the medians and ours-over-pyreft ratios. `--speed-only` runs just that part.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cells  # noqa: E402  (our methods' cells, their splits and cache, shared with quality.py)
from _frontier import frontier_curves, plot_frontier  # noqa: E402
from _peer_methods import INSTALL, PEERS, installed_peers, run_peer_cell  # noqa: E402
from _peer_report import DETERMINISTIC, METHODS, OURS, report, write_markdown  # noqa: E402
import _peer_speed  # noqa: E402
from _markdown import command, write_section  # noqa: E402
from _results import results_dir  # noqa: E402

from split_plugin import load_default_model, load_heldout_text  # noqa: E402
from split_plugin.analysis.protocol import Evaluation  # noqa: E402
from split_plugin.data import HELDOUT_WORDS  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _cells.add_grid_arguments(p, list(METHODS))
    p.add_argument("--reft-rank", type=int, default=4)
    p.add_argument("--reft-epochs", type=int, default=2, help="pyreft epochs (default: our presets' 2)")
    p.add_argument("--reft-lr", type=float, default=4e-3, help="pyreft learning rate (its README's 4e-3)")
    p.add_argument("--reft-batch-size", type=int, default=4)
    p.add_argument("--out", default=results_dir("peers"))
    p.add_argument("--quality-out", default=results_dir("quality"),
                   help="quality.py's cache folder: our methods' cells are read from / written to it")
    p.add_argument("--markdown", default="BENCHMARKS.md", help="file whose peers section is rewritten ('' = none)")
    p.add_argument("--docs-png", default="docs/peers_frontier.png", help="small copy of the plot ('' = none)")
    p.add_argument("--cached-only", action="store_true",
                   help="report the cells already computed; train nothing (to report a run that was cut short)")
    p.add_argument("--speed-repeats", type=int, default=3,
                   help="alternating timed training runs per method in the side-by-side speed part (0 = skip it)")
    p.add_argument("--speed-methods", nargs="+", default=list(_peer_speed.SPEED_METHODS),
                   choices=list(_peer_speed.SPEED_METHODS), help="methods timed side by side")
    p.add_argument("--speed-concepts", nargs="+", default=None,
                   help="concepts the speed part times, one table each (default: the first of --concepts); "
                        "a persona concept (one-token answers) and optimism (sentence answers) bracket the cost")
    p.add_argument("--speed-only", action="store_true", help="run only the side-by-side speed part")
    return p.parse_args(argv)


def quality_args(args) -> argparse.Namespace:
    """The settings quality.py would use for the same cells (so its cache file names match)."""
    return argparse.Namespace(train_pairs=args.train_pairs, test_pairs=args.test_pairs, epochs=None,
                              kl_weight=None)


def cell_paths(qargs, reft, out: Path, qout: Path) -> Callable[[str, str, int], Path]:
    """Where a cell lives: ours under quality.py's own names in its folder (the grids share them), peers under out."""
    ours = _cells.cell_path(qargs, qout)
    tag = f"{_cells.cell_tag(qargs)}-r{reft.rank}-e{reft.epochs}-lr{reft.lr:g}-b{reft.batch_size}"

    def path_of(concept: str, method: str, seed: int) -> Path:
        return ours(concept, method, seed) if method in OURS else out / f"{tag}-{concept}-{method}-{seed}.json"
    return path_of


def run_cell(concept: str, method: str, seed: int, qargs, reft, text: str) -> Evaluation:
    """One cell on a freshly loaded model: pyvene clears every forward hook of the model it wraps,
    including the ones transformers uses to return hidden states, so no cell may see what an earlier
    one left."""
    model, tokenizer = load_default_model()
    if method in OURS:
        return _cells.run_cell(model, tokenizer, concept, method, seed, qargs, text)
    train_pairs, val_pairs, test_pairs = _cells.split_pairs(concept, qargs)
    cell = run_peer_cell(model, tokenizer, method, train_pairs, val_pairs, {"test": test_pairs}, text, seed,
                         reft=reft)
    cell.extra["concept"] = concept
    return cell


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out, qout = Path(args.out), Path(args.quality_out)
    out.mkdir(parents=True, exist_ok=True)
    qout.mkdir(parents=True, exist_ok=True)
    timed = args.speed_repeats > 0 and not args.cached_only  # the speed part trains
    needed = ([] if args.speed_only else args.methods) + (args.speed_methods if timed else [])
    missing = sorted({m for m in needed if m in PEERS and m not in installed_peers()})
    if missing:
        raise SystemExit(f"peer libraries missing for {missing}; install them with: {INSTALL}")
    qargs = quality_args(args)
    reft = SimpleNamespace(rank=args.reft_rank, epochs=args.reft_epochs, lr=args.reft_lr,
                           batch_size=args.reft_batch_size)
    if not args.speed_only:
        run_grid(args, argv, qargs, reft, out, qout, load_heldout_text(words=HELDOUT_WORDS))
    if timed:
        run_speed(args, argv, qargs, reft)


def run_speed(args, argv, qargs, reft) -> None:
    """Time each of --speed-methods side by side on each of --speed-concepts (first seed); print and write."""
    seed, tokenizer = args.seeds[0], load_default_model()[1]
    parts = [f"Command: `{command('peers.py', argv)}`"]
    for concept in args.speed_concepts or args.concepts[:1]:
        train_pairs = _cells.split_pairs(concept, qargs)[0]
        print(f"side-by-side training speed: {', '.join(args.speed_methods)} on {len(train_pairs)} {concept} pairs")
        stats = _peer_speed.measure(args.speed_methods, train_pairs, seed, qargs, reft, args.speed_repeats)
        tokens = _peer_speed.answer_tokens(tokenizer, train_pairs)
        parts.append(f"#### {concept}\n\n" + _peer_speed.report(stats, len(train_pairs), concept, seed,
                                                                 args.speed_repeats, tokens))
    body = "\n\n".join(parts)
    print("\n" + body)
    if args.markdown:
        write_section(Path(args.markdown), "peers-speed", "Peers: training speed side by side (benchmarks/peers.py)",
                      body)
        print(f"written to {args.markdown}")


def run_grid(args, argv, qargs, reft, out: Path, qout: Path, text: str) -> None:
    """The quality grid of every (concept, method, seed) cell, its report, plot and section."""
    path_of = cell_paths(qargs, reft, out, qout)
    # seed-major: a run cut short still covers every concept and method with the seeds it got to
    grid = [(c, m, s) for s in args.seeds for c in args.concepts for m in args.methods]
    cells = _cells.collect(grid, path_of, lambda c, m, s: run_cell(c, m, s, qargs, reft, text),
                           DETERMINISTIC, args.cached_only, desc="peers grid")
    text_md, all_stats = report(args, cells, args.methods, argv)
    curves = frontier_curves(cells, list(all_stats), args.methods)
    pngs = [(out / "frontier.png", 110)] + ([(Path(args.docs_png), 60)] if args.docs_png else [])
    plot_frontier(curves, pngs, dashed=PEERS)
    text_md = text_md.replace("{plot}", f"![test accuracy against the perplexity budget]"
                                        f"({args.docs_png or out / 'frontier.png'})")
    print("\n" + text_md)
    if args.markdown:
        write_markdown(Path(args.markdown), text_md)
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
