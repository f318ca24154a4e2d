"""The ``fair`` command line: run, sweep, evaluate, list, schema, compare, plot, push, predict, data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import torch
import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import FairError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fairness methods for image models: train, evaluate and compare.")
console = Console()
errors = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"fair {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Fairness methods for image models."""


def print_result(result: dict) -> None:
    """The tables of the run's task: by group (and by class), then the metrics."""
    from .plugins import get_registry
    from .report import display_label

    task = get_registry().get("tasks", result.get("task", "classification"), "metrics.json task").obj()
    # the tables name the method; an evaluation's "method" is the model it evaluated
    shown = {**result, "spec": {**result["spec"], "method": {**(result["spec"].get("method") or {}),
                                                             "name": display_label(result)}}}
    for table in task.console_tables(shown):
        console.print(table)


@app.command()
def run(
    spec_file: Annotated[Path, typer.Argument(help="JSON or YAML run spec")],
    set_: Annotated[list[str], typer.Option("--set", help="override a field, e.g. --set train.epochs=1")] = [],  # noqa: B006
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="override output_dir")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last complete epoch")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the run already in the output folder")] = False,
    num_processes: Annotated[int, typer.Option("--num-processes", min=1, help="data-parallel processes (torchrun)")] = 1,
) -> None:
    """Train and evaluate the run described by SPEC_FILE."""
    from .run_folder import CLAIMED_ENV, RunFolder
    from .runner import run as run_spec
    from .spec import load_spec

    spec = load_spec(spec_file, set_, output_dir)  # validate before launching anything
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
                   "-m", "fair_core.cli", "run", str(spec_file), *(f"--set={item}" for item in set_),
                   *(["--output-dir", output_dir] if output_dir else []), *(["--resume"] if resume else [])]
        # this process holds the output folder for the run's processes, so that a refusal is one line here
        folder = RunFolder(spec.output_dir)
        try:
            with folder.claim(spec.model_dump(mode="json"), resume, overwrite, world_size=num_processes):
                code = subprocess.call(command, env={**os.environ, CLAIMED_ENV: str(folder.path.resolve())})
                if code:
                    raise ProcessesFailed(f"the run's processes exited with code {code}")
        except ProcessesFailed:
            raise typer.Exit(code) from None
        return
    result = run_spec(spec, resume=resume, overwrite=overwrite)
    if result:
        print_result(result)
        console.print(f"outputs in {spec.output_dir}")


@app.command()
def augment(
    spec_file: Annotated[Path, typer.Argument(help="JSON or YAML augmentation spec (fair augment-schema)")],
    set_: Annotated[list[str], typer.Option("--set", help="override a field, e.g. --set batch_size=32")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option("--overwrite", help="start over in the output folder")] = False,
) -> None:
    """Balance a training set with attribute-edited synthetic images (VLBC); a rerun continues."""
    from .augment import augment as run_augment
    from .augment import load_augment_spec

    spec = load_augment_spec(spec_file, set_)
    manifest = run_augment(spec, overwrite=overwrite)
    added = ", ".join(f"{name} {n}" for name, n in manifest["added"].items())
    console.print(f"added {added} edited images ({manifest['rejected']} edits rejected) in {spec.output_dir}; "
                  f"train on them with the dataset in {Path(spec.output_dir) / 'dataset.json'}")


@app.command("augment-schema")
def augment_schema() -> None:
    """Print the JSON Schema of augmentation specs."""
    from .augment import AugmentSpec

    print(json.dumps(AugmentSpec.model_json_schema(), indent=2))


@app.command("convert-weights")
def convert_weights(
    generator: Annotated[str, typer.Argument(help="registered generator name (fair list)")],
    checkpoint: Annotated[Path, typer.Argument(help="the original checkpoint file")],
    output_dir: Annotated[Path, typer.Argument(help="folder to write model.safetensors and config.json to")],
) -> None:
    """Convert a generator's original checkpoint to safetensors, once (read with weights_only)."""
    from .plugins import get_registry

    get_registry().get("generators", generator, "generator").obj.convert_weights(checkpoint, output_dir)
    console.print(f"wrote {output_dir}")


