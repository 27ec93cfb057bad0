"""``python -m lit_mnist tune``: an Optuna study whose trials are ordinary ``fit`` runs.

The search space is a YAML file keyed by the CLI's own dotted option names
(``model.init_args.optimizer.init_args.lr``, ``data.batch_size``); every other argument is a
``fit`` argument applied to every trial. Each trial is a ``LitMNISTCLI`` fit (the same checks,
checkpoints and TensorBoard logging) logged under ``<save_dir>/<study>/trial_<n>/``.

The study lives in ``<save_dir>/<study>/journal.log`` (Optuna's ``JournalFileBackend``) unless
``--storage`` names an RDB URL (``sqlite:///…``, ``postgresql://…``). Processes sharing a study
take their trials one at a time under a lock (a lock file beside the study, or a PostgreSQL
advisory lock), so together they run exactly ``--n_trials`` trials; a trial whose process died
(SIGKILL) is marked failed by the next process on its machine, or, with an RDB storage, by
Optuna's heartbeat from any machine.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import torch
import yaml
from jsonargparse import Namespace
from optuna.trial import TrialState

from lit_mnist.cli import LitMNISTCLI
from lit_mnist.errors import ArgumentParser, LitMNISTError, user_message

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "none")
TYPES = ("float", "int", "categorical", "grid")
FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "grid": {"type", "values"},
}
#: The trials that count towards ``--n_trials`` (queued grid points do not, until they start).
STARTED = (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
#: Seconds between heartbeats of a running trial in an RDB storage, and after how long without
#: one another process marks the trial failed.
HEARTBEAT_S, GRACE_S = 10, 60


@dataclass(frozen=True)
class Param:
    """One search-space entry: ``kind`` is float, int or categorical (grid values are choices)."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()


class _Parsed(Exception):
    """Raised by ``_ParseOnlyCLI`` once the arguments are parsed, before any class is built."""


class _ParseOnlyCLI(LitMNISTCLI):
    """The project's CLI, stopped after parsing: its config is the one a ``fit`` would run."""

    def init_parser(self, **kwargs: Any) -> Any:
        return super().init_parser(**kwargs, exit_on_error=False)

    def before_instantiate_classes(self) -> None:
        raise _Parsed


class _TrialCLI(LitMNISTCLI):
    """``fit`` for one trial: logged as ``<study>/trial_<n>``, with the trial's callbacks added."""

    def __init__(self, args: list[str], study_name: str, number: int, callbacks: list[L.Callback]) -> None:
        self._study_name, self._number, self._extra = study_name, number, callbacks
        super().__init__(args=args)

    def init_parser(self, **kwargs: Any) -> Any:
        return super().init_parser(**kwargs, exit_on_error=False)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        init_args = self.config.fit.trainer.logger.init_args
        init_args.name, init_args.version = self._study_name, f"trial_{self._number}"

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self._extra)
        return trainer


