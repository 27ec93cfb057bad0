"""``python -m lit_mnist tune``: an Optuna search over hyper-parameters, each trial an ordinary fit.

Every fit option (--config, --trainer.max_epochs, ...) sets the config that every trial starts
from; tune's own options come last. The trials run in Optuna's study.optimize, each a fit by the
project's CLI (the same checks, checkpoints and TensorBoard logs) under
<save_dir>/<study_name>/trial_<n>/, pruned by optuna-integration's Lightning callback. A study
keeps its search space, metric and direction. Workers sharing a study (processes on one journal
file, machines on one RDB database) each stop once --n_trials trials of the study have finished;
a trial whose worker died is marked failed by Optuna's heartbeat check and queued again.
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
from lit_mnist.cli import LitMNISTCLI
from lit_mnist.errors import LitMNISTError, user_message
from lit_mnist.internals import journal_storage_with_heartbeat

#: The fields each type of search-space entry takes.
FIELDS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
    "grid": {"type", "values"},
}
#: Seconds an RDB server has to accept a connection, unless the storage URL sets ``connect_timeout``.
CONNECT_TIMEOUT_S = 5


@dataclass
class Options:
    """Tune's own options; every other option is fit's, the same for every trial.

    Args:
        search: The search space: a YAML file mapping fit's dotted keys (data.batch_size,
            model.init_args.optimizer.init_args.lr) to {type: float|int, low, high[, log, step]},
            {type: categorical, choices: [...]} or {type: grid, values: [...]}.
        n_trials: How many trials must finish, complete or pruned (failed ones do not count), by all
            the workers of the study together: 20, or the grid's size under --sampler grid. Each
            worker stops once that many have finished, so workers racing at the end may finish a
            few more.
        sampler: tpe, random, or grid (every combination of the grid and categorical values and the
            steps of int ranges, once).
        pruner: median stops a trial whose metric after an epoch is worse than the median of the
            earlier trials at that epoch; none runs every trial to the end.
        n_startup_trials: The median pruner prunes no trial before this many have completed.
        storage: An RDB URL (sqlite:///study.db; postgresql://user@host/db for workers on several
            machines); by default the journal file <save_dir>/<study_name>/journal.log, which
            processes on one machine can share.
        study_name: The study to create or resume (default tune_<first config's name>). A study
            keeps its search space, metric and direction: others need a new name.
        timeout: Start no trial after this many seconds.
        metric: The logged metric that scores a trial: its best value over the epochs.
        direction: maximize or minimize the metric (default: minimize a loss, maximize the rest).
        seed: The sampler's seed (default: a random one).
        heartbeat_interval: Seconds between a running trial's heartbeats. A trial with none for
            twice as long (its process was killed, its machine died) is marked failed and queued
            again by the next worker that starts a trial.
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


# --------------------------------------------------------------------------------------------- space


def load_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """The entries of the search-space file ``path``, or ``LitMNISTError`` saying what is wrong."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise LitMNISTError(f"Cannot read the search space {path}: {err.strerror}.") from None
    except yaml.YAMLError as err:
        raise LitMNISTError(
            f"The search space {path} is not valid YAML: {str(err).splitlines()[0]}."
        ) from None
    if not isinstance(raw, dict) or not raw:
        raise LitMNISTError(f"The search space {path} is empty: give at least one key: {{type: ..., ...}}.")
    for key, spec in raw.items():
        problem = _problem(spec)
        if problem:
            raise LitMNISTError(f"{path}: {key} {problem}.")
    return {str(key): spec for key, spec in raw.items()}


def _problem(spec: Any) -> str | None:
    """What is wrong with one search-space entry, if anything."""
    if not isinstance(spec, dict) or spec.get("type") not in FIELDS:
        return f"needs a mapping with type: one of {', '.join(FIELDS)}"
    kind, unknown = spec["type"], sorted(set(spec) - FIELDS[spec["type"]])
    if unknown:
        return f"has {', '.join(unknown)}, which a {kind} entry does not take"
    if kind in ("categorical", "grid"):
        field = "choices" if kind == "categorical" else "values"
        return (
            None
            if isinstance(spec.get(field), list) and spec[field]
            else f"needs a non-empty list of {field}"
        )
    for field in ("low", "high"):
        value = spec.get(field)
        if isinstance(value, bool) or not isinstance(value, int if kind == "int" else int | float):
            return f"needs {field}: a {'whole number' if kind == 'int' else 'number'}"
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log")
    if low >= high:
        return f"has an empty or inverted range: low {low} must be below high {high}"
    if log and low <= 0:
        return f"has log: true, which needs low above 0 (got {low})"
    if step is not None and (isinstance(step, bool) or not isinstance(step, type(low) | int) or step <= 0):
        return f"needs step: a {'whole number' if kind == 'int' else 'number'} above 0"
    return "has both log and step, which Optuna does not combine" if step and log else None


def values_of(spec: dict[str, Any]) -> list[Any]:
    """A categorical or grid entry's values as written ([] for a range)."""
    return spec.get("choices", spec.get("values", []))


def choices(spec: dict[str, Any]) -> list[Any]:
    """``values_of(spec)`` as Optuna stores them: lists and mappings as their JSON text."""
    return [v if isinstance(v, bool | int | float | str | None) else json.dumps(v) for v in values_of(spec)]


def grid_space(space: dict[str, dict[str, Any]]) -> dict[str, list[Any]]:
    """The grid ``GridSampler`` walks: the choices, or every step of an int range (not float ranges)."""
    grid = {}
    for key, spec in space.items():
        if spec["type"] == "float" or spec.get("log"):
            raise LitMNISTError(
                f"--sampler grid cannot walk the {spec['type']} range {key}: "
                "give it {type: grid, values: [...]}."
            )
        steps = spec["type"] == "int" and range(spec["low"], spec["high"] + 1, spec.get("step") or 1)
        grid[key] = list(steps) if steps else choices(spec)
    return grid


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The trial's value of every key, as Optuna stores it (``choices``)."""
    values = {}
    for key, s in space.items():
        if s["type"] in ("float", "int"):
            number = trial.suggest_float if s["type"] == "float" else trial.suggest_int
            step = s.get("step") or (1 if s["type"] == "int" else None)
            values[key] = number(key, s["low"], s["high"], log=bool(s.get("log")), step=step)
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


# --------------------------------------------------------------------------------------------- fit


class TuneCLI(LitMNISTCLI):
    """``fit``'s options and ``Options`` in one parser (LightningCLI's ``run=False``); it builds nothing."""

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


class TrialCLI(LitMNISTCLI):
    """The ``fit`` of one trial, with the trial's callbacks (which hold the trial, so no config can)."""

    def __init__(self, config: Namespace, callbacks: list[L.Callback]) -> None:
        self.trial_callbacks = callbacks
        super().__init__(args={"fit": config})

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend(self.trial_callbacks)
        return trainer


def config_path(key: str, config: Namespace, search: Path) -> str:
    """``key``'s place in the fit config, where ``init_args`` may be left out as on the command line."""
    node, path, owner = config, [], None
    for part in key.split("."):
        if isinstance(node, Namespace) and "class_path" in node:
            owner = node
            if part != "init_args":
                node, path = node.get("init_args") or Namespace(), [*path, "init_args"]
        if not isinstance(node, Namespace) or part not in vars(node):
            if owner is not None and node is owner.get("init_args"):
                takes = ", ".join(vars(node))
                raise LitMNISTError(
                    f"{search}: {key} is not an option of {owner.class_path} (it takes {takes})."
                )
            raise LitMNISTError(f"{search}: {key} is not a fit option.")
        node, path = node[part], [*path, part]
    return ".".join(path)


class Search:
    """A search checked against fit's config before any trial: its options, space and trials' configs.

    Args:
        args: The command line after ``tune``.
    """

    def __init__(self, args: Sequence[str]) -> None:
        cli = TuneCLI(args=list(args), run=False)
        self.config, self.parser = cli.config, cli.parser
        self.options = o = Options(**{f.name: self.config[f.name] for f in fields(Options)})
        self.space = load_space(o.search)
        logger = self.config.trainer.logger
        logger = logger.get("init_args") if isinstance(logger, Namespace) else None
        if not isinstance(logger, Namespace) or not {"save_dir", "name", "version"} <= set(vars(logger)):
            raise LitMNISTError(
                "tune logs every trial with TensorBoard: leave --trainer.logger at its default."
            )
        self.paths = {key: config_path(key, self.config, o.search) for key in self.space}
        for key, spec in self.space.items():
            for value in values_of(spec) or [spec["low"], spec["high"]]:
                self.check(key, value)
        self.grid = grid_space(self.space) if o.sampler == "grid" else None
        self.n_trials = min(
            o.n_trials or 20, math.prod(map(len, self.grid.values())) if self.grid else math.inf
        )
        o.direction = o.direction or ("minimize" if o.metric.endswith("loss") else "maximize")
        model = self.config.model.get("class_path") if isinstance(self.config.model, Namespace) else None
        o.study_name = o.study_name or f"tune_{run_name(self.config.get('config') or [], model)}"
        self.study_dir = Path(logger.save_dir) / o.study_name

    def check(self, key: str, value: Any) -> None:
        """Refuse, in one sentence, a value of ``key`` that fit's parser refuses."""
        config = self.config.clone()
        config[self.paths[key]] = value
        try:
            self.parser.validate(config)
        except (TypeError, ValueError, KeyError) as err:
            lines = [line.strip(" -") for line in str(err).splitlines() if "Expected" in line] or ["invalid."]
            reason = next((line for line in lines if line.startswith("Expected a <")), lines[-1])
            raise LitMNISTError(
                f"{self.options.search}: {key} = {text(value)} is refused by fit: {reason}"
            ) from None

    def fit_config(self, params: dict[str, Any], name: str, version: str | None) -> Namespace:
        """The ``fit`` config of a trial's ``params``, logging to ``name/version`` and checkpointing the best
        by ``--metric``."""
        fit = self.config.clone()
        for field in ("config", *(f.name for f in fields(Options))):
            fit.pop(field, None)
        for key, value in fit_values(self.space, params).items():
            fit[self.paths[key]] = value
        fit["trainer.logger.init_args.name"], fit["trainer.logger.init_args.version"] = name, version
        mode = "max" if self.options.direction == "maximize" else "min"
        fit["checkpoint.monitor"], fit["checkpoint.mode"] = self.options.metric, mode
        return fit

    def objective(self, trial: Any) -> float:
        """Fit one trial; its best metric is the best checkpoint's. Seconds, test accuracy and error go to the
        study."""
        from optuna import TrialPruned
        from optuna_integration import PyTorchLightningPruningCallback

        o, values = self.options, suggest(trial, self.space)
        print(f"\n=== Trial {trial.number} of study {o.study_name}: {shown(values)}", flush=True)
        pruning = [PyTorchLightningPruningCallback(trial, o.metric)] if o.pruner == "median" else []
        config = self.fit_config(values, o.study_name, f"trial_{trial.number}")
        start, error = time.monotonic(), None
        try:
            fit = TrialCLI(config, pruning)
        except TrialPruned as err:
            error = str(err)
            raise
        except (KeyboardInterrupt, SystemExit):  # Lightning ends a fit on Ctrl-C with SystemExit
            error = "interrupted (Ctrl-C)."
            raise KeyboardInterrupt from None
        except Exception as err:
            first = (str(err).strip().splitlines() or [""])[0]
            error = (user_message(err) or f"{type(err).__name__}: {first}").splitlines()[0]
            print(f"Trial {trial.number} failed: {error}", flush=True)
            raise
        finally:
            trial.set_user_attr("seconds", round(time.monotonic() - start, 1))
            if error is not None:
                trial.set_user_attr("error", error)
        if "test/acc" in fit.trainer.callback_metrics:
            trial.set_user_attr("test/acc", float(fit.trainer.callback_metrics["test/acc"]))
        score = fit.trainer.checkpoint_callback.best_model_score
        if score is None:
            raise LitMNISTError(f"no validation logged {o.metric}.")
        return float(score)

    def run(self) -> None:
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

        storage = open_storage(o.storage, journal, o.heartbeat_interval, on_stale)
        samplers = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler}
        grid = self.grid and optuna.samplers.GridSampler(self.grid, o.seed)
        sampler = grid or samplers[o.sampler](seed=o.seed)
        median = o.pruner == "median"
        pruner = optuna.pruners.MedianPruner(o.n_startup_trials) if median else optuna.pruners.NopPruner()
        study = optuna.create_study(
            storage=storage, sampler=sampler, pruner=pruner, study_name=o.study_name, direction=o.direction,
            load_if_exists=True,
        )  # fmt: skip
        where = o.storage or str(journal)
        check_settings(study, {"--metric": o.metric, "--direction": o.direction, **self.space}, where)
        optuna.storages.fail_stale_trials(study)
        counted = (TrialState.COMPLETE, TrialState.PRUNED)
        finished = len(study.get_trials(deepcopy=False, states=counted))
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        print(
            f"Study {o.study_name} in {where}: {self.n_trials} trials ({finished} finished), {o.sampler} "
            f"sampler, {o.metric} ({o.direction}); trials log to {self.study_dir}/trial_<n>/"
        )
        interrupted = False
        if finished < self.n_trials and not (grid and grid.is_exhausted(study) and not waiting):
            try:
                study.optimize(
                    self.objective, n_trials=self.n_trials - finished, timeout=o.timeout, catch=(Exception,),
                    callbacks=[optuna.study.MaxTrialsCallback(self.n_trials, states=counted)],
                )  # fmt: skip
            except KeyboardInterrupt:
                interrupted = True
                print("\nInterrupted: the running trial is marked failed.", flush=True)
        self.report(study, interrupted)
        if interrupted:
            raise SystemExit(130)

    def report(self, study: Any, interrupted: bool) -> None:
        """Print the trials, write ``trials.csv`` and the best trial's ``best.yaml``; no trial complete is an
        error (unless the study was interrupted) that names the most common failure."""
        o = self.options
        header, rows = results_rows(study, list(self.space), o.metric)
        print(f"\nStudy {o.study_name}: {len(rows)} trials")
        print_table(header, rows)
        self.study_dir.mkdir(parents=True, exist_ok=True)
        with (self.study_dir / "trials.csv").open("w", newline="") as f:
            csv.writer(f).writerows([header, *rows])
        print(f"Wrote {self.study_dir / 'trials.csv'}")
        if not any(row[header.index("state")] == "COMPLETE" for row in rows):
            errors = Counter(row[-1] for row in rows if row[-1]).most_common(1)
            why = (
                f"; the most common failure ({errors[0][1]} of {len(rows)}): {errors[0][0]}"
                if errors
                else "."
            )
            if not interrupted:
                raise LitMNISTError(
                    f"No trial of study {o.study_name} completed, so there is no best.yaml{why}"
                )
            return
        best, path = study.best_trial, self.study_dir / "best.yaml"
        config = self.fit_config(best.params, f"{o.study_name}-best", None)
        header = f"# The best trial of study {o.study_name}: python -m lit_mnist fit --config {path}\n"
        path.write_text(header + self.parser.dump(config, skip_validation=True))
        print(f"Best trial {best.number}: {o.metric} {best.value:.4f} with {shown(best.params)}")
        if "test/acc" in best.user_attrs:
            print(f"Best trial's test accuracy {100 * best.user_attrs['test/acc']:.2f} %")
        print(f"Wrote {path}: python -m lit_mnist fit --config {path}")


