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
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click.exceptions import UsageError
from typer.core import TyperGroup

from ._errors import MemspaceError
from ._options import MAX_SEED, check_number

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure a deep network as a memory space: Fisher complexity, paths and least action.",
)

MAX_METRICS_BYTES = 256 * 2**20
"""The largest metrics.json ``memspace report`` reads."""

DATA_HELP = (
    "Data set: digits (scikit-learn, embedded), moons (generated), fashion-mnist (Debian package), "
    "or a path to an .npz file with arrays X and y."
)


def _cache_defaults() -> None:
    cache = Path.cwd() / ".cache"
    for var, sub in {
        "MPLCONFIGDIR": "matplotlib",
        "SCIKIT_LEARN_DATA": "sklearn",
        "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    }.items():
        os.environ.setdefault(var, str(cache / sub))


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"memspace: error: {message}", err=True)
    raise typer.Exit(code)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is.

    So every ``with`` block closes (locks released, atomic writes finished or left as temporaries)
    exactly as on Ctrl-C.
    """


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def _catch_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def _friendly(command):
    """Turn expected failures into one line on stderr and exit code 2 (Ctrl-C: 130, SIGTERM: 143).

    Expected failures are memspace's own errors (:class:`~memspace.MemspaceError`, raised where bad
    input is found) and operating-system errors (a full disk, a permission). Anything else is a bug
    of ours: its traceback is printed, with a line asking to report it, and the exit code is 1. A
    process that joined a process group leaves through :func:`_leave_a_process_group`.
    """

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _cache_defaults()
        _catch_sigterm()
        try:
            return _one_line_failures(command, *args, **kwargs)
        except typer.Exit as leaving:
            _leave_a_process_group(leaving.exit_code)
            raise

    return wrapper


def _one_line_failures(command, *args, **kwargs):
    """Run ``command``; turn its expected failures into one line and an exit code (``_fail``)."""
    try:
        return command(*args, **kwargs)
    except typer.Exit:
        raise
    except KeyboardInterrupt as error:
        if isinstance(error, _Terminated):
            _fail(
                "terminated (SIGTERM); what was finished is saved: run the same command "
                "again to resume",
                143,
            )
        _fail("interrupted; what was finished is saved: run the same command again to resume", 130)
    except OSError as error:  # a disk or permission problem outside memspace's own writes
        if os.environ.get("MEMSPACE_DEBUG"):
            raise
        if error.filename:
            _fail(f"cannot access {error.filename}: {error.strerror or type(error).__name__}")
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _fail(
            f"operating-system error in {command.__name__}: "
            f"{type(error).__name__}{f': {text}' if text else ''}"
        )
    except MemspaceError as error:
        if os.environ.get("MEMSPACE_DEBUG"):
            raise
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _fail(text)
    except Exception:  # anything else is memspace's bug, never passed off as the user's mistake
        import traceback

        traceback.print_exc()
        _fail(
            f"internal error in memspace {command.__name__} (the traceback above): this is a "
            "bug in "
            "memspace, not a problem with your input; please report it with the command you "
            "ran",
            1,
        )


def _leave_a_process_group(code: int) -> None:
    """Leave with ``os._exit(code)`` if this process joined a process group; else return.

    A gloo thread can outlive the C++ static destructors of a process that exits normally, and the
    process then aborts (SIGABRT, "terminate called without an active exception") after printing
    its one line. A rank that stops (on success or failure) flushes and leaves without them.
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _check_option(name: str, value, low=None, high=None, *, integer: bool = False) -> None:
    """Check an option that exists on the command line only (one line naming ``--name``)."""
    check_number(f"--{name}", value, low, high, integer=integer, flag="")


def _check_size_adjustment(value: str) -> None:
    from .zoo.runner import SIZE_ADJUSTMENTS

    if value not in SIZE_ADJUSTMENTS:
        raise MemspaceError(
            f"--size-adjustment {value!r}: choose one of {', '.join(SIZE_ADJUSTMENTS)}"
        )


def _status(json_mode: bool):
    started = time.time()

    def emit(message: str) -> None:
        typer.echo(f"[{time.time() - started:5.0f} s] {message}", err=json_mode)

    return emit