class ProcessesFailed(Exception):
    """The processes of a multi-process run failed (they reported why themselves)."""


def _source_options(items: list[str]) -> dict:
    """``--option KEY=VALUE`` items as a dict (values parsed as JSON when they can be)."""
    from .untrusted import quote

    options: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise FairError(f"--option {quote(item)}: expected KEY=VALUE, e.g. --option input_size=112")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
        except (RecursionError, ValueError):
            raise FairError(f"--option {quote(key.strip())}: the value nests too deeply or holds too large a number") from None
    return options


@app.command()
def evaluate(
    model: Annotated[str, typer.Argument(help="a finished run folder or fair Hub id, or SOURCE:REF of an installed "
                                              "model source (fair list: timm:NAME, hf:ORG/NAME, onnx:FILE, ...)")],
    spec_file: Annotated[Path, typer.Argument(help="JSON or YAML run spec: its data, task and eval sections are used")],
    split: Annotated[str | None, typer.Option("--split", help="override eval.split")] = None,
    output_dir: Annotated[str | None, typer.Option("--output-dir", help="override output_dir")] = None,
    label_map: Annotated[Path | None, typer.Option("--label-map", help="JSON {dataset class: model label or [labels]} "
                                                                        "when the model's labels are not the classes")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="override a field, e.g. --set eval.batch_size=64")] = [],  # noqa: B006
    option: Annotated[list[str], typer.Option("--option", help="a model source option, e.g. --option input_size=112")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace the run already in the output folder")] = False,
    num_processes: Annotated[int, typer.Option("--num-processes", min=1, help="data-parallel processes (torchrun)")] = 1,
) -> None:
    """Evaluate a model you already have on SPEC_FILE's data: the report, files and comparisons of a
    trained run (metrics.json, per-sample file, fair compare), marked as an evaluation."""
    from .evaluate import ignored_note, plan_evaluation, run_evaluation
    from .run_folder import CLAIMED_ENV, RunFolder, is_main_process
    from .spec import apply_overrides, parse_spec, read_spec_file

    raw = read_spec_file(spec_file)
    note = ignored_note(raw, set_)
    data = apply_overrides(raw, list(set_))
    if split is not None and isinstance(data.setdefault("eval", {}), dict):
        data["eval"]["split"] = split
    if output_dir is not None:
        data["output_dir"] = output_dir
    spec = parse_spec(data)
    options = _source_options(option)
    if note and is_main_process() and CLAIMED_ENV not in os.environ:
        errors.print(note, highlight=False, markup=False)
    plan = plan_evaluation(model, spec, label_map, options)  # every user error before anything is written
    if num_processes > 1 and "LOCAL_RANK" not in os.environ:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}",
                   "-m", "fair_core.cli", "evaluate", model, str(spec_file), *(f"--set={item}" for item in set_),
                   *(f"--option={item}" for item in option), *(["--split", split] if split is not None else []),
                   *(["--output-dir", output_dir] if output_dir else []),
                   *(["--label-map", str(label_map)] if label_map is not None else [])]
        record, recorded_spec = plan.record, plan.recorded_spec
        del plan  # the processes load the model themselves
        folder = RunFolder(spec.output_dir)
        try:
            with folder.claim(recorded_spec, False, overwrite, world_size=num_processes, evaluation=record):
                code = subprocess.call(command, env={**os.environ, CLAIMED_ENV: str(folder.path.resolve())})
                if code:
                    raise ProcessesFailed(f"the evaluation's processes exited with code {code}")
        except ProcessesFailed:
            raise typer.Exit(code) from None
        return
    result = run_evaluation(plan, overwrite=overwrite)
    if result:
        print_result(result)
        console.print(f"outputs in {spec.output_dir}")


