"""The ``memspace`` command line: thin — it parses, calls the library, prints.

Bad input (a missing or corrupt file, a checkpoint that does not fit the architecture,
NaN data, an unknown data set, an option out of range, an output folder that is not a
memspace run or is in use, a full disk) ends with one line on stderr saying what and
where, exit code 2, and no traceback. Options and data are checked before any work;
run folders are :class:`memspace._runs.RunFolder` s (locked, atomic, overwrite removes
only what memspace wrote, resume refuses changed options).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ._errors import MemspaceError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Measure a deep network as a memory space: Fisher complexity, paths and least action.")

MAX_SEED = 2**32 - 1
"""Seeds run from 0 to 2³² − 1 (NumPy's and torch's generators both take them; SQLite stores them)."""
MAX_METRICS_BYTES = 256 * 2**20
"""The largest metrics.json ``memspace report`` reads."""

DATA_HELP = ("Data set: digits (scikit-learn, embedded), moons (generated), fashion-mnist (Debian package), "
             "or a path to an .npz file with arrays X and y.")


def _cache_defaults() -> None:
    cache = Path.cwd() / ".cache"
    for var, sub in {"MPLCONFIGDIR": "matplotlib", "SCIKIT_LEARN_DATA": "sklearn",
                     "TORCHINDUCTOR_CACHE_DIR": "torchinductor"}.items():
        os.environ.setdefault(var, str(cache / sub))


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"memspace: error: {message}", err=True)
    raise typer.Exit(code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so every ``with`` block closes (locks released,
    atomic writes finished or left as temporaries) exactly as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _catch_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _friendly(command):
    """Turn expected failures into one line on stderr and exit code 2 (130 on Ctrl-C, 143 on SIGTERM).

    Expected failures are memspace's own errors (:class:`~memspace.MemspaceError`, raised where bad input
    is found) and operating-system errors (a full disk, a permission). Anything else is a bug of ours:
    its traceback is printed, with a line asking to report it, and the exit code is 1.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _cache_defaults()
        _catch_sigterm()
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt as error:
            if isinstance(error, _Terminated):
                _fail("terminated (SIGTERM); what was finished is saved: run the same command again to resume", 143)
            _fail("interrupted; what was finished is saved: run the same command again to resume", 130)
        except OSError as error:  # a disk or permission problem outside memspace's own writes
            if os.environ.get("MEMSPACE_DEBUG"):
                raise
            if error.filename:
                _fail(f"cannot access {error.filename}: {error.strerror or type(error).__name__}")
            text = str(error).strip().splitlines()[0] if str(error).strip() else ""
            _fail(f"operating-system error in {command.__name__}: {type(error).__name__}{f': {text}' if text else ''}")
        except MemspaceError as error:
            if os.environ.get("MEMSPACE_DEBUG"):
                raise
            text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            _fail(text)
        except Exception:  # anything else is memspace's bug, never passed off as the user's mistake
            import traceback

            traceback.print_exc()
            _fail(f"internal error in memspace {command.__name__} (the traceback above): this is a bug in "
                  "memspace, not a problem with your input; please report it with the command you ran", 1)

    return wrapper


def _check_range(name: str, value, low=None, high=None, *, integer: bool = False) -> None:
    """One line naming the option when ``value`` is not finite or outside [low, high]."""
    import math

    if value is None:
        return
    if not math.isfinite(value) or (low is not None and value < low) or (high is not None and value > high):
        bounds = (f"from {low} to {high}" if high is not None else f"≥ {low}") if low is not None else "finite"
        raise MemspaceError(f"--{name} must be {'an integer ' if integer else ''}{bounds}, got {value}")


def _status(json_mode: bool):
    started = time.time()

    def emit(message: str) -> None:
        typer.echo(f"[{time.time() - started:5.0f} s] {message}", err=json_mode)
    return emit


