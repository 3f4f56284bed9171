"""The upstream contribution writer, on a small stand-in for an EasyEdit checkout (and, when
SPLIT_PLUGIN_EASYEDIT_CHECKOUT names a real one, end to end through examples/check_git_host.py)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from split_plugin.errors import SplitPluginError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.easyedit
if os.environ.get("SPLIT_PLUGIN_REQUIRE_EASYEDIT") != "1":
    pytest.importorskip("easyeditor", reason="the EasyEdit host is not installed")

#: the lines of EasyEdit (commit 14cea82) the contribution anchors on, and nothing else
STAND_IN = {
    "easyeditor/__init__.py": "",
    "easyeditor/models/__init__.py": "from .rome import *\nfrom .grace import *\nfrom .pmet import *\n",
    "easyeditor/util/alg_dict.py": ("from ..models.grace import GraceHyperParams, apply_grace_to_model\n\n"
                                    "ALG_DICT = {\n    'GRACE': apply_grace_to_model,\n}\n"),
    "easyeditor/editors/utils.py": ('CALLABLE_RESTORE_ALGS = {"KN", "GRACE"}\n\ndef summary_metrics(all_metrics):\n'
                                    '    for eval in ["pre", "post"]:\n'
                                    '        for key in ["rewrite_acc", "rephrase_acc", \'rewrite_ppl\', \'ood_acc\']:\n'
                                    '            pass\n'),
    "easyeditor/editors/batch_editor.py": ('class BatchEditor:\n    CORE = "CORE"\n\n    def is_batchable_method(alg_name):\n'
                                           '        return alg_name == "FT" \\\n'
                                           '            or alg_name == BatchEditor.CORE.value\n'),
    "easyeditor/evaluate/evaluate.py": "def compute_edit_quality():\n    ret = {}\n    if test_generation:\n        pass\n    return ret\n",
    "README.md": "| **Method** | T5 |\n| GRACE| | ✅ |\n",
    "requirements.txt": "torch\n",
}


def stand_in(tmp_path: Path) -> Path:
    for name, text in STAND_IN.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_contribution_is_written_once_in_the_hosts_conventions(tmp_path):
    from split_plugin.easyedit.contrib import write_contribution

    root = stand_in(tmp_path)
    changed = write_contribution(root)
    assert {"easyeditor/models/split/split_main.py", "easyeditor/util/alg_dict.py", "README.md",
            "hparams/SPLIT/smollm2-135m-instruct.yaml", "requirements.txt"} <= set(changed)
    assert write_contribution(root) == []  # idempotent
    alg_dict = (root / "easyeditor/util/alg_dict.py").read_text()
    assert "'SPLIT': apply_split_to_model," in alg_dict and "from ..models.split import" in alg_dict
    for name in STAND_IN:
        if name.endswith(".py") and name != "easyeditor/__init__.py":
            ast.parse((root / name).read_text())  # still Python
    for module in ("__init__", "split_hparams", "split_main"):
        source = (root / "easyeditor/models/split" / f"{module}.py").read_text()
        ast.parse(source)
        assert len(source.splitlines()) < 20  # thin: the method lives in split_plugin
    assert "from split_plugin.easyedit.apply import apply_split_to_model" in (
        root / "easyeditor/models/split/split_main.py").read_text()
    shipped = yaml.safe_load((root / "hparams/SPLIT/smollm2-135m-instruct.yaml").read_text())
    assert shipped["alg_name"] == "SPLIT" and not {"model_loader", "model_dtype"} & set(shipped)
    assert "'pref_log_odds'" in (root / "easyeditor/editors/utils.py").read_text()
    assert "| SPLIT |" in (root / "README.md").read_text()


def test_contribution_names_the_file_whose_anchor_is_missing(tmp_path):
    from split_plugin.easyedit.contrib import write_contribution

    root = stand_in(tmp_path)
    (root / "easyeditor/editors/batch_editor.py").write_text("class BatchEditor:\n    pass\n")
    with pytest.raises(SplitPluginError, match="batch_editor.py: no line matches"):
        write_contribution(root)
    with pytest.raises(SplitPluginError, match="no easyeditor/__init__.py"):
        write_contribution(tmp_path / "nowhere")


def test_cli_subcommand_writes_the_contribution(tmp_path):
    from split_plugin.cli import main

    root = stand_in(tmp_path)
    assert main(["easyedit-contrib", str(root)]) == 0
    assert (root / "easyeditor/models/split/__init__.py").is_file()
    assert main(["easyedit-contrib", str(tmp_path / "nowhere")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("SPLIT_PLUGIN_EASYEDIT_CHECKOUT"),
                    reason="set SPLIT_PLUGIN_EASYEDIT_CHECKOUT to an EasyEdit checkout to run this check")
def test_contribution_end_to_end_on_a_real_checkout():
    checkout = os.environ["SPLIT_PLUGIN_EASYEDIT_CHECKOUT"]
    run = subprocess.run([sys.executable, str(ROOT / "examples" / "check_git_host.py"), checkout, "--contrib"],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert run.returncode == 0 and "0 failed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