@app.command("list")
def list_plugins() -> None:
    """List installed tasks, methods, datasets, models and metrics, with the package and the tasks of each."""
    from .plugins import KINDS, get_registry

    registry = get_registry()
    table = Table(title="fair plugins")
    for column in ("kind", "name", "package", "version", "tasks", "description"):
        table.add_column(column)
    for kind in KINDS:
        entries = [registry.entries[kind][n] for n in registry.names(kind)]
        if kind == "metrics":  # listed by task
            entries.sort(key=lambda e: (e.obj.task != "classification", e.obj.task))
        for entry in entries:
            description = getattr(entry.obj, "description", "") or ""
            if kind == "commands":
                description = (entry.obj.info.help or "").strip().splitlines()[0] if entry.obj.info.help else ""
            table.add_row(kind[:-1], entry.name, entry.package, entry.version, _tasks_of(kind, entry.obj), description)
    console.print(table)
    for warning in registry.warnings:
        errors.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)


def _tasks_of(kind: str, obj) -> str:
    if kind in ("tasks", "commands"):
        return ""
    if kind == "metrics":
        return obj.task
    tasks = getattr(obj, "tasks", ())
    return "any" if "*" in tasks else ", ".join(tasks)


@app.command()
def schema() -> None:
    """Print the JSON Schema of run specs."""
    from .spec import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command("sweep-schema")
def sweep_schema() -> None:
    """Print the JSON Schema of sweep specs (fair sweep)."""
    from .sweep import sweep_json_schema

    print(json.dumps(sweep_json_schema(), indent=2))


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="run output folders, or sweep folders (their finished cells)")],
    group_seeds: Annotated[bool, typer.Option("--group-seeds", help="one row per group of runs that differ only in "
                                              "train.seed / data.params.seed (automatic for a sweep folder)")] = False,
    baseline: Annotated[str | None, typer.Option("--baseline", help="the row the others are tested against "
                                                 "(default: erm when present)")] = None,
    test: Annotated[str, typer.Option("--test", help="welch (Welch's t-test) or mannwhitney")] = "welch",
    metrics: Annotated[str | None, typer.Option("--metrics", help="comma-separated metrics (default: all)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="console, markdown, csv or latex")] = "console",
    names: Annotated[str, typer.Option("--names", help="column names: fair, or study (the ISSTA 2024 study's: "
                                       "its DEO is our eod)")] = "fair",
    output: Annotated[Path | None, typer.Option("--output", help="write the table to this file (atomically)")] = None,
) -> None:
    """One table of the metrics of several runs; with --group-seeds (or a sweep folder) one row per
    group of seeds: mean ± std, 95% t-interval, tests against the baseline."""
    from rich.markup import escape

    from .aggregate import FORMATS, aggregate, column_name, expand_run_dirs, read_runs, render, table
    from .sweep import SWEEP_FILE

    if fmt not in FORMATS:
        raise FairError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    column_name("accuracy", names)  # checks --names
    grouped = group_seeds or any((d / SWEEP_FILE).is_file() for d in run_dirs)
    if not grouped:
        from .report import comparison_rows

        header, rows = comparison_rows(run_dirs)  # checked metrics.json files, or one error line naming the file
        header = [column_name(c, names) for c in header]
        if fmt == "console" and output is None:
            table_ = Table(title="runs")
            for column in header:  # names read from the files are text, not rich markup
                table_.add_column(escape(column), justify="left" if column in {"run", "task", "method", "dataset"} else "right")
            for row in rows:
                table_.add_row(*(escape(cell) for cell in row))
            console.print(table_)
            return
        _write_table(_plain_table(header, rows, "markdown" if fmt == "console" else fmt, "runs"), output)
        return
    dirs, notes = expand_run_dirs(run_dirs)
    for note in notes:
        errors.print(f"not compared: {note}", highlight=False, markup=False)
    chosen = [m.strip() for m in metrics.split(",") if m.strip()] if metrics else None
    result = aggregate(read_runs(dirs), chosen, baseline, test)
    if fmt == "console" and output is None:
        header, rows = table(result, "console", names)
        table_ = Table(title="runs grouped over seeds", caption=escape(result.caption(names)))
        for column in header:
            table_.add_column(escape(column), justify="left" if column == "group" else "right")
        for row in rows:
            table_.add_row(*(escape(cell) for cell in row))
        console.print(table_)
        return
    _write_table(render(result, "markdown" if fmt == "console" else fmt, names), output)


def _plain_table(header: list[str], rows: list[list[str]], fmt: str, title: str) -> str:
    """An ungrouped table as Markdown, CSV or LaTeX."""
    import csv
    import io

    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        return buffer.getvalue()
    if fmt == "latex":
        from .aggregate import _LATEX

        def esc(text: str) -> str:
            return "".join(_LATEX.get(ch, ch) for ch in text)

        lines = [r"\begin{tabular}{" + "l" * 4 + "r" * (len(header) - 4) + "}", r"\toprule",
                 " & ".join(map(esc, header)) + r" \\", r"\midrule", *(" & ".join(map(esc, r)) + r" \\" for r in rows),
                 r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
             *("| " + " | ".join(r) + " |" for r in rows)]
    return "\n".join(lines) + "\n"


def _write_table(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from .atomic import write_text

    try:
        write_text(output, text)
    except OSError as exc:
        raise FairError(f"--output: cannot write {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {output}")


@app.command()
def sweep(
    sweep_file: Annotated[Path, typer.Argument(help="JSON or YAML sweep spec: base run spec, axes, overrides")],
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="cells run at the same time")] = 1,
    executor: Annotated[str, typer.Option("--executor", help="local (processes here) or submitit (SLURM, or "
                                          "submitit's local executor where there is no SLURM)")] = "local",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells and what they would do; run nothing")] = False,
) -> None:
    """Run every cell of a sweep (one ordinary run each); a rerun skips finished cells and resumes the others."""
    from .sweep import cell_is_finished, load_sweep, run_sweep

    if executor not in ("local", "submitit"):
        raise FairError(f"--executor: unknown executor {executor!r}; choose local or submitit")
    spec, cells = load_sweep(sweep_file)  # every cell checked before anything starts
    if executor == "submitit":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise FairError("--executor submitit: submitit is not installed; pip install 'fair-core[submitit]'") from None
    if dry_run:
        for cell in cells:
            done = "finished, skipped" if cell_is_finished(cell) else "to run"
            extra = f"; overrides {json.dumps(cell.overrides)}" if cell.overrides else ""
            console.print(f"{cell.spec['output_dir']}: {done}{extra}", highlight=False, markup=False)
        console.print(f"{len(cells)} cells", highlight=False)
        return
    result = run_sweep(spec, cells, str(sweep_file), jobs, executor,  # type: ignore[arg-type]
                       report=lambda line: console.print(line, highlight=False, markup=False))
    failed = [name for name, entry in result.items() if entry["state"] != "finished"]
    if failed:
        errors.print(f"{len(failed)} of {len(result)} cells failed: {', '.join(failed)} (errors in "
                     f"{Path(spec.output_dir) / 'sweep.json'})", highlight=False, markup=False)
        raise typer.Exit(1)
    console.print(f"all {len(result)} cells finished in {spec.output_dir}", highlight=False)


