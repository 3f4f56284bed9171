"""Files and folders the package writes honour the user's umask, like any other program's."""
import os
import stat

import pytest
from tiny import names, randomized, tiny_model

from split_plugin import Intervention, SplitPluginError, export_peft
from split_plugin.fileio import atomic_dir, atomic_write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o077, 0o600, 0o700)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "report") as tmp:
        (tmp / "inner.txt").write_text("y")
    assert _mode(tmp_path / "a.txt") == file_mode
    assert _mode(tmp_path / "report") == dir_mode
    assert _mode(tmp_path / "report" / "inner.txt") == file_mode


def test_saved_intervention_is_readable_by_colleagues(tmp_path, umask):
    Intervention.for_model(tiny_model("llama"), "vector", 1).save_pretrained(tmp_path / "iv")
    assert _mode(tmp_path / "iv") == 0o755
    assert {_mode(p) for p in (tmp_path / "iv").iterdir()} == {0o644}


@pytest.mark.usefixtures("one_thread")
def test_saves_never_replace_a_users_file_or_folder(tmp_path):
    model = tiny_model("llama")
    iv = randomized(model, "lora")
    user_file = tmp_path / "results.txt"
    user_file.write_text("precious")
    user_dir = tmp_path / "project"
    user_dir.mkdir()
    (user_dir / "config.json").write_text("{}")      # even one that shares a file name with a save
    (user_dir / "train.py").write_text("precious")
    for save in (lambda p: iv.save_pretrained(p), lambda p: export_peft(iv, model, p)):
        with pytest.raises(SplitPluginError, match="is an existing file, not a folder; nothing was written"):
            save(user_file)
        with pytest.raises(SplitPluginError, match=r"holds files that are not a previous .*'train.py'\]"):
            save(user_dir)
    assert user_file.read_text() == "precious" and (user_dir / "train.py").read_text() == "precious"
    assert names(tmp_path) == ["project", "results.txt"]
    export_peft(iv, model, tmp_path / "adapter")
    export_peft(iv, model, tmp_path / "adapter")  # its own previous export is replaced