class _TrialMonitor(L.Callback):
    """Keeps the trial's best ``metric``, its test accuracy, and fails a trial whose loss is not finite."""

    def __init__(self, metric: str, maximize: bool) -> None:
        self.metric, self.maximize = metric, maximize
        self.best: float | None = None
        self.test_acc: float | None = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *_: Any
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(loss.detach().isfinite().all()):
            raise LitMNISTError(f"the training loss became {float(loss)} at epoch {trainer.current_epoch}.")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        loss = trainer.callback_metrics.get("val/loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise LitMNISTError(f"the validation loss became {float(loss)} at epoch {trainer.current_epoch}.")
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            raise LitMNISTError(f"--metric {self.metric} is not a logged metric (try val/acc or val/loss).")
        value = float(value)
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best = value

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc = trainer.callback_metrics.get("test/acc")
        self.test_acc = None if acc is None else float(acc)


# --------------------------------------------------------------------------------------------- space


def load_space(path: str | Path) -> dict[str, Param]:
    """Read a search-space file, or raise ``LitMNISTError`` naming what is wrong with it.

    Args:
        path: a YAML mapping from dotted CLI keys to ``{type: float|int, low, high[, log, step]}``,
            ``{type: categorical, choices: [...]}`` or ``{type: grid, values: [...]}``.
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as err:
        raise LitMNISTError(f"Cannot read the search space {path}: {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise LitMNISTError(
            f"The search space {path} is not valid YAML: {str(err).splitlines()[0]}."
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise LitMNISTError(f"The search space {path} is empty: give at least one key: {{type: ..., ...}}.")
    return {str(key): _param(path, str(key), spec) for key, spec in raw.items()}


def _param(path: Path, key: str, spec: Any) -> Param:
    where = f"{path}: {key}"
    if not isinstance(spec, dict) or spec.get("type") not in TYPES:
        raise LitMNISTError(f"{where} needs a mapping with type: one of {', '.join(TYPES)}.")
    kind = spec["type"]
    unknown = sorted(set(spec) - FIELDS[kind])
    if unknown:
        raise LitMNISTError(f"{where} has {', '.join(unknown)}, which a {kind} entry does not take.")
    if kind in ("categorical", "grid"):
        field = "choices" if kind == "categorical" else "values"
        values = spec.get(field)
        if not isinstance(values, list) or not values:
            raise LitMNISTError(f"{where} needs a non-empty list of {field}.")
        return Param(key, "categorical", choices=tuple(_optuna_choice(v) for v in values))
    number = float if kind == "float" else int
    bounds = {}
    for field in ("low", "high"):
        value = spec.get(field)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (number is int and not float(value).is_integer())
        ):
            raise LitMNISTError(
                f"{where} needs {field}: a {'number' if number is float else 'whole number'}."
            )
        bounds[field] = number(value)
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise LitMNISTError(f"{where} has an empty or inverted range: low {low} must be below high {high}.")
    log, step = bool(spec.get("log", False)), spec.get("step")
    if log and low <= 0:
        raise LitMNISTError(f"{where} has log: true, which needs low above 0 (got {low}).")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise LitMNISTError(f"{where} needs step: a number above 0.")
    if step is not None and log:
        raise LitMNISTError(f"{where} has both log and step, which Optuna does not combine.")
    return Param(key, kind, low, high, log, None if step is None else number(step))


def _optuna_choice(value: Any) -> Any:
    """A choice Optuna can store: scalars as they are, lists and mappings as their JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def cli_value(value: Any) -> str:
    """A sampled value as a command-line value jsonargparse reads back (strings as they are)."""
    return value if isinstance(value, str) else json.dumps(value)


def grid_space(space: dict[str, Param]) -> dict[str, list[Any]]:
    """The grid ``GridSampler`` walks: choices, or every step of an int range; floats are refused."""
    grid = {}
    for p in space.values():
        if p.kind == "categorical":
            grid[p.key] = list(p.choices)
        elif p.kind == "int" and not p.log:
            grid[p.key] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            raise LitMNISTError(
                f"--sampler grid cannot walk the {p.kind} range {p.key}: "
                "give it {type: grid, values: [...]}."
            )
    return grid


def suggest(trial: optuna.Trial, space: dict[str, Param]) -> dict[str, Any]:
    """The trial's value for every key of the space."""
    values = {}
    for p in space.values():
        if p.kind == "float":
            values[p.key] = trial.suggest_float(p.key, p.low, p.high, log=p.log, step=p.step)
        elif p.kind == "int":
            values[p.key] = trial.suggest_int(
                p.key, int(p.low), int(p.high), log=p.log, step=int(p.step or 1)
            )
        else:
            values[p.key] = trial.suggest_categorical(p.key, list(p.choices))
    return values


def overrides(values: dict[str, Any]) -> list[str]:
    """``--key=value`` arguments setting a trial's values."""
    return [f"--{key}={cli_value(value)}" for key, value in values.items()]


# --------------------------------------------------------------------------------------------- config


def parse_fit(fit_args: Sequence[str]) -> tuple[Namespace, Any]:
    """The config ``fit`` would run with ``fit_args`` (nothing built), and its parser."""
    cli = None
    try:
        cli = _ParseOnlyCLI.__new__(_ParseOnlyCLI)
        cli.__init__(args=["fit", *fit_args])
    except _Parsed:
        return cli.config, cli.parser
    except argparse.ArgumentError as err:
        raise LitMNISTError(f"fit refuses these arguments: {_reason(str(err))}") from None
    raise AssertionError("unreachable: _ParseOnlyCLI always stops")


def _reason(message: str) -> str:
    """The line of a jsonargparse error that says what is wrong, as one sentence."""
    skip = ("Does not validate", "Subtypes", "Errors", "Given value", "- Expected a <class 'NoneType'>")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(skip)]
    text = " ".join(useful[-2:] if useful and useful[-1].startswith(("Expected", "Option")) else useful[-1:])
    text = text.lstrip("- ").rstrip(".:")
    return f"{text}." if text else "invalid arguments."