@app.command()
def plot(
    run_dirs: Annotated[list[Path], typer.Argument(help="run or sweep folders")],
    x: Annotated[str | None, typer.Option("--x", help="metric on the x axis, e.g. accuracy")] = None,
    y: Annotated[str | None, typer.Option("--y", help="metric on the y axis, e.g. worst_group_accuracy")] = None,
    groups: Annotated[str | None, typer.Option("--groups", help="instead of a trade-off: this per-group metric "
                                                "(e.g. accuracy) as bars, one per protected group")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="figure file (.png, .pdf or .svg)")] = Path("tradeoff.png"),
    names: Annotated[str, typer.Option("--names", help="axis names: fair or study")] = "fair",
) -> None:
    """The trade-off between two metrics (--x, --y): one point per group of seeds (mean ± std), the
    Pareto front highlighted; or a per-group metric as bars (--groups)."""
    from .aggregate import aggregate, column_name, expand_run_dirs, group_runs, read_runs
    from .plot import FORMATS, draw_group_bars, draw_tradeoff, write_plot

    if groups is None and (x is None or y is None):
        raise FairError("fair plot: give --x and --y (a trade-off) or --groups METRIC (per-group bars)")
    column_name(groups or x, names)
    if output.suffix.lower().lstrip(".") not in FORMATS:
        raise FairError(f"--output: {output.name}: the figure format comes from the suffix: .png, .pdf or .svg")
    dirs, notes = expand_run_dirs(run_dirs)
    for note in notes:
        errors.print(f"not plotted: {note}", highlight=False, markup=False)
    if groups is not None:
        path = write_plot(draw_group_bars(group_runs(read_runs(dirs)), groups, names), output)
    else:
        result = aggregate(read_runs(dirs), [x, y] if x != y else [x])
        path = write_plot(draw_tradeoff(result.groups, x, y, names), output)
    console.print(f"wrote {path}")


