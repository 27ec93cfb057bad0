"""``python -m lit_mnist tune``: an Optuna search over hyper-parameters, each trial an ordinary fit.

Every fit option (--config, --trainer.max_epochs, ...) sets the config that every trial starts from; tune's
own options come last. The trials run in Optuna's study.optimize, each a fit by the project's CLI (the same
checks, checkpoints and TensorBoard logs) under <save_dir>/<study_name>/trial_<n>/, pruned by
optuna-integration's Lightning callback.
"""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import lightning as L
import yaml
from jsonargparse import Namespace
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from lit_mnist.checkpoint import run_name
from lit_mnist.cli import LitMNISTCLI, refusal
from lit_mnist.errors import LitMNISTError, user_message
from lit_mnist.internals import journal_storage_with_heartbeat

#: Seconds an RDB server has to accept a connection, unless the storage URL sets ``connect_timeout``.
CONNECT_TIMEOUT_S = 5
#: The fields each type of search-space entry takes besides ``type``.
RANGE = {"low", "high", "log", "step"}
FIELDS = {"float": RANGE, "int": RANGE, "categorical": {"choices"}, "grid": {"values"}}


@dataclass
class Options:
    """Tune's own options; every other option is fit's, the same for every trial.

    Args:
        search: The search space: a YAML file mapping fit's dotted keys (data.batch_size,
            model.init_args.optimizer.init_args.lr) to {type: float|int, low, high[, log, step]},
            {type: categorical, choices: [...]} or {type: grid, values: [...]}.
        n_trials: How many trials must finish, complete or pruned (failed ones do not count), by all the
            workers of the study together: 20, or the grid's size under --sampler grid. Each worker stops once
            that many have finished, so workers racing at the end may finish a few more.
        sampler: tpe, random, or grid (every combination of the grid and categorical values and the steps of
            int ranges, once).
        pruner: median stops a trial whose metric after an epoch is worse than the median of the earlier
            trials at that epoch; none runs every trial to the end.
        n_startup_trials: The median pruner prunes no trial before this many have completed.
        storage: An RDB URL (sqlite:///study.db; postgresql://user@host/db for workers on several machines);
            by default the journal file <save_dir>/<study_name>/journal.log, which processes on one machine
            can share.
        study_name: The study to create or resume (default tune_<first config's name>). A study keeps its
            search space, metric and direction: others need a new name.
        timeout: Start no trial after this many seconds.
        metric: The logged metric that scores a trial: its best value over the epochs.
        direction: maximize or minimize the metric (default: minimize a loss, maximize the rest).
        seed: The sampler's seed (default: a random one).
        heartbeat_interval: Seconds between a running trial's heartbeats. A trial with none for twice as long
            (its process was killed, its machine died) is marked failed and queued again by the next worker
            that starts a trial.
    """

    search: Path
    n_trials: PositiveInt | None = None
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = "median"
    n_startup_trials: NonNegativeInt = 5
    storage: str | None = None
    study_name: str | None = None
    timeout: PositiveFloat | None = None
    metric: str = "val/acc"
    direction: Literal["maximize", "minimize"] | None = None
    seed: int | None = None
    heartbeat_interval: PositiveInt = 10


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The entries of the search-space file ``path``, or ``LitMNISTError`` saying what is wrong."""
    try:
        space = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise LitMNISTError(f"Cannot read the search space {path}: {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise LitMNISTError(f"The search space {path} is not valid YAML: {first_line(err)}.") from None
    if not isinstance(space, dict) or not space:
        raise LitMNISTError(f"The search space {path} is empty: give at least one key: {{type: ..., ...}}.")
    for key, spec in space.items():
        if problem := _problem(spec):
            raise LitMNISTError(f"{path}: {key} {problem}.")
    return {str(key): spec for key, spec in space.items()}


def _problem(spec: Any) -> str | None:
    """What is wrong with one search-space entry, if anything."""
    if not isinstance(spec, dict) or spec.get("type") not in FIELDS:
        return f"needs a mapping with type: one of {', '.join(FIELDS)}"
    kind, unknown = spec["type"], sorted(set(spec) - {"type", *FIELDS[spec["type"]]})
    if unknown:
        return f"has {', '.join(unknown)}, which a {kind} entry does not take"
    if kind in ("categorical", "grid"):
        return None if values_of(spec) else f"needs a non-empty list of {', '.join(FIELDS[kind])}"
    number, what = (int, "whole number") if kind == "int" else (int | float, "number")
    for field in ("low", "high"):
        if isinstance(spec.get(field), bool) or not isinstance(spec.get(field), number):
            return f"needs {field}: a {what}"
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log")
    if low >= high:
        return f"has an empty or inverted range: low {low} must be below high {high}"
    if log and low <= 0:
        return f"has log: true, which needs low above 0 (got {low})"
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        return f"needs step: a {what} above 0"
    return "has both log and step, which Optuna does not combine" if step and log else None


def values_of(spec: dict[str, Any]) -> list[Any]:
    """A categorical or grid entry's values as written ([] for a range, or where they are not a list)."""
    values = spec.get("choices", spec.get("values"))
    return values if isinstance(values, list) else []