def _formatted(value: Any, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


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
    rows = [
        ("test accuracy", "test_acc", "{:.3f}"),
        ("generalization gap", "gap", "{:+.3f}"),
        ("Fisher–Rao norm", "fisher_rao_norm", "{:.4g}"),
        ("Fisher trace", "fisher_trace", "{:.4g}"),
        ("effective dimension", "effective_dimension", "{:.1f}"),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *[fmt.format(metrics["networks"][n]["measures"][key]) for n in names])
    for label, path, key, fmt in (
        ("path anchor", "predictive_path", "anchor", "{}"),
        ("predictive action A", "predictive_path", "action", "{:.4g}"),
        ("least action A_min", "predictive_path", "least_action", "{:.4g}"),
        ("A / A_min", "predictive_path", "ratio", "{:.3f}"),
        ("  uneven speed", "predictive_path", "unevenness", "{:.3f}"),
        ("  × detour factor", "predictive_path", "detour_factor", "{:.3f}"),
        ("A / A_min, stem anchor (v2)", "predictive_path_stem", "ratio", "{:.3f}"),
    ):
        table.add_row(
            label,
            *[
                _formatted(metrics["networks"][n]["measures"][path].get(key), fmt)
                if metrics["networks"][n]["measures"].get(path)
                else "skipped"
                for n in names
            ],
        )
    Console().print(table)


@app.command()
@_friendly
def demo(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    out: Annotated[
        Path, typer.Option(help="Run folder for checkpoints, metrics.json and report.html.")
    ] = Path("runs/demo"),
    seed: Annotated[
        int, typer.Option(help="Seed of the split, the initialisation and training.")
    ] = 0,
    device: Annotated[str, typer.Option(help="Torch device, e.g. cpu or cuda.")] = "cpu",
    epochs: Annotated[
        int | None, typer.Option(help="Epochs per network (default: per data set).")
    ] = None,
    lam: Annotated[
        float | None, typer.Option(help="λ of the predictive action term (default 0.1).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")
    ] = False,
) -> None:
    """Train residual networks with and without least action, measure both, write a report."""
    from .studies import run_demo

    started = time.time()
    metrics = run_demo(
        data,
        out,
        seed=seed,
        device=device,
        epochs=epochs,
        lam=lam,
        overwrite=overwrite,
        progress=not json_output and sys.stderr.isatty(),
        status=_status(json_output),
    )
    _print_summary(metrics, json_output)
    typer.echo(f"report: {out / 'report.html'} ({time.time() - started:.0f} s)", err=json_output)


@app.command()
@_friendly
def measure(
    model: Annotated[
        Path | None,
        typer.Option(
            help="Weights: .safetensors, or a torch.save file (loaded with weights_only=True)."
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help="MODULE:FACTORY or path/to/file.py:FACTORY returning the nn.Module."),
    ] = None,
    hf: Annotated[
        Path | None,
        typer.Option(
            help="A local Hugging Face language-model folder (config.json, safetensors weights; "
            "never downloads, never runs remote code), measured on --text or --tokens."
        ),
    ] = None,
    text: Annotated[
        Path | None,
        typer.Option(help="With --hf: a text file, tokenised by the folder's tokenizer."),
    ] = None,
    tokens: Annotated[
        Path | None,
        typer.Option(help="With --hf: an .npz with input_ids [N, T] (and attention_mask)."),
    ] = None,
    max_length: Annotated[int, typer.Option(help="With --hf: tokens per sequence.")] = 128,
    max_sequences: Annotated[int, typer.Option(help="With --hf: sequences measured.")] = 16,
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    blocks: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated module names of the residual blocks "
            "(not needed for memspace's ResidualMLP/ResidualCNN)."
        ),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(
            help="Module name of the read-out that maps the residual stream to "
            "logits (not needed for memspace's models)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for metrics.json and report.html.")] = Path(
        "runs/measure"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the data split and random probes.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")
    ] = False,
    distributed: Annotated[
        bool,
        typer.Option(
            help="Share the measured points among processes (launch with "
            "torchrun --nproc-per-node N); rank 0 writes the results."
        ),
    ] = False,
    rendezvous: Annotated[
        str,
        typer.Option(
            help="With --distributed: env:// (torchrun's variables) or "
            "file:///shared/path (with RANK and WORLD_SIZE set)."
        ),
    ] = "env://",
    timeout: Annotated[
        float, typer.Option(help="With --distributed: seconds a rank waits for the others.")
    ] = 300.0,
) -> None:
    """Measure your own trained model: the demo's measurements, without training."""
    from .studies.measure import measure_weights

    _check_option("seed", seed, 0, MAX_SEED, integer=True)
    if hf is not None:
        if model is not None or arch is not None or distributed:
            raise MemspaceError("--hf measures a Hugging Face folder alone: drop --model/--arch")
        _check_option("max-length", max_length, 2, 1 << 20, integer=True)
        _check_option("max-sequences", max_sequences, 1, 1 << 20, integer=True)
        from .studies.language import measure_hf

        metrics, report = measure_hf(
            hf,
            text=text,
            tokens=tokens,
            max_length=max_length,
            max_sequences=max_sequences,
            out=out,
            seed=seed,
            overwrite=overwrite,
            status=lambda m: typer.echo(f"  {m}", err=json_output),
        )
        if json_output:
            typer.echo(json.dumps(metrics["language"], indent=1))
        typer.echo(f"report: {report}", err=json_output)
        return
    if model is None or arch is None:
        raise MemspaceError(
            "measure needs --model and --arch (or --hf FOLDER for a language model)"
        )
    if text is not None or tokens is not None:
        raise MemspaceError("--text and --tokens go with --hf")
    rank, world = 0, 1
    if distributed:
        from .distributed import init_process_group

        _check_option("timeout", timeout, 1.0)
        rank, world = init_process_group(rendezvous, timeout_s=timeout)
    names = [b.strip() for b in blocks.split(",")] if blocks else None
    metrics, report = measure_weights(
        model,
        arch,
        data,
        blocks=names,
        head=head,
        out=out,
        seed=seed,
        overwrite=overwrite,
        distributed=distributed,
        rank=rank,
        world=world,
        status=lambda m: typer.echo(f"  {m}", err=json_output),
    )
    if metrics is not None:
        _print_summary(metrics, json_output)
        typer.echo(f"report: {report}", err=json_output)
    if distributed:
        import torch

        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        # Leave without C++ static destructors: a gloo thread sometimes outlives them and aborts the
        # process.
        os._exit(0)


