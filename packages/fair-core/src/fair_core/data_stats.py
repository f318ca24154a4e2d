"""Cell counts of a spec's data, before training: ``fair data check`` prints them as tables,
``fair data stats`` draws them as a figure (one heat map a split, coloured by each group's share
of its class, so a skew such as "95% of class 0 is grayscale" stands out).
:func:`unreadable_images` decodes every image (and mask) of a split and names those that fail
(``fair data check --images``; the runner can call it to fail before training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .atomic import atomic_path
from .data import DataInfo, FairDataset
from .errors import FairError
from .spec import RunSpec

MAX_REASON_CHARS = 500  # an unreadable file's line is cut here (a reason may quote the file's bytes)

FIGURE_FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class SplitCounts:
    """``counts[r, g]`` of one split: rows ``rows`` (the classes; the mask classes' pixels for
    segmentation; images and identities for verification) by protected group."""

    split: str
    info: DataInfo
    counts: Tensor
    rows: tuple[str, ...]
    row_label: str
    total: int  # images
    dataset: FairDataset | None = field(default=None, repr=False, compare=False)  # the split, as loaded


def split_cell_counts(spec: RunSpec) -> list[SplitCounts]:
    """Load every split of the spec's dataset (checking it) as its task sees it, and count its cells."""
    from .runner import resolve

    run = resolve(spec)
    tables = []
    for split in run.dataset.splits:
        data = run.dataset.load(split, spec.data.target, spec.data.sensitive, task=run.task)
        row_label, rows, counts = data.count_table()
        tables.append(SplitCounts(split, data.info, counts, rows, row_label, len(data), data))
    return tables


class _Decoded(Dataset):
    """Item ``i``: the reasons (one line each) why image ``rows[i]`` or its mask does not decode."""

    def __init__(self, dataset: FairDataset, rows: list[int]):
        self.images, self.masks, self.rows = dataset.split.images, dataset.split.masks, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> list[str]:
        row, reasons = self.rows[i], []
        for kind, files in (("image", self.images), ("mask", self.masks)):
            if files is None:
                continue
            try:
                files[row]
            except FairError as exc:
                reasons.append(_one_line(str(exc)))
            except Exception as exc:  # a plugin's own decoder: name the row, since the file is unknown here
                reasons.append(_one_line(f"{kind} of row {row}: {type(exc).__name__}: {exc}"))
        return reasons


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS] + " ..."


def _as_list(batch: list) -> list:
    return batch


def unreadable_images(dataset: FairDataset, workers: int = 0, *, desc: str | None = None,
                      progress: bool = True) -> list[str]:
    """Decode every image (and segmentation mask) of ``dataset``'s rows, each row once, in
    ``workers`` DataLoader worker processes (0: this process), with a tqdm progress bar labelled
    ``desc``; return one line per file that fails (the file and the reason), in row order."""
    from tqdm.auto import tqdm

    rows = sorted(set(dataset.rows.tolist()))
    loader = DataLoader(_Decoded(dataset, rows), batch_size=32, num_workers=workers, collate_fn=_as_list)
    failures: list[str] = []
    try:
        shown = {} if progress else {"disable": True}  # when shown, TQDM_* environment variables still apply
        with tqdm(total=len(rows), desc=desc or "decoding images", unit="image", **shown) as bar:
            for batch in loader:
                failures += [reason for reasons in batch for reason in reasons]
                bar.update(len(batch))
    except RuntimeError as exc:  # a worker died (killed for memory, a signal): name it, one line
        raise FairError(f"decoding images with {workers} worker(s) failed: {_one_line(str(exc))}") from None
    return failures


def draw_cell_counts(tables: list[SplitCounts], dataset: str, path: Path) -> Path:
    """Write the heat maps of ``tables`` to ``path`` (format from its suffix), atomically."""
    suffix = path.suffix.lstrip(".").lower()
    if suffix not in FIGURE_FORMATS:
        raise FairError(f"--output: unknown figure format {path.suffix!r}; allowed: {', '.join('.' + f for f in FIGURE_FORMATS)}")
    try:
        from matplotlib import rc_context
        from matplotlib.figure import Figure
    except ImportError:
        raise FairError("fair data stats draws with matplotlib, which is not installed (pip install 'fair-core[plots]')") from None
    width = max(3.0, 1.1 * max(t.info.num_groups for t in tables) + 1.8)
    height = max(2.4, 0.45 * max(len(t.rows) for t in tables) + 1.4)
    figure = Figure(figsize=(width * len(tables), height), layout="constrained")
    axes = figure.subplots(1, len(tables), squeeze=False)[0]
    for ax, table in zip(axes, tables, strict=True):
        counts = table.counts.double()
        share = counts / counts.sum(1, keepdim=True).clamp_min(1)
        image = ax.imshow(share.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for y in range(counts.shape[0]):
            for g in range(counts.shape[1]):
                light = share[y, g] < 0.6
                ax.text(g, y, f"{int(counts[y, g])}\n{share[y, g]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if light else "black")
        ax.set_xticks(range(table.info.num_groups), table.info.group_names, rotation=30, ha="right")
        ax.set_yticks(range(len(table.rows)), table.rows)
        ax.set_xlabel(" / ".join(table.info.sensitive))
        ax.set_ylabel(table.row_label)
        ax.set_title(f"{table.split}: {table.total} images")
    figure.colorbar(image, ax=list(axes), label="share of the row")
    figure.suptitle(f"{dataset}: ({tables[0].row_label} x group) counts")
    with atomic_path(path) as tmp, rc_context({"svg.fonttype": "none"}):  # SVG text stays text (editable)
        figure.savefig(tmp, format=suffix, dpi=120)
    return path