def choices(spec: dict[str, Any]) -> list[Any]:
    """``values_of(spec)`` as Optuna stores them: lists and mappings as their JSON text."""
    return [v if isinstance(v, bool | int | float | str | None) else json.dumps(v) for v in values_of(spec)]


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's value of every key, as Optuna stores it (``choices``)."""
    values = {}
    for key, s in space.items():
        log, step = bool(s.get("log")), s.get("step")
        if s["type"] == "float":
            values[key] = trial.suggest_float(key, s["low"], s["high"], log=log, step=step)
        elif s["type"] == "int":
            values[key] = trial.suggest_int(key, s["low"], s["high"], log=log, step=step or 1)
        else:
            values[key] = trial.suggest_categorical(key, choices(s))
    return values


def fit_values(space: dict[str, dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's values of the space's keys as ``fit`` takes them (JSON-text choices decoded)."""
    decoded = {key: dict(zip(choices(s), values_of(s), strict=True)) for key, s in space.items()}
    return {key: decoded[key].get(params[key], params[key]) for key in space}


def text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def shown(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={text(value)}" for key, value in values.items())


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


class TrialCLI(LitMNISTCLI):
    """The ``fit`` of one trial, with the trial's callbacks (which hold the trial, so no config can)."""

    def __init__(self, config: Namespace, callbacks: list[L.Callback]) -> None:
        self.trial_callbacks = callbacks
        super().__init__(args={"fit": config})

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self.trial_callbacks)
        return trainer


class Search(LitMNISTCLI):
    """A search: fit's options and ``Options`` in one parser (which builds nothing), checked before any trial,
    and the study that runs the trials.

    Args:
        args: The command line after ``tune``.
    """

    def __init__(self, args: Sequence[str]) -> None:
        super().__init__(args=list(args), run=False)
        self.options = o = Options(**{f.name: self.config[f.name] for f in fields(Options)})
        self.space = load_space(o.search)
        logger = self.config.get("trainer.logger.init_args")
        if not isinstance(logger, Namespace) or not {"save_dir", "name", "version"} <= set(vars(logger)):
            raise LitMNISTError(
                "tune logs every trial with TensorBoard: leave --trainer.logger at its default."
            )
        self.paths = {key: self.config_path(key) for key in self.space}
        self.grid = grid_space(self.space) if o.sampler == "grid" else None
        grid_size = math.prod(map(len, self.grid.values())) if self.grid else math.inf
        self.n_trials = min(o.n_trials or 20, grid_size)
        o.direction = o.direction or ("minimize" if o.metric.endswith("loss") else "maximize")
        config_name = run_name(self.config.get("config") or [], self.config.get("model.class_path"))
        o.study_name = o.study_name or f"tune_{config_name}"
        self.study_dir = Path(logger.save_dir) / o.study_name

    def init_parser(self, **kwargs: Any) -> Any:
        return super().init_parser(**{**kwargs, "prog": "lit_mnist tune", "description": __doc__})

    def add_arguments_to_parser(self, parser: Any) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(Options)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        # seed_everything is for every trial's fit to apply; this process has nothing to seed.
        self.trial_seed, self.config.seed_everything = self.config.seed_everything, False

    def instantiate_classes(self) -> None:
        self.config.seed_everything = self.trial_seed

    def config_path(self, key: str) -> str:
        """``key``'s place in the fit config (where ``init_args`` may be left out, as on the command line),
        once fit's parser takes each of its choices or bounds."""
        node, path, owner, search = self.config, [], None, self.options.search
        for part in key.split("."):
            if isinstance(node, Namespace) and "class_path" in node:
                owner = node
                if part != "init_args":
                    node, path = node.get("init_args") or Namespace(), [*path, "init_args"]
            if not isinstance(node, Namespace) or part not in vars(node):
                if owner is not None and node is owner.get("init_args"):
                    takes = f"an option of {owner.class_path} (it takes {', '.join(vars(node))})"
                    raise LitMNISTError(f"{search}: {key} is not {takes}.")
                raise LitMNISTError(f"{search}: {key} is not a fit option.")
            node, path = node[part], [*path, part]
        spec = self.space[key]
        for value in values_of(spec) or [spec["low"], spec["high"]]:
            config = self.config.clone()
            config[".".join(path)] = value
            try:
                self.parser.validate(config)
            except (TypeError, ValueError, KeyError) as err:
                why = (refusal(str(err)) or ("", first_line(err)))[1]
                raise LitMNISTError(f"{search}: {key} = {text(value)} is refused by fit: {why}") from None
        return ".".join(path)

    def fit_config(self, params: dict[str, Any], name: str, version: str | None) -> Namespace:
        """The ``fit`` config of a trial's ``params``, logging to ``name/version`` and checkpointing the best
        by ``--metric``."""
        fit = self.config.clone()
        for option in ("config", *(f.name for f in fields(Options))):
            fit.pop(option, None)
        for key, value in fit_values(self.space, params).items():
            fit[self.paths[key]] = value
        fit["trainer.logger.init_args.name"], fit["trainer.logger.init_args.version"] = name, version
        mode = "max" if self.options.direction == "maximize" else "min"
        fit["checkpoint.monitor"], fit["checkpoint.mode"] = self.options.metric, mode
        return fit

    def objective(self, trial: Any) -> float:
        """Fit one trial; its best metric is the best checkpoint's. Test accuracy or error go to the study."""
        from optuna import TrialPruned
        from optuna_integration import PyTorchLightningPruningCallback

        o, values = self.options, suggest(trial, self.space)
        print(f"\n=== Trial {trial.number} of study {o.study_name}: {shown(values)}", flush=True)
        pruning = [PyTorchLightningPruningCallback(trial, o.metric)] if o.pruner == "median" else []
        try:
            fit = TrialCLI(self.fit_config(values, o.study_name, f"trial_{trial.number}"), pruning)
            score = fit.trainer.checkpoint_callback.best_model_score
            if score is None:
                raise LitMNISTError(f"no validation logged {o.metric}.")
        except TrialPruned:
            raise  # results_rows says at which epoch
        except (KeyboardInterrupt, SystemExit):  # Lightning ends a fit on Ctrl-C with SystemExit
            trial.set_user_attr("error", "interrupted (Ctrl-C).")
            raise KeyboardInterrupt from None
        except Exception as err:
            error = (user_message(err) or f"{type(err).__name__}: {first_line(err)}").splitlines()[0]
            trial.set_user_attr("error", error)
            print(f"Trial {trial.number} failed: {error}", flush=True)
            raise
        if "test/acc" in fit.trainer.callback_metrics:
            trial.set_user_attr("test/acc", float(fit.trainer.callback_metrics["test/acc"]))
        return float(score)

    def optimize(self) -> None:
        """Create or resume the study, run trials until ``n_trials`` have finished, and report."""
        try:
            import optuna  # only here: Optuna is an optional extra
        except ImportError:
            raise LitMNISTError("tune needs Optuna: pip install 'lit_mnist[tune]'.") from None
        from optuna.trial import TrialState

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # tune says how each trial ended itself
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
        o, journal = self.options, self.study_dir / "journal.log"

        def on_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            what = "was left running by a process that stopped: marked failed. It runs again."
            print(f"Trial {trial.number} {what}")
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, trial)

        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
        grid = self.grid and optuna.samplers.GridSampler(self.grid, o.seed)
        median = o.pruner == "median"
        study = optuna.create_study(
            storage=open_storage(o.storage, journal, o.heartbeat_interval, on_stale), study_name=o.study_name,
            sampler=grid or samplers[o.sampler](seed=o.seed), direction=o.direction, load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(o.n_startup_trials) if median else optuna.pruners.NopPruner(),
        )  # fmt: skip
        where = o.storage or str(journal)
        settings = json.loads(json.dumps({"--metric": o.metric, "--direction": o.direction, **self.space}))
        stored = study.user_attrs.get("lit_mnist:search")
        if stored is None:
            study.set_user_attr("lit_mnist:search", settings)
        elif differ := sorted(k for k in stored.keys() | settings.keys() if stored.get(k) != settings.get(k)):
            raise LitMNISTError(
                f"The study {o.study_name} in {where} was run with another {', '.join(differ)}: run it "
                "with the same search space, --metric and --direction, or start a new study with "
                "--study_name NAME."
            )
        optuna.storages.fail_stale_trials(study)
        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        finished = len(study.get_trials(deepcopy=False, states=counted))
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        print(
            f"Study {o.study_name} in {where}: {self.n_trials} trials ({finished} finished), {o.sampler} "
            f"sampler, {o.metric} ({o.direction}); trials log to {self.study_dir}/trial_<n>/"
        )
        if finished < self.n_trials and not (grid and grid.is_exhausted(study) and not waiting):
            try:
                study.optimize(
                    self.objective, n_trials=self.n_trials - finished, timeout=o.timeout, catch=(Exception,),
                    callbacks=[optuna.study.MaxTrialsCallback(self.n_trials, states=counted)],
                )  # fmt: skip
            except KeyboardInterrupt:
                print("\nInterrupted: the running trial is marked failed.", flush=True)
                self.report(study, interrupted=True)
                raise SystemExit(130) from None
        self.report(study)

    def report(self, study: Any, interrupted: bool = False) -> None:
        """Print the trials, write ``trials.csv`` and the best trial's ``best.yaml``; no trial complete is an
        error (unless the study was interrupted) that names the most common failure."""
        o, table = self.options, self.study_dir / "trials.csv"
        header, rows = results_rows(study, list(self.space), o.metric)
        cells = [
            [f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v) for v in r] for r in rows
        ]
        widths = [max(map(len, column)) for column in zip(header, *cells, strict=True)]
        lines = ["| " + " | ".join(map(str.ljust, row, widths)) + " |" for row in [header, *cells]]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        print(f"\nStudy {o.study_name}: {len(rows)} trials", *lines, sep="\n")
        table.parent.mkdir(parents=True, exist_ok=True)
        with table.open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"Wrote {table}")
        if not any(row[header.index("state")] == "COMPLETE" for row in rows):
            if interrupted:
                return
            why = "."
            for error, count in Counter(row[-1] for row in rows if row[-1]).most_common(1):
                why = f"; the most common failure ({count} of {len(rows)}): {error}"
            raise LitMNISTError(f"No trial of study {o.study_name} completed, so there is no best.yaml{why}")
        best, path = study.best_trial, self.study_dir / "best.yaml"
        config = self.fit_config(best.params, f"{o.study_name}-best", None)
        header = f"# The best trial of study {o.study_name}: python -m lit_mnist fit --config {path}\n"
        path.write_text(header + self.parser.dump(config, skip_validation=True))
        print(f"Best trial {best.number}: {o.metric} {best.value:.4f} with {shown(best.params)}")
        if "test/acc" in best.user_attrs:
            print(f"Best trial's test accuracy {100 * best.user_attrs['test/acc']:.2f} %")
        print(f"Wrote {path}: python -m lit_mnist fit --config {path}")