@app.command()
@_friendly
def train(
    data: Annotated[str, typer.Option(help=DATA_HELP)] = "digits",
    action: Annotated[
        str,
        typer.Option(
            help="Least-action term: none, predictive, predictive-excess, kinetic or jacobian."
        ),
    ] = "predictive",
    lam: Annotated[float, typer.Option(help="λ, the weight of the action term.")] = 0.1,
    epochs: Annotated[
        int, typer.Option(help="Total epochs (a resumed run continues to this number).")
    ] = 30,
    width: Annotated[int, typer.Option(help="Width of the residual stream.")] = 32,
    depth: Annotated[int, typer.Option(help="Number of residual blocks L (h = 1/L).")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-3,
    batch_size: Annotated[int, typer.Option(help="Mini-batch size.")] = 64,
    seed: Annotated[int, typer.Option(help="Seed of split, initialisation and training.")] = 0,
    out: Annotated[
        Path, typer.Option(help="Checkpoint folder; an interrupted run there resumes.")
    ] = Path("runs/train"),
    overwrite: Annotated[bool, typer.Option(help="Start afresh, replacing the folder.")] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the per-epoch metrics as JSON on stdout.")
    ] = False,
) -> None:
    """Least-action training of a residual network, with safetensors checkpoints and resume."""
    import torch

    from .action import ACTIONS
    from .data import load_dataset
    from .paths import build_model, check_architecture_fits
    from .train import fit

    if action not in ("none", *ACTIONS):
        raise MemspaceError(f"unknown action {action!r}; use none, {', '.join(ACTIONS)}")
    _check_option("width", width, 1, 4096, integer=True)
    _check_option("depth", depth, 1, 1024, integer=True)
    _check_option("seed", seed, 0, MAX_SEED, integer=True)
    if out.exists() and not out.is_dir():
        raise MemspaceError(f"output path {out} exists and is not a folder")
    split = load_dataset(data, seed=seed, limit=3000 if data == "fashion-mnist" else None)
    check_architecture_fits(split)
    torch.manual_seed(seed)
    model = build_model(split.input_shape, split.num_classes, {"width": width, "depth": depth})
    result = fit(
        model,
        split.train,
        action=None if action == "none" else action,
        lam=lam,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        val_data=split.test,
        seed=seed,
        checkpoint_dir=out,
        overwrite=overwrite,
        run_config={"data": data, "width": width, "depth": depth},
        log=lambda message: typer.echo(f"memspace: note: {message}", err=True),
        progress=not json_output and sys.stderr.isatty(),
    )
    if result.resumed_from:
        typer.echo(f"resumed from epoch {result.resumed_from}", err=True)
    if json_output:
        typer.echo(json.dumps(result.history))
    elif result.history:
        last = result.history[-1]
        typer.echo(
            f"epoch {last['epoch']}: train acc {last['train_acc']:.3f}, test acc "
            f"{last.get('val_acc', float('nan')):.3f}, "
            f"A/A_min {last.get('action_ratio', float('nan')):.3f}; checkpoints in {out}"
        )


def _studies_help() -> str:
    from .studies.registry import STUDIES

    return " or ".join(f"{s.name} ({s.summary})" for s in STUDIES.values()) + "."