def _print_summary(metrics: dict[str, Any], json_mode: bool) -> None:
    if json_mode:
        typer.echo(json.dumps(metrics))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="memspace summary")
    table.add_column("measure")
    names = list(metrics["networks"])
    for name in names:
        table.add_column(name, justify="right")
    rows = [("test accuracy", "test_acc", "{:.3f}"), ("generalization gap", "gap", "{:+.3f}"),
            ("Fisher–Rao norm", "fisher_rao_norm", "{:.4g}"), ("Fisher trace", "fisher_trace", "{:.4g}"),
            ("effective dimension", "effective_dimension", "{:.1f}")]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt.format(metrics["networks"][n]["measures"][key]) for n in names])
    for label, key, fmt in (("predictive action A", "action", "{:.4g}"), ("least action A_min", "least_action", "{:.4g}"),
                            ("A / A_min", "ratio", "{:.3f}")):
        table.add_row(label, *[fmt.format(metrics["networks"][n]["measures"]["predictive_path"][key])
                               if "predictive_path" in metrics["networks"][n]["measures"] else "skipped"
                               for n in names])
    Console().print(table)


@app.command()
@_friendly
def demo(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    out: Annotated[Path, typer.Option(help="Run folder for checkpoints, metrics.json and report.html.")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="Seed of the split, the initialisation and training.")] = 0,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    epochs: Annotated[int | None, typer.Option(help="Epochs per network (default: per data set).")] = None,
    lam: Annotated[float | None, typer.Option(help="λ of the predictive action term (default 0.1).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Train residual networks with and without least action, measure both, write a report."""
    from .studies import run_demo
    from .train import MAX_EPOCHS

    _check_range("epochs", epochs, 1, MAX_EPOCHS, integer=True)
    _check_range("lam", lam, 0)
    _check_range("seed", seed, 0, MAX_SEED, integer=True)
    started = time.time()
    metrics = run_demo(data, out, seed=seed, device=device, epochs=epochs, lam=lam, overwrite=overwrite,
                       progress=not json_output and sys.stderr.isatty(), status=_status(json_output))
    _print_summary(metrics, json_output)
    typer.echo(f"report: {out / 'report.html'} ({time.time() - started:.0f} s)", err=json_output)


def _load_factory(spec: str):
    if ":" not in spec:
        raise MemspaceError(f"--arch {spec!r} must be MODULE:FACTORY (a module or .py file, and a callable in it)")
    module_name, _, attr = spec.rpartition(":")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise MemspaceError(f"architecture file {path} does not exist")
        loaded = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loaded)
        try:
            with _users_code():
                loaded.loader.exec_module(module)
        except SystemExit as error:
            raise MemspaceError(f"architecture file {path} called exit({error.code!r}) while loading; "
                                "nothing was measured") from None
        except Exception as error:  # the user's file: a syntax error or one raised at import
            raise MemspaceError(f"cannot load architecture file {path}: {_one_line(error)}") from None
    else:
        try:
            with _users_code():
                module = importlib.import_module(module_name)
        except SystemExit as error:
            raise MemspaceError(f"architecture module {module_name!r} called exit({error.code!r}) while loading; "
                                "nothing was measured") from None
        except Exception as error:
            raise MemspaceError(f"cannot import architecture module {module_name!r}: {_one_line(error)}") from None
    if not callable(getattr(module, attr, None)):
        raise MemspaceError(f"module {module_name!r} has no factory {attr!r}")
    return getattr(module, attr)


def _users_code():
    """Run the user's ``--arch`` code with its prints sent to stderr: stdout is memspace's (``--json``)."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr)


def _one_line(error: BaseException) -> str:
    """``Type: first line`` of an exception, with the line number of a syntax error."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, SyntaxError) and error.lineno:
        text = f"{error.msg} (line {error.lineno})"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _build_network(factory, arch: str):
    import torch

    try:
        with _users_code():
            network = factory()
    except SystemExit as error:
        raise MemspaceError(f"the factory {arch} called exit({error.code!r}); nothing was measured") from None
    except Exception as error:
        raise MemspaceError(f"the factory {arch} raised {_one_line(error)}") from None
    if not isinstance(network, torch.nn.Module):
        raise MemspaceError(f"factory {arch} returned {type(network).__name__}, not a torch.nn.Module")
    return network


def _check_before_work(network, split, block_names, head) -> None:
    """Refuse a model, blocks or data that cannot be measured before any work or folder.

    One forward on two training points; with ``--blocks``, the blocks must exist, run once
    and keep the stream's shape, and the read-out must be found.
    """
    import torch

    from ._params import check_eval_mode
    from .paths import ResidualPath, resolve_head

    check_eval_mode(network)
    x = split.train[0][:2]

    def forward():
        try:
            return network(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            raise MemspaceError(f"the model cannot run on the data's inputs (samples of shape "
                                f"{tuple(x.shape[1:])}, {x.dtype}): {_one_line(error)}") from None

    if block_names is not None:
        path = ResidualPath(network, block_names)
        with torch.no_grad(), path.capture() as record:
            out = forward()
        path.states(record)
        resolve_head(network, head)
    else:
        with torch.no_grad():
            out = forward()
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != split.num_classes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise MemspaceError(f"the model maps a batch of 2 inputs of shape {tuple(x.shape[1:])} to {shape}; "
                            f"measure needs logits [N, {split.num_classes}] for this data set")


@app.command()
@_friendly
def measure(
    model: Annotated[Path, typer.Option(help="Weights: .safetensors, or a torch.save file (loaded with weights_only=True).")],
    arch: Annotated[str, typer.Option(help="MODULE:FACTORY or path/to/file.py:FACTORY returning the nn.Module.")],
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    blocks: Annotated[str | None, typer.Option(help="Comma-separated module names of the residual blocks "
                                               "(not needed for memspace's ResidualMLP/ResidualCNN).")] = None,
    head: Annotated[str | None, typer.Option(help="Module name of the read-out that maps the residual stream to "
                                             "logits (not needed for memspace's models).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and report.html.")] = Path("runs/measure"),
    seed: Annotated[int, typer.Option(help="Seed of the data split and random probes.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    distributed: Annotated[bool, typer.Option(help="Share the measured points among processes (launch with "
                                              "torchrun --nproc-per-node N); rank 0 writes the results.")] = False,
    rendezvous: Annotated[str, typer.Option(help="With --distributed: env:// (torchrun's variables) or "
                                            "file:///shared/path (with RANK and WORLD_SIZE set).")] = "env://",
    timeout: Annotated[float, typer.Option(help="With --distributed: seconds a rank waits for the others.")] = 300.0,
) -> None:
    """Measure your own trained model: the demo's measurements, without training."""
    _check_range("seed", seed, 0, MAX_SEED, integer=True)
    rank, world = 0, 1
    if distributed:
        from .distributed import init_process_group

        _check_range("timeout", timeout, 1.0)
        rank, world = init_process_group(rendezvous, timeout_s=timeout)
    _measure(model, arch, data, blocks, head, out, seed, overwrite, json_output, distributed, rank, world)
    if distributed:
        import torch

        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave without C++ static destructors: a gloo thread sometimes outlives them and aborts the process.
        os._exit(0)


def _measure(model, arch, data, blocks, head, out, seed, overwrite, json_output, distributed, rank, world) -> None:
    """The ``measure`` command's work. Sharded (``distributed``): every rank measures its share of the
    points, rank 0 alone owns the run folder and prints, and a rank that fails anywhere here stops
    every rank with its message."""
    from contextlib import nullcontext

    from ._runs import RunFolder
    from .data import load_dataset
    from .distributed import Collective
    from .report import render_report
    from .studies import measure_network

    lead = rank == 0
    shared = {"processes": world} if distributed else {}
    with Collective(distributed, "memspace measure").guard():
        network = _load_network(model, arch)
        split = load_dataset(data, seed=seed)
        names = [b.strip() for b in blocks.split(",")] if blocks else None
        network = network.float().eval()
        _check_before_work(network, split, names, head)
        config = {"data": data, "model": str(model), "arch": arch, "seed": seed, "blocks": names, "head": head,
                  **shared}
        folder = (RunFolder.open(out, kind="measure", config=config, overwrite=overwrite, finished="metrics.json")
                  if lead else nullcontext())
        with folder as run:
            echo = (lambda m: typer.echo(f"  {m}", err=json_output)) if lead else (lambda m: None)
            if distributed:
                echo(f"{world} processes, each measuring its share of the points")
            measures = measure_network(network, split, block_names=names, head=head, seed=seed, status=echo,
                                       distributed=distributed)
            if not lead:
                return
            metrics = {"run": {"data": data, "model": str(model), "arch": arch, "seed": seed, **shared},
                       "networks": {model.stem: {"action": "n/a", "lambda": "n/a", "history": [],
                                                 "measures": measures}}}
            report = render_report(metrics, run.path("report.html"), title=f"memspace report: {model.name}")
            run.write_json("metrics.json", metrics)  # last: the marker of a finished run
    _print_summary(metrics, json_output)
    typer.echo(f"report: {report}", err=json_output)


def _load_network(model: Path, arch: str):
    """The architecture from ``arch`` with the checked weights of ``model``."""
    from .checkpoint import check_weights, load_state

    network = _build_network(_load_factory(arch), arch)
    state = load_state(model)
    check_weights(state, network, model)
    try:
        network.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()
        raise MemspaceError(f"checkpoint {model} does not match the architecture {arch}: "
                            f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    return network


@app.command()
@_friendly
def train(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    action: Annotated[str, typer.Option(help="Least-action term: none, predictive, predictive-excess, kinetic or jacobian.")] = "predictive",
    lam: Annotated[float, typer.Option(help="λ, the weight of the action term.")] = 0.1,
    epochs: Annotated[int, typer.Option(help="Total epochs (a resumed run continues to this number).")] = 30,
    width: Annotated[int, typer.Option(help="Width of the residual stream.")] = 32,
    depth: Annotated[int, typer.Option(help="Number of residual blocks L (h = 1/L).")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of split, initialisation and training.")] = 0,
    out: Annotated[Path, typer.Option(help="Checkpoint folder; an interrupted run there resumes.")] = Path("runs/train"),
    overwrite: Annotated[bool, typer.Option(help="Start afresh, replacing the folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the per-epoch metrics as JSON on stdout.")] = False,
) -> None:
    """Least-action training of a residual network, with safetensors checkpoints and resume."""
    import torch

    from .action import ACTIONS
    from .data import load_dataset
    from .paths import build_model, check_architecture_fits
    from .train import MAX_EPOCHS, fit

    if action not in ("none", *ACTIONS):
        raise MemspaceError(f"unknown action {action!r}; use none, {', '.join(ACTIONS)}")
    _check_range("epochs", epochs, 1, MAX_EPOCHS, integer=True)
    _check_range("width", width, 1, 4096, integer=True)
    _check_range("depth", depth, 1, 1024, integer=True)
    _check_range("batch-size", batch_size, 1, 1_000_000, integer=True)
    _check_range("lam", lam, 0)
    _check_range("seed", seed, 0, MAX_SEED, integer=True)
    if not lr > 0 or lr == float("inf"):
        raise MemspaceError(f"--lr must be finite and positive, got {lr}")
    if out.exists() and not out.is_dir():
        raise MemspaceError(f"output path {out} exists and is not a folder")
    split = load_dataset(data, seed=seed, limit=3000 if data == "fashion-mnist" else None)
    check_architecture_fits(split)
    torch.manual_seed(seed)
    model = build_model(split.input_shape, split.num_classes, {"width": width, "depth": depth})
    result = fit(model, split.train, action=None if action == "none" else action, lam=lam, epochs=epochs, lr=lr,
                 batch_size=batch_size, val_data=split.test, seed=seed, checkpoint_dir=out, overwrite=overwrite,
                 run_config={"data": data, "width": width, "depth": depth},
                 log=lambda message: typer.echo(f"memspace: note: {message}", err=True),
                 progress=not json_output and sys.stderr.isatty())
    if result.resumed_from:
        typer.echo(f"resumed from epoch {result.resumed_from}", err=True)
    if json_output:
        typer.echo(json.dumps(result.history))
    elif result.history:
        last = result.history[-1]
        typer.echo(f"epoch {last['epoch']}: train acc {last['train_acc']:.3f}, test acc {last.get('val_acc', float('nan')):.3f}, "
                   f"A/A_min {last.get('action_ratio', float('nan')):.3f}; checkpoints in {out}")


STUDIES = ("capacity", "robustness", "disentanglement")


@app.command()
@_friendly
def study(
    name: Annotated[str, typer.Argument(help="capacity (memorisation under an action budget, with the Cover anchor), "
                                        "robustness (layer re-initialization, weight noise against tr F) or "
                                        "disentanglement (β-VAEs with and without least action, the standard scores, "
                                        "the decoder metric's block structure).")],
    data: Annotated[str | None, typer.Option(help=DATA_HELP + " Default: the configuration's (digits). "
                                                  "disentanglement: dsprites-like (generated, the default) or the "
                                                  "real dSprites .npz (imgs, latents_classes).")] = None,
    quick: Annotated[bool, typer.Option(help="The small configuration the tests use (seconds to a minute).")] = False,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/study-NAME); a rerun resumes.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace what memspace wrote in the run folder.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """A memory-space study: every cell saved as produced, a rerun skips finished cells, a report at the end."""
    from ._runs import RunFolder
    from .report import render_report
    from .studies import prepare_study, run_study

    if name not in STUDIES:
        raise MemspaceError(f"unknown study {name!r}; choose {', '.join(STUDIES)}")
    started = time.time()
    config, split = prepare_study(name, "quick" if quick else "full", data)
    out = out or Path(f"runs/study-{name}")
    emit = _status(json_output)
    with RunFolder.open(out, kind=f"study-{name}", config=config, overwrite=overwrite, finished="metrics.json") as run:
        if run.resumed:
            emit(f"resuming the study in {out}: finished cells are skipped")
        with _cell_progress(not json_output and sys.stderr.isatty(), name) as progress:
            summary = run_study(name, run, config, split, status=emit, progress=progress)
        metrics = {"run": {"study": name, "data": config["data"], "quick": quick, "config": config,
                           "seconds": time.time() - started}, "networks": {}, "studies": {name: summary}}
        report = render_report(metrics, run.path("report.html"), title=f"memspace study: {name} on {config['data']}")
        run.write_json("metrics.json", metrics)
    if json_output:
        typer.echo(json.dumps(summary))
    typer.echo(f"report: {report} ({time.time() - started:.0f} s)", err=json_output)


class _cell_progress:
    """A rich progress bar over a study's cells (or nothing)."""

    def __init__(self, enabled: bool, name: str):
        self.enabled, self.name, self._bar = enabled, name, None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(f"[bold]{self.name}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


ZOO_ACTIONS = ("run", "measure", "evaluate", "report")


@app.command()
@_friendly
def zoo(
    action: Annotated[str, typer.Argument(help="run (train and measure every model not yet in the database), "
                                          "measure (add the measures stored models lack), evaluate (the leaderboard) "
                                          "or report (leaderboard.html).")],
    grid: Annotated[str, typer.Option(help="A grid YAML file, or a built-in grid: quick (CI-sized) or digits.")] = "digits",
    out: Annotated[Path, typer.Option(help="Zoo folder: zoo.sqlite (WAL), weights/, leaderboard.html.")] = Path("runs/zoo"),
    workers: Annotated[int, typer.Option(help="Processes of the local joblib (loky) pool.")] = 2,
    scheduler: Annotated[str | None, typer.Option(help="A Dask scheduler address, e.g. tcp://127.0.0.1:8786: "
                                                  "the same jobs run on that cluster.")] = None,
    connect_timeout: Annotated[float, typer.Option(help="Seconds the Dask scheduler has to accept the connection and "
                                                   "answer the handshake.")] = 20.0,
    min_ess: Annotated[float, typer.Option(help="Smallest effective sample size of a kept environment.")] = 12.0,
    overwrite: Annotated[bool, typer.Option(help="Remove what memspace wrote in the zoo folder and start afresh.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")] = False,
) -> None:
    """A zoo of trained networks, the literature's generalization measures beside memspace's, ranked."""
    from .zoo import evaluate_zoo, load_grid, measure_zoo, run_zoo

    if action not in ZOO_ACTIONS:
        raise MemspaceError(f"unknown zoo action {action!r}; choose {', '.join(ZOO_ACTIONS)}")
    _check_range("min-ess", min_ess, 1, 1e9)
    _check_range("connect-timeout", connect_timeout, 1, 3600)
    emit = _status(json_output)
    if action == "run":
        _check_range("workers", workers, 1, 256, integer=True)
        load_grid(grid)  # checked before any folder is made
        with _cell_progress(not json_output and sys.stderr.isatty(), "zoo") as progress:
            result = run_zoo(grid, out, workers=workers, scheduler=scheduler, overwrite=overwrite, status=emit,
                             progress=progress, connect_timeout=connect_timeout)
        typer.echo(json.dumps(result) if json_output else f"zoo: {result['models']} models in {out} "
                   f"({result['trained']} trained now, {result['seconds']:.0f} s)")
        return
    if action == "measure":
        _check_range("workers", workers, 1, 256, integer=True)
        with _cell_progress(not json_output and sys.stderr.isatty(), "measures") as progress:
            result = measure_zoo(out, workers=workers, scheduler=scheduler, status=emit, progress=progress,
                                 connect_timeout=connect_timeout)
        typer.echo(json.dumps(result) if json_output else f"zoo: measured {result['measured']} models in {out} "
                   f"({result['seconds']:.0f} s)")
        return
    evaluation = evaluate_zoo(out, min_ess=min_ess)
    if action == "evaluate":
        if json_output:
            typer.echo(json.dumps(evaluation))
        else:
            for e in evaluation["leaderboard"]:
                typer.echo(f"{e['measure']:32s} τ {e['tau']:+.3f}  Ψ {e.get('psi', float('nan')):+.3f}  "
                           f"CMI {e.get('cmi', float('nan')):.4f}")
        return
    from ._runs import RunFolder
    from .report.html import render_zoo_report
    from .zoo import leaderboard_points

    evaluation["points"] = leaderboard_points(out, evaluation)
    with RunFolder.attach(out) as run:
        path = render_zoo_report(evaluation, run.path("leaderboard.html"))
    typer.echo(f"report: {path}")


@app.command()
@_friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder holding metrics.json.")],
    output: Annotated[Path | None, typer.Option(help="Where to write the HTML (default RUN_DIR/report.html).")] = None,
) -> None:
    """Re-render report.html from a run's saved metrics.json."""
    from ._runs import MANIFEST, RunFolder, is_own_name, read_regular
    from .report import render_report
    from .report.html import check_metrics

    source = run_dir / "metrics.json"
    if not source.is_file():
        raise MemspaceError(f"{source} not found: is {run_dir} a finished memspace run?")
    try:
        metrics = json.loads(read_regular(source, "the metrics file", MAX_METRICS_BYTES).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MemspaceError(f"{source} is not a memspace metrics file (corrupt or truncated)") from None
    check_metrics(metrics, str(source))
    target = output or run_dir / "report.html"
    if is_own_name(target.name) or target.name == source.name:
        raise MemspaceError(f"--output {target}: that name is memspace's own {target.name!r}; choose another "
                            "file name for the report")
    inside = output is None or target.resolve().parent == run_dir.resolve()
    run = RunFolder.attach(run_dir) if inside and (run_dir / MANIFEST).exists() else None
    try:
        path = render_report(metrics, run.path(target.name) if run else target)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise MemspaceError(f"{source} is not a complete memspace metrics file ({type(error).__name__}: "
                            f"{str(error)[:120]}); rerun the command that wrote it") from None
    finally:
        if run is not None:
            run.close()
    typer.echo(f"report: {path}")


def main(argv: list[str] | None = None) -> None:
    """The console entry point: the commands, with click's usage errors as one line (exit 2).

    Click's own usage messages (an unknown option or command, a value that does not
    parse) come as a box of several lines; here they are one line, like every other
    failure, with a pointer to ``--help``.
    """
    from typer.exceptions import TyperException

    try:
        code = app(args=argv, prog_name="memspace", standalone_mode=False)
    except TyperException as error:  # click's UsageError, BadParameter, NoSuchOption, ...
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
        command = getattr(getattr(error, "ctx", None), "command_path", "memspace")
        typer.echo(f"memspace: error: {first} (see {command} --help)", err=True)
        sys.exit(getattr(error, "exit_code", 2) or 2)
    except KeyboardInterrupt:  # before or after a command's own handler (while parsing, say)
        typer.echo("memspace: error: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