def grid_space(space: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The grid ``GridSampler`` walks: the choices, or every step of an int range (not float ranges)."""
    grid = {}
    for key, spec in space.items():
        if spec["type"] == "float" or spec.get("log"):
            what = f"the {spec['type']} range {key}"
            raise LitMNISTError(f"--sampler grid cannot walk {what}: give it {{type: grid, values: [...]}}.")
        steps = spec["type"] == "int" and range(spec["low"], spec["high"] + 1, spec.get("step") or 1)
        grid[key] = list(steps) if steps else choices(spec)
    return grid


def open_storage(url: str | None, journal: Path, heartbeat_interval: int, on_stale: Any) -> Any:
    """The journal file, or the RDB storage at ``url`` with a connect timeout; both with heartbeats."""
    import optuna
    import sqlalchemy

    beats = {"heartbeat_interval": heartbeat_interval, "grace_period": 2 * heartbeat_interval}
    if url is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return journal_storage_with_heartbeat(str(journal), **beats, stale_trial_callback=on_stale)
    shown_url = url
    try:
        parsed = sqlalchemy.engine.make_url(url)
        shown_url = parsed.render_as_string(hide_password=True)
        remote = parsed.get_backend_name() in ("postgresql", "mysql", "mariadb")
        timeout = remote and "connect_timeout" not in parsed.query
        engine = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S} if timeout else {}}
        for attempt in range(1, 6):
            try:
                return optuna.storages.RDBStorage(
                    url, engine, heartbeat_stale_trial_callback=on_stale, **beats
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                if attempt == 5:
                    raise
                time.sleep(0.2 * attempt)  # processes starting together race to create Optuna's tables
    except Exception as err:
        raise LitMNISTError(f"Cannot open the storage {shown_url}: {first_line(err)}") from None


def results_rows(study: Any, keys: Sequence[str], metric: str) -> tuple[list[str], list[list[Any]]]:
    """The table of trials; its parameter columns are ``keys`` and any other a trial of the study has."""
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys([*keys, *(k for t in trials for k in t.params)]))
    rows = []
    for t in trials:
        # A trial failed without an error was failed by the heartbeat check: its process died, when unknown.
        stopped = t.state.name == "FAIL" and "error" not in t.user_attrs
        pruned = t.state.name == "PRUNED" and f"Trial was pruned at epoch {t.last_step}."
        error = t.user_attrs.get("error") or pruned or ("its process stopped mid-trial." if stopped else "")
        seconds = None if stopped or not t.duration else round(t.duration.total_seconds(), 1)
        row = [t.number, *(t.params.get(k) for k in params), t.value, t.state.name]
        rows.append([*row, seconds, t.user_attrs.get("test/acc"), error])
    return ["number", *params, metric, "state", "seconds", "test/acc", "error"], rows


def main(args: Sequence[str]) -> None:
    """``python -m lit_mnist tune ARGS``."""
    Search(args).optimize()
