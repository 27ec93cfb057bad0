"""``python -m lit_mnist tune``: search spaces, samplers, failures, resuming and sharing a study."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import REPO, free_port, run_cli, write_idx, write_mnist

from lit_mnist import tune
from lit_mnist.__main__ import main
from lit_mnist.data.mnist import ensure_mnist_files, load_mnist

#: Every trial: the "Practical 5" MLP on 80 tiny training images, 1 epoch, 2 batches.
FIT = [
    "--config",
    str(REPO / "configs" / "mlp.yaml"),
    "--data.data_dir",
    "data",
    "--data.val_size",
    "40",
    "--trainer.max_epochs",
    "1",
    "--trainer.limit_train_batches",
    "2",
    "--trainer.logger.init_args.log_graph",
    "false",
]
GRID = """\
model.init_args.optimizer.init_args.lr: {type: grid, values: [0.001, 0.01]}
data.batch_size: {type: categorical, choices: [16, 32]}
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A folder with tiny MNIST under data/, where tune runs."""
    write_mnist(tmp_path / "data")
    return tmp_path


def trials(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_grid_visits_each_point_once_and_best_yaml_trains(work: Path) -> None:
    (work / "grid.yaml").write_text(GRID)
    result = run_cli("tune", "--search", "grid.yaml", "--sampler", "grid", *FIT, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    study = work / "lightning_logs" / "tune_mlp"
    rows = trials(study / "trials.csv")
    lr, bs = "model.init_args.optimizer.init_args.lr", "data.batch_size"
    assert sorted((float(r[lr]), int(r[bs])) for r in rows) == [
        (0.001, 16),
        (0.001, 32),
        (0.01, 16),
        (0.01, 32),
    ]
    assert {r["state"] for r in rows} == {"COMPLETE"}
    for r in rows:
        assert (study / f"trial_{r['number']}" / "checkpoints" / "last.ckpt").is_file()
        assert list((study / f"trial_{r['number']}").glob("events.out.tfevents.*"))
    assert "Best trial's test accuracy" in result.stdout
    assert "| number |" in result.stdout

    best = study / "best.yaml"
    fit = run_cli("fit", "--config", str(best), "--trainer.limit_train_batches", "1", cwd=work)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert list((work / "lightning_logs" / "tune_mlp-best").glob("version_0/checkpoints/last.ckpt"))


@pytest.mark.parametrize("sampler", [optuna.samplers.RandomSampler, optuna.samplers.TPESampler])
def test_samplers_stay_in_range_and_respect_log(sampler: type, tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}\n"
        "p: {type: float, low: 1.0e-4, high: 1.0e-1}\n"
        "n: {type: int, low: 8, high: 64, step: 8}\n"
        "c: {type: categorical, choices: [[64, 128], relu, 3]}\n"
    )
    space = tune.load_space(path)
    study = optuna.create_study(sampler=sampler(seed=0))
    seen = []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for _ in range(60):
        trial = study.ask()
        values = tune.suggest(trial, space)
        seen.append(values)
        study.tell(trial, -abs(np.log10(values["lr"]) + 2.5))
    lrs, ps = np.array([v["lr"] for v in seen]), np.array([v["p"] for v in seen])
    assert ((lrs >= 1e-4) & (lrs <= 1e-1)).all() and ((ps >= 1e-4) & (ps <= 1e-1)).all()
    assert {v["n"] for v in seen} <= set(range(8, 65, 8))
    assert {v["c"] for v in seen} <= {"[64, 128]", "relu", 3}
    # log-uniform puts about a third of the draws below 1e-3 (a tenth of a percent of the linear range)
    assert (lrs < 1e-3).mean() > 0.1
    assert (ps < 1e-3).mean() < 0.1
    fit = tune.fit_values(space, {"lr": 0.01, "p": 0.5, "n": 16, "c": "[64, 128]"})
    assert fit == {"lr": 0.01, "p": 0.5, "n": 16, "c": [64, 128]}


def real_mnist(root: Path, n_train: int = 600, n_test: int = 100) -> Path:
    """The first images of the vendored MNIST as IDX files under ``root``; returns ``root``."""
    ensure_mnist_files(REPO / "data")
    images, labels = load_mnist(REPO / "data", train=True)
    test_images, test_labels = load_mnist(REPO / "data", train=False)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", images[:n_train].numpy())
    write_idx(raw / "train-labels-idx1-ubyte", labels[:n_train].numpy())
    write_idx(raw / "t10k-images-idx3-ubyte", test_images[:n_test].numpy())
    write_idx(raw / "t10k-labels-idx1-ubyte", test_labels[:n_test].numpy())
    return root


def test_a_diverging_trial_is_pruned_or_failed_and_the_study_completes(tmp_path: Path) -> None:
    real_mnist(tmp_path / "data")
    work = tmp_path
    (work / "bad.yaml").write_text(
        "model.init_args.optimizer.init_args.lr: {type: grid, values: [0.001, 0.002, 1000.0]}\n"
    )
    args = [
        "--search",
        "bad.yaml",
        "--sampler",
        "grid",
        "--study_name",
        "bad",
        "--n_startup_trials",
        "2",
        "--seed",
        "5",  # GridSampler's order is then 0.001, 0.002, 1000.0: the pruner compares the last with two
        *FIT,
    ]
    args += ["--data.val_size", "200", "--trainer.limit_train_batches", "12"]
    result = run_cli("tune", *args, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {
        float(r["model.init_args.optimizer.init_args.lr"]): r
        for r in trials(work / "lightning_logs" / "bad" / "trials.csv")
    }
    assert rows[1000.0]["state"] in ("FAIL", "PRUNED")
    assert "loss became" in rows[1000.0]["error"] or "pruned" in rows[1000.0]["error"]
    assert float(rows[0.001]["val/acc"]) > 0.5  # the data is learnable: the bad trial is bad, not unlucky
    assert rows[0.001]["state"] == "COMPLETE"
    assert (work / "lightning_logs" / "bad" / "best.yaml").is_file()


BAD_SPACES = [
    ("no_such.key: {type: float, low: 0.1, high: 1.0}", "no_such.key is not a fit option"),
    (
        "model.init_args.dropout: {type: float, low: 0.1, high: 0.5}",
        "model.init_args.dropout is not an option of lit_mnist.MLP",
    ),
    (
        "model.init_args.optimizer.init_args.lr: {type: float, low: 0.1, high: 0.01}",
        "empty or inverted range",
    ),
    ("data.batch_size: {type: int, low: 32, high: 32}", "empty or inverted range"),
    (
        "model.init_args.optimizer.init_args.lr: {type: float, low: 0.0, high: 0.1, log: true}",
        "needs low above 0",
    ),
    ("data.batch_size: {type: categorical, choices: []}", "non-empty list of choices"),
    ("data.batch_size: {type: normal, mean: 3}", "type: one of float, int, categorical, grid"),
    ("data.batch_size: {type: int, low: 1, hight: 9}", "hight"),
    ("data.batch_size: {type: categorical, choices: [16, abc]}", "data.batch_size = abc is refused by fit"),
    ("", "is empty"),
    ("a: [1, 2", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPACES)
def test_a_bad_search_space_is_refused_before_any_trial(
    text: str, message: str, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(work)
    (work / "space.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--search", "space.yaml", *FIT])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err
    assert len(err.splitlines()) == 1
    assert not (work / "lightning_logs" / "tune_mlp").exists()  # no study, no trial


def test_a_float_range_under_grid_and_a_bad_storage_are_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(work)
    (work / "space.yaml").write_text(
        "model.init_args.optimizer.init_args.lr: {type: float, low: 0.001, high: 0.1}\n"
    )
    for extra, message in (
        (["--sampler", "grid"], "--sampler grid cannot walk the float range"),
        (["--storage", f"sqlite:///{work}/no/such/folder/study.db"], "Cannot open the storage sqlite:///"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(["tune", "--search", "space.yaml", *FIT, *extra])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n_trials", "0"], "n_trials"),
        (["--sampler", "bayes"], "bayes"),
        (["--heartbeat_interval", "-1"], "heartbeat_interval"),
        (["--trainer.max_epochs", "many"], "max_epochs"),
    ],
)
def test_bad_options_are_the_parsers_errors(
    extra: list[str], message: str, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(work)
    (work / "space.yaml").write_text("data.batch_size: {type: categorical, choices: [16, 32]}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--search", "space.yaml", *FIT, *extra])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_help_describes_every_option_and_print_config_shows_fit_and_tune(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """(``tune --help`` in a process of its own, with a sentence for every option: test_cli.py.)"""
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (f.name for f in dataclasses.fields(tune.Options)):
        assert f"--{option} " in text, option
    assert "workers racing at the end may finish a few more" in text
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["tune", "--config", "configs/mlp.yaml", "--search", "configs/search/mlp.yaml", "--print_config"]
        )
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "search: configs/search/mlp.yaml" in printed and "class_path: lit_mnist.MLP" in printed
    # python -m lit_mnist --help reads tune's docstring; importing tune must not import Optuna
    code = "import sys, lit_mnist.tune; assert 'optuna' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=120).returncode == 0


def test_a_study_keeps_its_search_space(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(work)
    lr = "model.init_args.optimizer.init_args.lr: {type: grid, values: [0.001]}\n"
    (work / "space.yaml").write_text(lr + "data.batch_size: {type: categorical, choices: [16, 32]}\n")
    main(["tune", "--search", "space.yaml", "--n_trials", "1", *FIT])
    journal = work / "lightning_logs" / "tune_mlp" / "journal.log"
    for space, differ in (
        (lr + "data.batch_size: {type: categorical, choices: [16, 64]}\n", "data.batch_size"),
        (
            lr
            + "data.batch_size: {type: categorical, choices: [16, 32]}\ndata.val_size: {type: grid, values: [40]}\n",
            "data.val_size",
        ),
    ):
        (work / "space.yaml").write_text(space)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(["tune", "--search", "space.yaml", "--n_trials", "2", *FIT])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: The study tune_mlp")
        assert f"another {differ}:" in err and "--study_name" in err
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        assert len(optuna.load_study(study_name="tune_mlp", storage=storage).trials) == 1


def test_trials_csv_has_a_column_for_every_parameter_any_trial_has() -> None:
    study = optuna.create_study(direction="maximize")
    a, b = optuna.distributions.FloatDistribution(0, 1), optuna.distributions.IntDistribution(0, 9)
    study.add_trial(optuna.create_trial(params={"a": 0.5}, distributions={"a": a}, value=0.9))
    study.add_trial(optuna.create_trial(params={"b": 3}, distributions={"b": b}, value=0.8))
    header, rows = tune.results_rows(study, ["b"], "val/acc")
    assert header[:3] == ["number", "b", "a"]
    assert [row[:4] for row in rows] == [[0, None, 0.5, 0.9], [1, 3, None, 0.8]]


def test_a_study_where_no_trial_completes_fails_naming_the_most_common_failure(work: Path) -> None:
    (work / "space.yaml").write_text("data.batch_size: {type: categorical, choices: [16, 32]}\n")
    result = run_cli(
        "tune", "--search", "space.yaml", "--n_trials", "2", *FIT, "--data.val_size", "500", cwd=work
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: No trial of study tune_mlp completed, so there is no best.yaml; the most common failure "
        "(2 of 2): data.val_size is 500 but the training set has only 120 images: use a smaller val_size "
        "(0 trains on all of them)."
    )
    rows = trials(work / "lightning_logs" / "tune_mlp" / "trials.csv")
    assert [r["state"] for r in rows] == ["FAIL", "FAIL"]
    # each message once: one "Seed set to 0" per trial's fit, none for tune's own parse
    assert (result.stdout + result.stderr).count("Seed set to 0") == 2
    assert result.stdout.count("Trial 0 failed: ") == 1


def test_a_storage_server_that_never_answers_is_one_sentence(work: Path) -> None:
    (work / "space.yaml").write_text("data.batch_size: {type: categorical, choices: [16, 32]}\n")
    with socket.socket() as server:  # the kernel accepts connections; nothing ever reads or answers them
        server.bind(("127.0.0.1", 0))
        server.listen()
        url = f"postgresql://tune@127.0.0.1:{server.getsockname()[1]}/study"
        # psycopg waits 130 s by default; CONNECT_TIMEOUT_S ends this well before the 90 s limit
        result = run_cli("tune", "--search", "space.yaml", *FIT, "--storage", url, cwd=work, timeout=90)
    assert result.returncode == 1
    assert result.stderr.strip().startswith(f"error: Cannot open the storage {url}: ")
    assert len(result.stderr.strip().splitlines()) == 1


def _popen(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "lit_mnist", "tune", *args],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_sigkill_mid_trial_then_the_same_command_finishes_the_study(work: Path) -> None:
    (work / "space.yaml").write_text(
        "model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    args = [
        "--search", "space.yaml", "--n_trials", "2", "--sampler", "random", "--seed", "0",
        "--heartbeat_interval", "1", *FIT, "--trainer.max_epochs", "20",
    ]  # fmt: skip
    log = work / "first.log"
    proc = _popen(args, work, log)
    _wait_for(log, "=== Trial 0 ", proc)
    proc.send_signal(signal.SIGKILL)  # inside trial 0, which builds its fit and then trains 20 epochs
    proc.wait(timeout=30)
    time.sleep(2)  # the grace period: twice --heartbeat_interval
    result = run_cli("tune", *args, cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trial 0 was left running by a process that stopped: marked failed." in result.stdout
    rows = trials(work / "lightning_logs" / "tune_mlp" / "trials.csv")
    # --n_trials counts finished trials: the killed one is failed, run again (trial 1), and two finish
    assert [(r["number"], r["state"]) for r in rows] == [("0", "FAIL"), ("1", "COMPLETE"), ("2", "COMPLETE")]
    assert "stopped mid-trial" in rows[0]["error"]
    lr = "model.init_args.optimizer.init_args.lr"
    assert rows[1][lr] == rows[0][lr]


def _share(args: list[str], work: Path) -> list[str]:
    logs = [work / f"p{i}.log" for i in range(2)]
    procs = [_popen(args, work, log) for log in logs]
    for proc in procs:
        proc.wait(timeout=240)
    outputs = [log.read_text() for log in logs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    return outputs


def _ran(output: str) -> set[int]:
    return {int(line.split()[2]) for line in output.splitlines() if line.startswith("=== Trial ")}


def test_two_processes_share_one_study(work: Path) -> None:
    (work / "space.yaml").write_text(
        "model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
    )
    outputs = _share(["--search", "space.yaml", "--n_trials", "5", "--sampler", "random", *FIT], work)
    first, second = _ran(outputs[0]), _ran(outputs[1])
    # Each worker stops once 5 trials have finished: the one still running then may finish a 6th.
    assert not first & second and set(range(5)) <= first | second <= set(range(6))
    rows = trials(work / "lightning_logs" / "tune_mlp" / "trials.csv")
    states = [r["state"] for r in rows]
    # The median pruner starts once 5 trials have completed: only that 6th may be pruned.
    assert len(rows) in (5, 6) and states.count("COMPLETE") >= 5 and set(states) <= {"COMPLETE", "PRUNED"}


POSTGRES_BIN = Path("/usr/lib/postgresql")
pg_bins = sorted(POSTGRES_BIN.glob("*/bin/pg_ctl")) if POSTGRES_BIN.is_dir() else []


@pytest.mark.slow
@pytest.mark.skipif(
    not pg_bins or os.geteuid() != 0,
    reason="needs Debian's postgresql package and root to run it as postgres",
)
def test_two_processes_share_a_postgresql_study(work: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("psycopg")
    bin_dir = pg_bins[-1].parent
    # pytest's temporary folders are private to root (0700): the postgres user needs its own.
    pg_root = Path(tempfile.mkdtemp(prefix="lit_mnist_pg_"))
    pg_root.chmod(0o755)
    shutil.chown(pg_root, "postgres")
    pgdata = pg_root / "data"
    port = free_port()

    def as_postgres(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True, timeout=60)

    as_postgres(str(bin_dir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "postgres")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={pgdata}"
    as_postgres(
        str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-o", options, "-l", str(pg_root / "log"), "-w", "start"
    )
    try:
        url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        # The database is empty: both processes create Optuna's tables at once (tune.open_rdb_storage).
        (work / "space.yaml").write_text(
            "model.init_args.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        )
        args = ["--search", "space.yaml", "--n_trials", "4", "--storage", url, "--study_name", "pg", *FIT]
        outputs = _share(args, work)
        first, second = _ran(outputs[0]), _ran(outputs[1])
        assert not first & second and set(range(4)) <= first | second <= set(range(5))
        study = optuna.load_study(study_name="pg", storage=url)
        assert [t.state.name for t in study.trials] in (["COMPLETE"] * 4, ["COMPLETE"] * 5)
    finally:
        as_postgres(str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop")
        shutil.rmtree(pg_root, ignore_errors=True)