@app.command()
def push(
    run_dir: Annotated[Path, typer.Argument(help="a finished run's output folder")],
    repo_id: Annotated[str, typer.Option("--repo-id", help="org/name on the Hugging Face Hub")],
    private: Annotated[bool, typer.Option("--private", help="create the repository as private")] = False,
) -> None:
    """Upload a run's model, config, metrics and model card to the Hugging Face Hub."""
    from rich.markup import escape

    from .hub import push_run

    url = push_run(run_dir, repo_id, private=private)
    console.print(escape(f"pushed {run_dir} to {repo_id}: {url}"), highlight=False)


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Hub repo id (org/name) or local model folder")],
    images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG, ...)")],
) -> None:
    """Print what MODEL says of each image file: the class (classifier), the classes covering the
    most pixels (segmenter), or the cosine similarity of every pair of images (face model)."""
    from rich.markup import escape

    from .hub import from_pretrained, read_image
    from .tasks import ClassifierModel, EmbedderModel, SegmenterModel

    fair_model = from_pretrained(model)  # config.json checked and bounded before anything is built
    pictures = [read_image(path).unsqueeze(0) for path in images]  # each bounded in pixels
    # class names (from config.json), paths and the model id are text, not rich markup
    shown = escape(model)
    if isinstance(fair_model, ClassifierModel):
        table = Table(title=f"predictions of {shown}")
        for column in ("image", "prediction", "probability"):
            table.add_column(column, justify="right" if column == "probability" else "left")
        for path, picture in zip(images, pictures, strict=True):
            probs = fair_model.predict_proba(picture)[0]
            best = int(probs.argmax())
            table.add_row(escape(str(path)), escape(fair_model.class_names[best]), f"{probs[best]:.4f}")
    elif isinstance(fair_model, SegmenterModel):
        table = Table(title=f"segmentation by {shown}: the classes covering the most pixels")
        for column in ("image", "size", "classes (share of the pixels)"):
            table.add_column(column)
        for path, picture in zip(images, pictures, strict=True):
            labels = fair_model.segment(picture)[0]
            shares = torch.bincount(labels.flatten(), minlength=len(fair_model.class_names)).double() / labels.numel()
            top = shares.argsort(descending=True)[:3].tolist()
            table.add_row(escape(str(path)), f"{labels.shape[1]}x{labels.shape[0]}",
                          escape(", ".join(f"{fair_model.class_names[k]} {shares[k]:.1%}" for k in top if shares[k] > 0)))
    elif isinstance(fair_model, EmbedderModel):
        embeddings = torch.cat([fair_model.embed(picture) for picture in pictures])
        similarity = embeddings @ embeddings.T
        table = Table(title=f"cosine similarity of the embeddings of {shown}")
        table.add_column("image")
        for path in images:
            table.add_column(escape(path.name), justify="right")
        for path, row in zip(images, similarity.tolist(), strict=True):
            table.add_row(escape(str(path)), *(f"{v:.4f}" for v in row))
    else:
        raise FairError(f"{model}: a {fair_model.task} model; fair predict knows classifiers, segmenters and face "
                        f"models; load it with fair_core.from_pretrained")
    console.print(table)


data_app = typer.Typer(no_args_is_help=True, help="Inspect the data of a spec before training.")
app.add_typer(data_app, name="data")


