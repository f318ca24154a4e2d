"""``fair face ...``: one-time file conversions and alignment of face data.

* ``fair face align SRC DST --landmarks FILE``: align every image of a folder to a face template;
* ``fair face convert-bin BIN... DST``: RFW / insightface ``.bin`` pair files (pickles) to images and
  ``pairs.csv``, read without unpickling;
* ``fair face convert-weights SRC DST --arch iresnet50``: an insightface ``.pth`` backbone to
  safetensors, the only place the project reads a torch checkpoint (``weights_only=True``).

Each prints what it did; user errors are one line and exit code 2 (the ``fair`` entry point).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

face_app = typer.Typer(no_args_is_help=True, help="Face data and weights: align images, convert RFW .bin files and "
                                                  "insightface weights.")
console = Console()

class Template(str, Enum):
    arcface112 = "arcface112"
    fairface256 = "fairface256"


@face_app.command("align")
def align(
    src: Annotated[Path, typer.Argument(help="folder of face images (searched recursively)")],
    dst: Annotated[Path, typer.Argument(help="folder for the aligned images (same relative paths)")],
    landmarks: Annotated[Path, typer.Option("--landmarks", help="CSV of 5 landmarks (or a box) per image")],
    template: Annotated[Template, typer.Option("--template", help="face template")] = "arcface112",
    size: Annotated[int | None, typer.Option("--size", help="output side in pixels (default: the template's; "
                                                            "arcface112: a multiple of 112 or 128)")] = None,
    margin: Annotated[float, typer.Option("--margin", help="box-only rows: pixels added around the box")] = 10.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="realign images already in DST")] = False,
) -> None:
    """Align every image of SRC to a face template with its 5 landmarks (similarity transform), or
    crop its box when it has no landmarks; list the images that could not be aligned."""
    from .align import align_folder

    report = align_folder(src, dst, landmarks, template=template.value, size=size, margin=margin, overwrite=overwrite)
    for line in report.lines(limit=50):
        console.print(escape(line), highlight=False, soft_wrap=True)


@face_app.command("convert-bin")
def convert_bin_files(
    bins: Annotated[list[Path], typer.Argument(help="<Race>_test.bin files, then the output folder last")],
    race: Annotated[str | None, typer.Option("--race", help="the race of a single .bin file not named "
                                                            "<Race>_test.bin (e.g. lfw.bin)")] = None,
) -> None:
    """Convert RFW / insightface .bin pair files (pickles, read without unpickling) into images and
    pairs.csv in the output folder (the last argument), readable by the rfw dataset."""
    from fair_core import FairError

    from .bin_pairs import convert_bin

    if len(bins) < 2:
        raise FairError("convert-bin: give at least one .bin file and the output folder (last)")
    *sources, dst = bins
    if race is not None and len(sources) > 1:
        raise FairError("--race: names the race of one .bin file; several files take their races from their names")
    for source in sources:
        pairs = convert_bin(source, dst, race=race)
        console.print(escape(f"{source}: {pairs} pairs written to {dst}"), highlight=False, soft_wrap=True)


@face_app.command("convert-weights")
def convert_weights(
    src: Annotated[Path, typer.Argument(help="insightface backbone .pth state dict")],
    dst: Annotated[Path, typer.Argument(help="the .safetensors file to write")],
    arch: Annotated[str, typer.Option("--arch", help="iresnet18, iresnet34, iresnet50 or iresnet100")] = "iresnet50",
) -> None:
    """Convert an insightface IResNet .pth state dict into a safetensors file that
    ``model.params.pretrained`` can name (torch.load with weights_only=True, here only)."""
    from .weights import convert_insightface_weights

    report = convert_insightface_weights(src, dst, arch)
    console.print(escape(f"wrote {dst}: {report['arch']}, {report['tensors']} tensors ({report['parameters']:,} "
                         f"parameters) from {src} (sha256 {report['source_sha256'][:16]})"), highlight=False, soft_wrap=True)