# --------------------------------------------------------------------------------------------- study


def open_storage(url: str | None, journal: Path, heartbeat_interval: int, on_stale: Any) -> Any:
    """The journal file, or the RDB storage at ``url`` with a connect timeout; both with heartbeats."""
    import optuna
    import sqlalchemy

    beats = {"heartbeat_interval": heartbeat_interval, "grace_period": 2 * heartbeat_interval}
    if url is None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        return journal_storage_with_heartbeat(str(journal), **beats, stale_trial_callback=on_stale)
    shown_url, error = url, None
    try:
        parsed = sqlalchemy.engine.make_url(url)
        shown_url = parsed.render_as_string(hide_password=True)
        remote = parsed.get_backend_name() in ("postgresql", "mysql", "mariadb")
        timeout = (
            {"connect_timeout": CONNECT_TIMEOUT_S} if remote and "connect_timeout" not in parsed.query else {}
        )
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url, {"connect_args": timeout}, heartbeat_stale_trial_callback=on_stale, **beats
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
                error = err  # processes starting together race to create Optuna's tables: try again
                time.sleep(0.2 * (attempt + 1))
    except Exception as err:
        error = err
    raise LitMNISTError(f"Cannot open the storage {shown_url}: {str(error).strip().splitlines()[0]}")