def check_space(space: dict[str, Param], config: Namespace, search: str | Path) -> None:
    """Refuse, naming it, a key that is no option of ``fit`` (or of the class its config names).

    A class's options may be named with or without ``init_args`` (``data.batch_size``), as on the
    command line.
    """
    for key in space:
        node: Any = config.fit
        owner: Namespace | None = None  # the class (class_path + init_args) whose options we are in
        done: list[str] = []
        for part in key.split("."):
            if isinstance(node, Namespace) and isinstance(node.get("init_args"), Namespace):
                owner = node
                if part != "init_args":
                    node = node.init_args
                    done.append("init_args")
            if isinstance(node, Namespace) and part in vars(node):
                node = node[part]
                done.append(part)
                continue
            if owner is not None and node is owner.init_args:
                options = ", ".join(vars(owner.init_args))
                raise LitMNISTError(
                    f"{search}: {key} is not an option of {owner.class_path} (it takes {options})."
                )
            if done and not isinstance(node, Namespace):
                raise LitMNISTError(
                    f"{search}: {key} is not a fit option: {'.'.join(done)} is {node!r} in this config, "
                    "with no options of its own."
                )
            raise LitMNISTError(f"{search}: {key} is not a fit option.")


def check_values(fit_args: Sequence[str], space: dict[str, Param], search: str | Path) -> None:
    """Parse ``fit`` with each key at its bounds or choices, so a value fit refuses stops the study now."""
    for p in space.values():
        samples = p.choices if p.kind == "categorical" else (p.low, p.high)
        for value in samples:
            if p.kind == "int":
                value = int(value)
            try:
                parse_fit([*fit_args, *overrides({p.key: value})])
            except LitMNISTError as err:
                reason = str(err).removeprefix("fit refuses these arguments: ")
                raise LitMNISTError(
                    f"{search}: {p.key} = {cli_value(value)} is refused by fit: {reason}"
                ) from None


# --------------------------------------------------------------------------------------------- study


