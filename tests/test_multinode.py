"""Two "nodes" of one CPU process each on this machine, launched by torchrun with configs/trainer/multinode.yaml."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, free_port
from multinode_helpers import write_indexed_mnist

pytestmark = pytest.mark.slow  # several processes per test (torchrun)

MODEL = """seed_everything: 0
trainer: {{max_epochs: 1}}
model:
  class_path: lit_mnist.MLP
  init_args:
    hidden_sizes: [32]
    optimizer: {{class_path: torch.optim.Adam, init_args: {{lr: 0.01}}}}
data:
  class_path: lit_mnist.MNISTDataModule
  init_args: {{data_dir: {data}, batch_size: 32, val_size: 64}}
"""


def _launch(tmp: Path, config: Path, record: Path, *extra: str, kill_rank: int | None = None) -> list:
    port, env = (
        free_port(),
        {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "PYTHONWARNINGS": "ignore"},
    )
    callback = {
        "class_path": "multinode_helpers.RecordRank",
        "init_args": {"out_dir": str(record), "kill_rank": kill_rank},
    }
    procs = []
    for rank in (0, 1):
        cwd = tmp / f"node{rank}"
        cwd.mkdir(exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                   "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                   "-m", "lit_mnist", "fit", "--config", str(config), "--config", str(REPO / "configs/trainer/multinode.yaml"),
                   "--trainer.logger.init_args.save_dir", str(cwd / "logs"), f"--trainer.callbacks+={json.dumps(callback)}", *extra]  # fmt: skip
        procs.append(
            subprocess.Popen(
                command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    return [(*p.communicate(timeout=120), p.wait()) for p in procs]


def test_two_nodes_train_once_over_the_data_and_match_one_process(tmp_path):
    data = write_indexed_mnist(tmp_path / "data", n_train=320)
    config = tmp_path / "model.yaml"
    config.write_text(MODEL.format(data=data))
    results = _launch(tmp_path, config, tmp_path / "rec")
    for _out, err, rc in results:
        assert rc == 0, err[-3000:]
    node0, node1 = (tmp_path / f"node{r}" for r in (0, 1))
    assert list((node0 / "logs" / "model" / "version_0" / "checkpoints").glob("*.ckpt"))
    assert [p for p in node1.rglob("*") if p.is_file()] == []  # rank 1 writes no logs or checkpoints
    ids = [json.loads((tmp_path / "rec" / f"rank{r}_epoch0.json").read_text())["ids"] for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 128 and len(set(ids[0]) | set(ids[1])) == 256  # each image once
    w0, w1 = (torch.load(tmp_path / "rec" / f"rank{r}_epoch0.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    single = subprocess.run([sys.executable, "-m", "lit_mnist", "fit", "--config", str(config), "--data.init_args.batch_size", "64",
                             "--trainer.logger.init_args.save_dir", str(tmp_path / "single"),
                             "--trainer.callbacks+=" + json.dumps({"class_path": "multinode_helpers.RecordRank", "init_args": {"out_dir": str(tmp_path / "one")}})],
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}"}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]
    ws = torch.load(tmp_path / "one" / "rank0_epoch0.pt")
    for k in w0:  # the same global batch of 64; only the order of the gradient sums differs
        torch.testing.assert_close(w0[k], ws[k], rtol=1e-4, atol=1e-5)


def test_a_killed_rank_stops_the_other_with_one_line(tmp_path):
    data = write_indexed_mnist(tmp_path / "data", n_train=320)
    config = tmp_path / "model.yaml"
    config.write_text(MODEL.format(data=data))
    (_, err0, rc0), (_, _, rc1) = _launch(tmp_path, config, tmp_path / "rec", kill_rank=1)
    assert rc0 != 0 and rc1 != 0
    assert "error: rank 0 of 2 stopped: another process of the distributed run died" in err0


def test_ckpt_path_last_resumes_under_the_same_launch(tmp_path):
    data = write_indexed_mnist(tmp_path / "data", n_train=320)  # 256 train images: 4 batches of 32 per rank
    config = tmp_path / "model.yaml"
    config.write_text(MODEL.format(data=data))
    no_test = ("--test_after_fit", "false")
    for _out, err, rc in _launch(tmp_path, config, tmp_path / "rec", *no_test):
        assert rc == 0, err[-3000:]
    resume = ("--trainer.max_epochs", "2", "--ckpt_path", "last", *no_test)
    # node 1 has no copy of the run's logs: it would train from scratch while node 0 resumes
    mismatch = _launch(tmp_path, config, tmp_path / "rec_mismatch", *resume)
    for _out, err, rc in mismatch:
        assert rc != 0
        assert (
            "error: --ckpt_path last resolved to different checkpoints on different ranks "
            "(rank 0: model/version_0/checkpoints/last.ckpt (epoch 0, step 4); "
            "rank 1: no last.ckpt (training from scratch))"
        ) in err, err[-3000:]
    # machine 1 gets a copy of the run's logs, at the same path under its own working directory
    shutil.copytree(tmp_path / "node0" / "logs", tmp_path / "node1" / "logs", dirs_exist_ok=True)
    results = _launch(tmp_path, config, tmp_path / "rec2", *resume)
    for out, err, rc in results:
        assert rc == 0, err[-3000:]
        assert "Resuming from " in out and "version_0/checkpoints/last.ckpt" in out
    run = tmp_path / "node0" / "logs" / "model"
    assert sorted(p.name for p in run.iterdir()) == ["version_0"]  # the run goes on in its folder
    last = torch.load(run / "version_0" / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8  # 2 epochs of 4 steps, the first from the first launch
    assert sorted(p.name for p in (tmp_path / "rec2").glob("*.json")) == [
        "rank0_epoch1.json",
        "rank1_epoch1.json",
    ]
    ids = [json.loads((tmp_path / "rec2" / f"rank{r}_epoch1.json").read_text())["ids"] for r in (0, 1)]
    assert len(ids[0]) == len(ids[1]) == 128 and len(set(ids[0]) | set(ids[1])) == 256
    w0, w1 = (torch.load(tmp_path / "rec2" / f"rank{r}_epoch1.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    first = torch.load(tmp_path / "rec" / "rank0_epoch0.pt")
    assert not all(torch.equal(w0[k], first[k]) for k in w0)  # epoch 2 trained
