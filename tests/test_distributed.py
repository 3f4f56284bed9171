"""Data-parallel training: 2 CPU processes (gloo) train the intervention one process trains."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import tiny_model, tiny_tokenizer

from split_plugin import SplitPluginError
from split_plugin.data import ContrastivePair, load_pairs
from split_plugin.distributed import DataParallel, setup
from split_plugin.intervention import Intervention
from split_plugin.models import load_model
from split_plugin.trainer import train

PAIRS = [ContrastivePair(f"question number {i}?", "Yes" if i % 2 else "No", "No" if i % 2 else "Yes")
         for i in range(7)]
BASE = dict(layer=2, epochs=2, lr=0.05, factors=[1.0, 2.0, 3.0], progress=False, seed=5)
CASES = {
    # 7 pairs in global batches of 4: [4, 3], so the last batch splits 2 + 1
    "split_vector_uneven": dict(BASE, batch_size=4),
    # batches [2, 2, 2, 1]: the last leaves rank 1 nothing; grad_accum joins two batches a step
    "split_lora_empty_shard_accum": dict(BASE, form="lora", batch_size=2, grad_accum=2),
    "reps_local_weight": dict(BASE, method="reps", form="local_weight", batch_size=4),
    "sft_vector_kl": dict(BASE, method="sft", batch_size=3, kl_weight=0.5, max_length=64),
}
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, port, model_dir, data, out):
    """One launched process: the variables torchrun / accelerate launch set, then plain train()."""
    os.environ.update(WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model, tok = load_model(model_dir)
    pairs = load_pairs(data)
    results = {}
    for name, settings in CASES.items():
        history = []
        iv = train(model, tok, pairs, settings, history=history)
        results[name] = ({k: v.clone() for k, v in iv.state_dict().items()}, history)
    assert dist.is_initialized() and dist.get_world_size() == WORLD
    try:  # one hinge over the whole batch cannot be split across processes
        train(model, tok, pairs, dict(BASE, pooled_hinge=True))
        results["pooled"] = None
    except SplitPluginError as exc:
        results["pooled"] = str(exc)
    torch.save(results, f"{out}.{rank}")


def _spawn(*args, timeout=120):
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(_worker, args=args, nprocs=WORLD, join=False, start_method=method)
    deadline = time.monotonic() + timeout
    while not context.join(timeout=1):  # raises when a process fails
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {WORLD} training processes did not finish in {timeout} s")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model in a folder and the pairs in a JSONL file, as a user would launch with."""
    root = tmp_path_factory.mktemp("dp")
    tiny_model("llama").save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "positive": p.positive,
                                        "negative": p.negative}) + "\n" for p in PAIRS))
    return root


@pytest.fixture(scope="module")
def two_processes(saved):
    out = saved / "result"
    _spawn(_free_port(), str(saved / "model"), str(saved / "pairs.jsonl"), str(out))
    return [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_train_what_one_process_trains(saved, two_processes, name):
    model, tok = load_model(saved / "model")
    history = []
    want = train(model, tok, load_pairs(saved / "pairs.jsonl"), CASES[name], history=history).state_dict()
    for rank, results in enumerate(two_processes):
        got, got_history = results[name]
        assert got.keys() == want.keys()
        for key in want:
            assert torch.allclose(got[key], want[key], atol=1e-5, rtol=1e-4), (rank, key)
        # every process logs the global batch's loss and margin, as one process does
        assert [h["step"] for h in got_history] == [h["step"] for h in history]
        for field in ("loss", "margin"):
            assert [h[field] for h in got_history] == pytest.approx([h[field] for h in history],
                                                                    abs=1e-5, rel=1e-4, nan_ok=True)
    assert any(not torch.equal(v, torch.zeros_like(v)) for v in want.values())  # it did train


def test_pooled_hinge_is_refused_in_data_parallel(two_processes):
    assert all("pooled_hinge" in (results["pooled"] or "") for results in two_processes)


def test_cli_under_accelerate_launch_saves_once(saved, tmp_path):
    """The documented command: two CPU processes, rank 0 saves what `split-steer train` saves alone."""
    hparams = tmp_path / "h.yaml"
    hparams.write_text("layer: 2\nepochs: 2\nbatch_size: 3\nlr: 0.05\nfactors: [1.0, 2.0]\nseed: 5\n"
                       "progress: false\n")
    args = ["-m", "split_plugin.cli", "train", "--hparams", hparams, "--data", saved / "pairs.jsonl",
            "--model", saved / "model"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    two = subprocess.run([*launch, *args, "--out", tmp_path / "two"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("saved vector intervention") == 1
    model, tok = load_model(saved / "model")
    want = train(model, tok, load_pairs(saved / "pairs.jsonl"), str(hparams))  # what one process trains
    got = Intervention.from_pretrained(tmp_path / "two")
    assert torch.allclose(got.vector, want.vector, atol=1e-5) and want.vector.abs().max() > 0


@pytest.mark.parametrize("n, shards", [(4, [(0, 2), (2, 4)]), (3, [(0, 2), (2, 3)]), (1, [(0, 1), (1, 1)])])
def test_shards_cover_a_batch_and_weights_add_to_one(n, shards):
    parts = [DataParallel(rank, WORLD).shard(n) for rank in range(WORLD)]
    assert [(p.start, p.stop) for p in parts] == shards
    assert sum(DataParallel(rank, WORLD).share(n) for rank in range(WORLD)) == pytest.approx(1.0)


def test_one_process_without_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    dp = setup("cpu")
    assert (dp.rank, dp.world_size, dp.enabled, dp.is_main) == (0, 1, False, True)
    assert dp.sync([torch.zeros(2, requires_grad=True)], [1.5, 2.0]) == [1.5, 2.0]


def test_half_set_launcher_variables_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SplitPluginError, match="MASTER_ADDR"):
        setup("cpu")