def open_rdb_storage(url: str, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, retried while another process creates the same tables.

    Processes started together on an empty database race to create Optuna's tables, and the
    losers get a unique-key or "already exists" error from the database; by the next attempt the
    tables are there.
    """
    import sqlalchemy.exc

    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with (
                warnings.catch_warnings()
            ):  # the heartbeat is chosen knowingly (a dead machine's trial fails)
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            error = err  # the tables may be half created by another process: try again
            time.sleep(0.2 * (attempt + 1))
        except Exception as err:
            error = err
            break
    raise LitMNISTError(f"Cannot open the storage {url}: {str(error).splitlines()[0]}")


def open_study(args: argparse.Namespace, study_dir: Path) -> tuple[optuna.Study, Any, str]:
    """Create or load the study; returns it, the storage object, and where it lives."""
    if args.storage:
        storage: Any = open_rdb_storage(args.storage)
        where = args.storage
    else:
        study_dir.mkdir(parents=True, exist_ok=True)
        journal = study_dir / "journal.log"
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
        where = str(journal)
    if args.sampler in ("grid", "random"):
        # The grid is enqueued as fixed trials (``enqueue_grid``); Optuna's GridSampler stops the
        # study from inside ``tell``, which only works under ``Study.optimize``.
        sampler: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler(seed=args.seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=args.seed)
    if args.pruner == "median":
        pruner: optuna.pruners.BasePruner = optuna.pruners.MedianPruner(
            n_startup_trials=args.n_startup_trials
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        study_name=args.study_name,
        direction=args.direction,
        load_if_exists=True,
    )
    if study.direction.name.lower() != args.direction:
        raise LitMNISTError(
            f"The study {args.study_name} in {where} was created to {study.direction.name.lower()}, "
            f"not {args.direction}: pass the same --direction or another --study_name."
        )
    return study, storage, where


@contextlib.contextmanager
def ask_lock(storage_url: str | None, study_dir: Path, study_name: str) -> Iterator[None]:
    """Serialise "count the trials, then start one" between processes sharing the study.

    A lock file beside the study on one machine (Optuna's ``JournalFileOpenLock``, which breaks a
    lock left by a killed process after its grace period), a PostgreSQL advisory lock across
    machines; other RDB servers get no lock, so their processes may together run a trial more.
    """
    if storage_url and storage_url.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(storage_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            key = sqlalchemy.text("SELECT hashtext(:name)")
            lock_id = conn.execute(key, {"name": f"lit_mnist.tune:{study_name}"}).scalar()
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
        engine.dispose()
        return
    if storage_url and not storage_url.startswith("sqlite"):
        yield
        return
    study_dir.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(study_dir / "ask"), grace_period=30)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def enqueue_grid(study: optuna.Study, grid: dict[str, list[Any]]) -> None:
    """Queue every grid point not already in the study (resumed or shared studies add nothing twice)."""
    keys = list(grid)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not one "already exists" line per point
    try:
        for combo in itertools.product(*(grid[k] for k in keys)):
            study.enqueue_trial(dict(zip(keys, combo, strict=True)), skip_if_exists=True)
    finally:
        optuna.logging.set_verbosity(verbosity)


def fail_dead_trials(study: optuna.Study, storage: Any) -> None:
    """Mark failed the running trials whose process on this machine no longer exists, and stale RDB ones."""
    if isinstance(storage, optuna.storages.RDBStorage):
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or _alive(pid):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), t.number
        )
        storage.set_trial_user_attr(trial_id, "error", f"its process (pid {pid}) stopped mid-trial.")
        study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
        print(f"Trial {t.number} was left running by a process that stopped: marked failed.")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (a child killed but not yet reaped) still answers kill(0).
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return True


@contextlib.contextmanager
def heartbeat(storage: Any, study: optuna.Study, number: int) -> Iterator[None]:
    """Record an RDB storage's heartbeat for the running trial, so other machines can tell it is alive."""
    if not isinstance(storage, optuna.storages.RDBStorage):
        yield
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number
    )
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def one_sentence(err: BaseException) -> str:
    """What went wrong in a trial, in one line."""
    ours = user_message(err)
    if ours is not None:
        return ours
    if isinstance(err, argparse.ArgumentError):
        return f"fit refused its arguments: {_reason(str(err))}"
    text = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def run_trial(
    study: optuna.Study, storage: Any, trial: optuna.Trial, args: argparse.Namespace
) -> tuple[TrialState, float | None]:
    """Fit one trial; returns its final state and value (the state is told to the study here)."""
    values = suggest(trial, args.space)
    shown = ", ".join(f"{k}={cli_value(v)}" for k, v in values.items())
    print(f"\n=== Trial {trial.number} of study {args.study_name}: {shown}", flush=True)
    monitor = _TrialMonitor(args.metric, args.direction == "maximize")
    callbacks: list[L.Callback] = [monitor]
    if args.pruner != "none":
        from optuna_integration import PyTorchLightningPruningCallback

        callbacks.append(PyTorchLightningPruningCallback(trial, monitor=args.metric))
    state, value = TrialState.FAIL, None
    start = time.monotonic()
    try:
        with heartbeat(storage, study, trial.number):
            _TrialCLI(["fit", *args.fit_args, *overrides(values)], args.study_name, trial.number, callbacks)
    except optuna.TrialPruned as err:
        state = TrialState.PRUNED
        trial.set_user_attr("error", str(err))
    except (KeyboardInterrupt, SystemExit):
        trial.set_user_attr("error", "interrupted (Ctrl-C).")
        trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
        study.tell(trial, state=TrialState.FAIL)
        raise KeyboardInterrupt from None
    except Exception as err:
        message = one_sentence(err)
        trial.set_user_attr("error", message)
        print(f"Trial {trial.number} failed: {message}", flush=True)
    else:
        if monitor.best is None:
            trial.set_user_attr("error", f"no validation logged {args.metric}.")
        else:
            state, value = TrialState.COMPLETE, monitor.best
    if monitor.test_acc is not None:
        trial.set_user_attr("test/acc", monitor.test_acc)
    trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    return state, value