@data_app.command("check")
def data_check(
    spec_file: Annotated[Path, typer.Argument(help="JSON or YAML run spec")],
    images: Annotated[bool, typer.Option("--images", help="also decode every image (and mask) of every split "
                                                          "and list the unreadable ones (exit 2 if any)")] = False,
    workers: Annotated[int, typer.Option("--workers", min=0, help="DataLoader worker processes decoding "
                                                                  "the images (0: this process)")] = 0,
) -> None:
    """Load every split of the spec's dataset and print its (target x group) cell counts."""
    from .data_stats import split_cell_counts, unreadable_images
    from .spec import load_spec

    spec = load_spec(spec_file)
    unreadable: list[str] = []
    decoded = 0
    for table in split_cell_counts(spec):
        info = table.info
        rich_table = Table(title=f"{spec.data.name} {table.split}: {table.total} images, "
                                 f"{table.row_label} x {'/'.join(info.sensitive) or 'all'}")
        rich_table.add_column(table.row_label)
        for group in info.group_names:
            rich_table.add_column(group, justify="right")
        for y, name in enumerate(table.rows):
            rich_table.add_row(name, *(str(int(n)) for n in table.counts[y]))
        console.print(rich_table)
        if images:
            failed = unreadable_images(table.dataset, workers, desc=f"decoding {table.split}")
            files = len(set(table.dataset.rows.tolist()))
            decoded += files
            console.print(f"{table.split}: " + (f"{len(failed)} unreadable file(s) among {files} images" if failed
                                                else f"all {files} images decode"), highlight=False, markup=False)
            unreadable += [f"{table.split}: {line}" for line in failed]
    if unreadable:
        shown = 20
        for line in unreadable[:shown]:
            errors.print(f"unreadable: {line}", markup=False, highlight=False, soft_wrap=True)
        if len(unreadable) > shown:
            errors.print(f"... and {len(unreadable) - shown} more unreadable files", highlight=False)
        raise FairError(f"{len(unreadable)} unreadable file(s) among the {decoded} images of {spec.data.name} "
                        f"(listed above)")


@data_app.command("stats")
def data_stats(
    spec_file: Annotated[Path, typer.Argument(help="JSON or YAML run spec")],
    output: Annotated[Path, typer.Option("--output", "-o", help="figure file (.png, .pdf or .svg)")] = Path("cell_counts.png"),
) -> None:
    """Draw the (target x group) cell counts of every split as a figure, to see the bias before training."""
    from .data_stats import draw_cell_counts, split_cell_counts
    from .spec import load_spec

    spec = load_spec(spec_file)
    path = draw_cell_counts(split_cell_counts(spec), spec.data.name, output)
    console.print(f"wrote {path}")


def add_plugin_commands() -> None:
    """Add the command groups plugins register (``fair face ...``) to the command line, once."""
    from .plugins import get_registry

    registry = get_registry()
    taken = {group.name for group in app.registered_groups}
    taken |= {command.name or command.callback.__name__.replace("_", "-") for command in app.registered_commands}
    added = {id(group.typer_instance) for group in app.registered_groups}
    for name in registry.names("commands"):
        if id(registry.entries["commands"][name].obj) in added:
            continue
        if name in taken:  # core's own commands win
            registry.warnings.append(f"command group {name!r} of {registry.entries['commands'][name].package} "
                                     f"ignored: fair already has a command of that name")
            continue
        app.add_typer(registry.entries["commands"][name].obj, name=name)


def cli() -> None:
    """Entry point: user errors are one line on stderr and exit code 2, never a traceback."""
    try:
        add_plugin_commands()
        app(standalone_mode=True)
    except FairError as exc:
        errors.print(f"error: {error_line(exc)}", highlight=False, soft_wrap=True, markup=False)
        sys.exit(2)


def error_line(exc: FairError) -> str:
    """The one line of a user error. A FairError raised in a DataLoader worker reaches the main
    process as a new FairError whose text is the worker's whole traceback: its own message is
    what follows the traceback's last ``fair_core.errors.FairError:``."""
    text = str(exc) or type(exc).__name__
    marker = f"{FairError.__module__}.{FairError.__name__}: "
    if text.startswith("Caught FairError in DataLoader worker") and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text

if __name__ == "__main__":
    cli()
