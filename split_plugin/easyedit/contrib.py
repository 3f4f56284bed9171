"""Write SPLIT into an EasyEdit checkout as an upstream pull request would (`git diff` there is the PR).

    python -m split_plugin.easyedit.contrib /path/to/EasyEdit      # or: split-steer easyedit-contrib DIR

What it writes, in the host's own conventions (the method's code stays in split_plugin, a
dependency the PR adds to requirements.txt):
- `easyeditor/models/split/{__init__,split_hparams,split_main}.py`: a thin `SPLITHyperParams`
  (ours plus the host's `HyperParams` base) and `apply_split_to_model`, whose weights_copy is
  called to restore, as GRACE's is;
- `easyeditor/models/__init__.py`, `util/alg_dict.py`, `editors/utils.py` (CALLABLE_RESTORE_ALGS
  and summary_metrics' keys), `editors/batch_editor.py`, `evaluate/evaluate.py` (our log-odds
  and their metric_meta for SPLIT's cases): one line or entry each;
- `hparams/SPLIT/*.yaml` (the shipped YAMLs, host keys only), a README table row, and
  `split-plugin` in requirements.txt.
Each edit is anchored on the host's text; a missing anchor is one clear error naming the file.
Running it twice changes nothing more.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import SplitPluginError
from ..fileio import atomic_write_text
from .hparams import CONFIG_DIR
from .metrics import ALL_KEYS

#: YAML keys that only matter when split_plugin loads the model; the PR's YAMLs leave them out
ADAPTER_ONLY_KEYS = ("model_loader", "model_dtype")

MODULE_FILES = {
    "__init__.py": '''from .split_hparams import SPLITHyperParams
from .split_main import apply_split_to_model, split_log_odds_metrics
''',
    "split_hparams.py": '''"""Hyperparameters of SPLIT (contrastive steering); fields and checks live in split_plugin."""
from dataclasses import dataclass

from split_plugin.easyedit.hparams import SPLITHyperParams as _SPLITHyperParams

from ...util.hparams import HyperParams


@dataclass
class SPLITHyperParams(_SPLITHyperParams, HyperParams):
    """See hparams/SPLIT/*.yaml; `from_hparams(path)` validates every key and value."""
''',
    "split_main.py": '''"""SPLIT: one steering intervention per edit, trained contrastively (target_new vs target_neg,
else ground_truth) and applied by forward hooks, so no weight changes. Calling the returned
weights_copy removes the hooks (the model is restored bit-exact), as GRACE's rollback does.
The implementation is split_plugin's: https://pypi.org/project/split-plugin/
"""
from split_plugin.easyedit.apply import apply_split_to_model
from split_plugin.easyedit.metrics import add_log_odds_to_result as split_log_odds_metrics

__all__ = ["apply_split_to_model", "split_log_odds_metrics"]
''',
}


@dataclass(frozen=True)
class Edit:
    """Insert `text` after (or before) the first line matching `anchor` in `path`, unless `done` is there."""

    path: str
    anchor: str
    text: str
    done: str
    before: bool = False


def _edits() -> list[Edit]:
    keys = ", ".join(repr(k) for k in ALL_KEYS)
    return [
        Edit("easyeditor/models/__init__.py", r"^from \.grace import", "from .split import *\n", "from .split import"),
        Edit("easyeditor/util/alg_dict.py", r"^from \.\.models\.grace import",
             "from ..models.split import SPLITHyperParams, apply_split_to_model\n", "models.split import"),
        Edit("easyeditor/util/alg_dict.py", r"^\s*'GRACE': apply_grace_to_model,",
             "    'SPLIT': apply_split_to_model,\n", "'SPLIT': apply_split_to_model"),
        Edit("easyeditor/editors/utils.py", r"^CALLABLE_RESTORE_ALGS = \{",
             "CALLABLE_RESTORE_ALGS.add(\"SPLIT\")  # SPLIT's weights_copy() removes its hooks\n",
             'CALLABLE_RESTORE_ALGS.add("SPLIT")'),
        Edit("easyeditor/editors/utils.py", r"^\s*for key in \[\"rewrite_acc\", \"rephrase_acc\", 'rewrite_ppl', 'ood_acc'\]:",
             f"        for key in [{keys}]:  # SPLIT's log-odds (split_plugin)\n"
             "            values = collect_metric_values(all_metrics, eval, key)\n"
             "            if len(values) > 0:\n"
             "                mean_metrics[eval][key] = np.nanmean(values)\n",
             "SPLIT's log-odds (split_plugin)", before=True),
        Edit("easyeditor/editors/batch_editor.py", r"^\s*CORE = \"CORE\"", "    SPLIT = \"SPLIT\"\n", 'SPLIT = "SPLIT"'),
        Edit("easyeditor/editors/batch_editor.py", r"^\s*or alg_name == BatchEditor\.CORE\.value",
             "            or alg_name == BatchEditor.SPLIT.value \\\n", "BatchEditor.SPLIT.value", before=True),
        Edit("easyeditor/evaluate/evaluate.py", r"^    if test_generation:",
             "    if hparams.alg_name == 'SPLIT' and getattr(hparams, 'log_odds_metrics', True):\n"
             "        from ..models.split import split_log_odds_metrics  # log-odds, with their metric_meta\n"
             "        split_log_odds_metrics(ret, model, tok, record, hparams)\n",
             "split_log_odds_metrics(ret", before=True),
        Edit("README.md", r"^\| GRACE\|", "| SPLIT | | ✅ | ✅ |  |  |  | ✅ | |\n", "| SPLIT |"),
    ]


def _apply(root: Path, edit: Edit) -> bool:
    path = root / edit.path
    if not path.is_file():
        raise SplitPluginError(f"{path} does not exist; is {root} an EasyEdit checkout (with easyeditor/)?")
    text = path.read_text(encoding="utf-8")
    if edit.done in text:
        return False
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if re.match(edit.anchor, line):
            if edit.before:
                lines.insert(i, edit.text)
            else:
                lines.insert(i + 1, edit.text)
            atomic_write_text(path, "".join(lines))
            return True
    raise SplitPluginError(f"{path}: no line matches {edit.anchor!r}; this EasyEdit version differs from the "
                           "one the contribution was written for (commit 14cea82); add the entry by hand")


def upstream_yaml(source: Path) -> str:
    """A shipped YAML for the PR: host keys only, the header comment kept."""
    text = source.read_text(encoding="utf-8")
    header = "".join(line for line in text.splitlines(keepends=True)[:3] if line.startswith("#"))
    data = {k: v for k, v in yaml.safe_load(text).items() if k not in ADAPTER_ONLY_KEYS}
    return header + yaml.safe_dump(data, sort_keys=False)


def write_contribution(root: str | Path) -> list[str]:
    """Write the PR's files into the EasyEdit checkout at `root`; returns the paths changed."""
    root = Path(root).resolve()
    if not (root / "easyeditor" / "__init__.py").is_file():
        raise SplitPluginError(f"{root} has no easyeditor/__init__.py; pass the folder of an EasyEdit checkout")
    changed = []
    package = root / "easyeditor" / "models" / "split"
    package.mkdir(exist_ok=True)
    for name, body in MODULE_FILES.items():
        if not (package / name).is_file() or (package / name).read_text(encoding="utf-8") != body:
            atomic_write_text(package / name, body)
            changed.append(str((package / name).relative_to(root)))
    (root / "hparams" / "SPLIT").mkdir(parents=True, exist_ok=True)
    for source in sorted(CONFIG_DIR.glob("*.yaml")):
        target = root / "hparams" / "SPLIT" / source.name
        body = upstream_yaml(source)
        if not target.is_file() or target.read_text(encoding="utf-8") != body:
            atomic_write_text(target, body)
            changed.append(str(target.relative_to(root)))
    requirements = root / "requirements.txt"
    if requirements.is_file() and "split-plugin" not in requirements.read_text(encoding="utf-8"):
        text = requirements.read_text(encoding="utf-8")
        atomic_write_text(requirements, text + ("" if text.endswith("\n") else "\n") + "split-plugin\n")
        changed.append("requirements.txt")
    for edit in _edits():
        if _apply(root, edit):
            changed.append(edit.path)
    return sorted(set(changed))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m split_plugin.easyedit.contrib",
                                     description="Write SPLIT into an EasyEdit checkout as an upstream PR.")
    parser.add_argument("easyedit", help="the EasyEdit checkout (the folder holding easyeditor/)")
    args = parser.parse_args(argv)
    try:
        changed = write_contribution(args.easyedit)
    except SplitPluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(changed) if changed else "nothing to change: the contribution is already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