# --------------------------------------------------------------------------------------------- results


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def results_rows(
    study: optuna.Study, space: dict[str, Param], metric: str
) -> tuple[list[str], list[list[Any]]]:
    """The table of trials: number, parameters, metric, state, seconds, test accuracy, error."""
    header = ["number", *space, metric, "state", "seconds", "test/acc", "error"]
    rows = []
    for t in study.get_trials(deepcopy=False, states=STARTED):
        rows.append(
            [
                t.number,
                *(t.params.get(k) for k in space),
                t.value,
                t.state.name,
                t.user_attrs.get("seconds"),
                t.user_attrs.get("test/acc"),
                t.user_attrs.get("error", ""),
            ]
        )
    return header, rows


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [header, *[[_fmt(v) for v in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))


def write_best(config: Namespace, parser: Any, path: Path, study_name: str) -> None:
    """``best.yaml``: the full ``fit`` config of the best parameters, logging to ``<study>-best``."""
    text = parser.dump(config, skip_none=False)
    fit = yaml.safe_load(text)["fit"]
    fit.pop("config", None)
    logger = fit.get("trainer", {}).get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
        logger["init_args"]["name"], logger["init_args"]["version"] = f"{study_name}-best", None
    header = f"# The best trial of study {study_name}: python -m lit_mnist fit --config {path}\n"
    path.write_text(header + yaml.safe_dump(fit, sort_keys=False))


def report(args: argparse.Namespace, study: optuna.Study, study_dir: Path) -> None:
    """Print the trials, write ``trials.csv`` and ``best.yaml``, and print the best trial."""
    header, rows = results_rows(study, args.space, args.metric)
    print(f"\nStudy {args.study_name}: {len(rows)} trials")
    print_table(header, rows)
    study_dir.mkdir(parents=True, exist_ok=True)
    with (study_dir / "trials.csv").open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    print(f"Wrote {study_dir / 'trials.csv'}")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        print("No trial completed: no best.yaml.")
        return
    best = study.best_trial
    config, parser = parse_fit([*args.fit_args, *overrides(best.params)])
    write_best(config, parser, study_dir / "best.yaml", args.study_name)
    shown = ", ".join(f"{k}={cli_value(v)}" for k, v in best.params.items())
    print(f"Best trial {best.number}: {args.metric} {best.value:.4f} with {shown}")
    acc = best.user_attrs.get("test/acc")
    if acc is not None:
        print(f"Best trial's test accuracy {100 * acc:.2f} %")
    print(f"Wrote {study_dir / 'best.yaml'}: python -m lit_mnist fit --config {study_dir / 'best.yaml'}")


# --------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="lit_mnist tune",
        description=(
            "Search hyper-parameters with Optuna; each trial is a fit. Every argument tune does not "
            "know (--config, --trainer.max_epochs, ...) is passed to every trial's fit."
        ),
    )
    parser.add_argument("--search", required=True, help="search-space YAML (configs/search/*.yaml)")
    parser.add_argument(
        "--n_trials", type=int, help="trials in the study, all processes together (default 20)"
    )
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe")
    parser.add_argument("--pruner", choices=PRUNERS, default="median")
    parser.add_argument(
        "--n_startup_trials",
        type=int,
        default=5,
        help="the median pruner prunes no trial before this many have finished (5)",
    )
    parser.add_argument(
        "--storage", help="an RDB URL (sqlite:///..., postgresql://...); default a journal file"
    )
    parser.add_argument("--study_name", help="default: tune_<config name>")
    parser.add_argument("--timeout", type=float, help="start no trial after this many seconds")
    parser.add_argument("--metric", default="val/acc")
    parser.add_argument("--direction", choices=("maximize", "minimize"), default=None)
    parser.add_argument("--seed", type=int, help="the sampler's seed (default: random)")
    return parser