def check_settings(study: Any, settings: dict[str, Any], where: str) -> None:
    """Keep ``settings`` with a new study; for an existing one, refuse others, naming what differs."""
    settings, stored = json.loads(json.dumps(settings)), study.user_attrs.get("lit_mnist:search")
    if stored is None:
        study.set_user_attr("lit_mnist:search", settings)
        return
    differ = sorted(key for key in stored.keys() | settings.keys() if stored.get(key) != settings.get(key))
    if differ:
        raise LitMNISTError(
            f"The study {study.study_name} in {where} was run with another {', '.join(differ)}: run it with "
            "the same search space, --metric and --direction, or start a new study with --study_name NAME."
        )


def results_rows(study: Any, keys: Sequence[str], metric: str) -> tuple[list[str], list[list[Any]]]:
    """The table of trials; its parameter columns are ``keys`` and any other a trial of the study has."""
    trials = study.get_trials(deepcopy=False)
    params = list(dict.fromkeys([*keys, *(k for t in trials for k in t.params)]))
    rows = []
    for t in trials:
        error = t.user_attrs.get("error", "its process stopped mid-trial." if t.state.name == "FAIL" else "")
        attrs = t.user_attrs.get("seconds"), t.user_attrs.get("test/acc")
        rows.append([t.number, *(t.params.get(k) for k in params), t.value, t.state.name, *attrs, error])
    return ["number", *params, metric, "state", "seconds", "test/acc", "error"], rows


def print_table(header: list[str], rows: list[list[Any]]) -> None:
    cells = [
        header,
        *[["" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v) for v in r] for r in rows],
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in cells]
    print("\n".join([lines[0], "|" + "|".join("-" * (w + 2) for w in widths) + "|", *lines[1:]]))


def main(args: Sequence[str]) -> None:
    """``python -m lit_mnist tune ARGS``."""
    Search(args).run()