def _studies_data_help() -> str:
    from .studies.registry import STUDIES

    own = " ".join(f"{s.name}: {s.data_help}." for s in STUDIES.values() if s.data_help)
    return DATA_HELP + " Default: the configuration's (digits)." + (f" {own}" if own else "")


@app.command()
@_friendly
def study(
    name: Annotated[str, typer.Argument(help=_studies_help())],
    data: Annotated[str | None, typer.Option(help=_studies_data_help())] = None,
    quick: Annotated[
        bool, typer.Option(help="The small configuration the tests use (seconds to a minute).")
    ] = False,
    out: Annotated[
        Path | None, typer.Option(help="Run folder (default runs/study-NAME); a rerun resumes.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace what memspace wrote in the run folder.")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary as JSON on stdout.")
    ] = False,
) -> None:
    """A memory-space study: every cell saved as produced, a rerun skips finished cells.

    A report at the end.
    """
    from ._runs import RunFolder
    from .report import render_report
    from .studies import prepare_study, run_study

    started = time.time()
    config, split = prepare_study(name, "quick" if quick else "full", data)
    out = out or Path(f"runs/study-{name}")
    emit = _status(json_output)
    with RunFolder.open(
        out, kind=f"study-{name}", config=config, overwrite=overwrite, finished="metrics.json"
    ) as run:
        if run.resumed:
            emit(f"resuming the study in {out}: finished cells are skipped")
        with _cell_progress(not json_output and sys.stderr.isatty(), name) as progress:
            summary = run_study(name, run, config, split, status=emit, progress=progress)
        metrics = {
            "run": {
                "study": name,
                "data": config["data"],
                "quick": quick,
                "config": config,
                "seconds": time.time() - started,
            },
            "networks": {},
            "studies": {name: summary},
        }
        report = render_report(
            metrics, run.path("report.html"), title=f"memspace study: {name} on {config['data']}"
        )
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

            self._bar = Progress(
                TextColumn(f"[bold]{self.name}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeRemainingColumn(),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.name, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()


class _ZooGroup(TyperGroup):
    """The ``zoo`` sub-commands, with an unknown one named as such in one line."""

    def resolve_command(self, ctx, args):
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            raise UsageError(
                f"unknown zoo action {args[0]!r}; choose {', '.join(self.commands)}", ctx
            )
        return super().resolve_command(ctx, args)


zoo_app = typer.Typer(
    cls=_ZooGroup,
    no_args_is_help=True,
    add_completion=False,
    help="A zoo of trained networks, the literature's generalization measures beside memspace's, "
    "ranked.",
)
app.add_typer(zoo_app, name="zoo")

ZooFolder = Annotated[
    Path, typer.Option("--out", help="Zoo folder: zoo.sqlite (WAL), weights/, leaderboard.html.")
]
Workers = Annotated[int, typer.Option(help="Processes of the local joblib (loky) pool.")]
Scheduler = Annotated[
    str | None,
    typer.Option(
        help="A Dask scheduler address, e.g. tcp://127.0.0.1:8786: the same "
        "jobs run on that cluster."
    ),
]
ConnectTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds the Dask scheduler has to accept the connection and answer the handshake."
    ),
]
MinEss = Annotated[
    float, typer.Option(help="Smallest effective sample size of a kept environment.")
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
SizeAdjustment = Annotated[
    str,
    typer.Option(
        help="Which measures are adjusted for the training-set size: all (alike, the default), "
        "none, or reference (the literature's only, as the reference code; unfair on a zoo "
        "that varies it)."
    ),
]


def _check_pool(workers: int, connect_timeout: float) -> None:
    _check_option("workers", workers, 1, 256, integer=True)
    _check_option("connect-timeout", connect_timeout, 1, 3600)


@zoo_app.command("run")
@_friendly
def zoo_run(
    grid: Annotated[
        str, typer.Option(help="A grid YAML file, or a built-in grid: quick (CI-sized) or digits.")
    ] = "digits",
    out: ZooFolder = Path("runs/zoo"),
    workers: Workers = 2,
    scheduler: Scheduler = None,
    connect_timeout: ConnectTimeout = 20.0,
    overwrite: Annotated[
        bool, typer.Option(help="Remove what memspace wrote in the zoo folder and start afresh.")
    ] = False,
    json_output: JsonOutput = False,
) -> None:
    """Train and measure every model of the grid not yet in the database."""
    from .zoo import load_grid, run_zoo

    _check_pool(workers, connect_timeout)
    load_grid(grid)  # checked before any folder is made
    with _cell_progress(not json_output and sys.stderr.isatty(), "zoo") as progress:
        result = run_zoo(
            grid,
            out,
            workers=workers,
            scheduler=scheduler,
            overwrite=overwrite,
            status=_status(json_output),
            progress=progress,
            connect_timeout=connect_timeout,
        )
    typer.echo(
        json.dumps(result)
        if json_output
        else f"zoo: {result['models']} models in {out} "
        f"({result['trained']} trained now, {result['seconds']:.0f} s)"
    )


@zoo_app.command("measure")
@_friendly
def zoo_measure(
    out: ZooFolder = Path("runs/zoo"),
    workers: Workers = 2,
    scheduler: Scheduler = None,
    connect_timeout: ConnectTimeout = 20.0,
    json_output: JsonOutput = False,
) -> None:
    """Add the measures the stored models lack."""
    from .zoo import measure_zoo

    _check_pool(workers, connect_timeout)
    with _cell_progress(not json_output and sys.stderr.isatty(), "measures") as progress:
        result = measure_zoo(
            out,
            workers=workers,
            scheduler=scheduler,
            status=_status(json_output),
            progress=progress,
            connect_timeout=connect_timeout,
        )
    typer.echo(
        json.dumps(result)
        if json_output
        else f"zoo: measured {result['measured']} models in {out} ({result['seconds']:.0f} s)"
    )


@zoo_app.command("evaluate")
@_friendly
def zoo_evaluate(
    out: ZooFolder = Path("runs/zoo"),
    min_ess: MinEss = 12.0,
    size_adjustment: SizeAdjustment = "all",
    json_output: JsonOutput = False,
) -> None:
    """The leaderboard: every measure's rank agreement with the generalization gap."""
    from .zoo import evaluate_zoo

    _check_option("min-ess", min_ess, 1, 1e9)
    _check_size_adjustment(size_adjustment)
    evaluation = evaluate_zoo(out, min_ess=min_ess, size_adjustment=size_adjustment)
    if json_output:
        typer.echo(json.dumps(evaluation))
        return
    for e in evaluation["leaderboard"]:
        typer.echo(
            f"{e['measure']:32s} τ {e['tau']:+.3f}  Ψ {e.get('psi', float('nan')):+.3f}  "
            f"CMI {e.get('cmi', float('nan')):.4f}"
        )


@zoo_app.command("report")
@_friendly
def zoo_report(
    out: ZooFolder = Path("runs/zoo"),
    min_ess: MinEss = 12.0,
    size_adjustment: SizeAdjustment = "all",
) -> None:
    """Write leaderboard.html into the zoo folder."""
    from ._runs import RunFolder
    from .report.html import render_zoo_report
    from .zoo import evaluate_zoo, leaderboard_points

    _check_option("min-ess", min_ess, 1, 1e9)
    _check_size_adjustment(size_adjustment)
    evaluation = evaluate_zoo(out, min_ess=min_ess, size_adjustment=size_adjustment)
    evaluation["points"] = leaderboard_points(out, evaluation)
    with RunFolder.attach(out) as run:
        path = render_zoo_report(evaluation, run.path("leaderboard.html"))
    typer.echo(f"report: {path}")


@app.command()
@_friendly
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder holding metrics.json.")],
    output: Annotated[
        Path | None, typer.Option(help="Where to write the HTML (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """Re-render report.html from a run's saved metrics.json."""
    from ._runs import MANIFEST, RunFolder, is_own_name, read_regular
    from .report import render_report
    from .report.html import check_metrics

    source = run_dir / "metrics.json"
    if not source.is_file():
        raise MemspaceError(f"{source} not found: is {run_dir} a finished memspace run?")
    try:
        metrics = json.loads(
            read_regular(source, "the metrics file", MAX_METRICS_BYTES).decode("utf-8")
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MemspaceError(
            f"{source} is not a memspace metrics file (corrupt or truncated)"
        ) from None
    check_metrics(metrics, str(source))
    target = output or run_dir / "report.html"
    if is_own_name(target.name) or target.name == source.name:
        raise MemspaceError(
            f"--output {target}: that name is memspace's own {target.name!r}; choose another "
            "file name for the report"
        )
    inside = output is None or target.resolve().parent == run_dir.resolve()
    run = RunFolder.attach(run_dir) if inside and (run_dir / MANIFEST).exists() else None
    try:
        path = render_report(metrics, run.path(target.name) if run else target)
    except (KeyError, TypeError, IndexError, AttributeError) as error:
        raise MemspaceError(
            f"{source} is not a complete memspace metrics file ({type(error).__name__}: "
            f"{str(error)[:120]}); rerun the command that wrote it"
        ) from None
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