def main(argv: Sequence[str]) -> None:
    """``python -m lit_mnist tune ARGS``: errors the user can fix raise ``LitMNISTError``."""
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return
    args, fit_args = build_parser().parse_known_args(list(argv))
    if args.n_trials is not None and args.n_trials < 1:
        raise LitMNISTError(f"--n_trials must be 1 or more, got {args.n_trials}.")
    if args.n_startup_trials < 0:
        raise LitMNISTError(f"--n_startup_trials must be 0 or more, got {args.n_startup_trials}.")
    if args.timeout is not None and args.timeout <= 0:
        raise LitMNISTError(f"--timeout must be above 0 seconds, got {args.timeout}.")
    args.direction = args.direction or ("minimize" if args.metric.endswith("loss") else "maximize")
    args.fit_args = fit_args
    args.space = load_space(args.search)
    config, _ = parse_fit(fit_args)
    logger = config.fit.trainer.logger
    init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
    if not isinstance(init_args, Namespace) or not {"save_dir", "name", "version"} <= set(init_args.keys()):
        raise LitMNISTError("tune logs every trial with TensorBoard: leave --trainer.logger at its default.")
    check_space(args.space, config, args.search)
    check_values(fit_args, args.space, args.search)
    args.grid = grid_space(args.space) if args.sampler == "grid" else None
    n_trials = args.n_trials or 20
    if args.grid is not None:
        size = math.prod(len(v) for v in args.grid.values())
        if args.n_trials is None or args.n_trials > size:
            n_trials = size
    if args.study_name is None:
        files = config.fit.get("config") or []
        args.study_name = f"tune_{Path(str(files[0])).stem if files else 'study'}"
    study_dir = Path(init_args.save_dir) / args.study_name
    study, storage, where = open_study(args, study_dir)
    print(
        f"Study {args.study_name} in {where}: {n_trials} trials, {args.sampler} sampler, {args.metric} "
        f"({args.direction}); trials log to {study_dir}/trial_<n>/"
    )
    start = time.monotonic()
    interrupted = False
    try:
        while args.timeout is None or time.monotonic() - start < args.timeout:
            with ask_lock(args.storage, study_dir, args.study_name):
                fail_dead_trials(study, storage)
                if args.grid is not None:
                    enqueue_grid(study, args.grid)
                if len(study.get_trials(deepcopy=False, states=STARTED)) >= n_trials:
                    break
                trial = study.ask()
                trial.set_user_attr("host", socket.gethostname())
                trial.set_user_attr("pid", os.getpid())
            run_trial(study, storage, trial, args)
    except KeyboardInterrupt:
        interrupted = True
        print("\nInterrupted: the running trial is marked failed.", file=sys.stderr)
    report(args, study, study_dir)
    if interrupted:
        raise SystemExit(130)
