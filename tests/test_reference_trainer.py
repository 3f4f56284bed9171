"""The adapter that runs EasyEdit's own SPLIT trainer for benchmarks/train_speed.py (no checkout needed here)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reference_trainer  # noqa: E402


def test_stand_in_names_are_read_from_alg_dict(tmp_path):
    alg = tmp_path / "alg_dict.py"
    alg.write_text("from ..vector_generators import(\n    AHyperParams,\n    BHyperParams\n)\n"
                   "from ..vector_appliers import(\n    apply_a,\n)\n"
                   "from ..vector_generators import (\n    generate_a,\n    generate_b\n)\n")
    assert reference_trainer._imported_names(alg, "vector_generators") == [
        "AHyperParams", "BHyperParams", "generate_a", "generate_b"]
    assert reference_trainer._imported_names(alg, "vector_appliers") == ["apply_a"]


def test_a_folder_without_the_trainer_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="zjunlp/EasyEdit"):
        reference_trainer.check_checkout(tmp_path)


def test_records_use_the_reference_columns():
    records = reference_trainer.as_records(["q"], ["yes"], ["no"])
    assert records == [{"question": "q", "matching": "yes", "not_matching": "no"}]


def test_pair_count_must_divide_by_the_batch(tmp_path):
    run = reference_trainer.ReferenceRun(layer=1, batch_size=4, epochs=1, factors=[2.0], sub_rows=True)
    with pytest.raises(SystemExit, match="divisible"):
        reference_trainer.time_reference(tmp_path, tmp_path, [{}] * 6, run)
