"""Two "nodes" of one CPU process each on this machine, launched by torchrun with configs/trainer/multinode.yaml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from helpers import REPO
from multinode_helpers import write_indexed_mnist

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp: Path, config: Path, record: Path, *extra: str, kill_rank: int | None = None) -> list:
    port, env = (
        _free_port(),
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
