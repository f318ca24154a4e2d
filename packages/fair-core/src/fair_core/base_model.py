"""The trained model a two-stage method starts from: a teacher (MFD), a frozen backbone (FDR), a
frozen predictor (FairReprogram, FAAP).

Such a method (``Method.two_stage``) takes ``method.params.base`` (:class:`BaseModelParams`):

* a finished run folder or a Hugging Face Hub id, read with :meth:`fair_core.FairModel.from_pretrained`
  (safetensors and a JSON config, no code executed); or
* nothing: then the base model is trained first, inside the same run (stage 1): an ordinary
  ``erm`` run of the same spec (same data, model, ``train`` recipe and seed) in
  ``<output_dir>/base/``, with its own checkpoint, model files and ``metrics.json``. A run resumed
  with ``--resume`` reuses a finished stage 1 and resumes a killed one; it never retrains it.
  ``<output_dir>/base/`` is exactly the ERM run the method is compared with.

The base must be a plain model of the spec's architecture (its weights load into the spec's
``model`` as built for the data's classes): a model trained with ``erm`` or a pre-processing
method (``us``, ``os``, ``uw``), not one whose method added heads or changed inference. It must
have been trained for the same task, classes and input size.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import FairError
from .run_folder import read_record, run_state, spec_hash
from .spec import validate_params

if TYPE_CHECKING:
    from .data import DataInfo
    from .runner import ResolvedRun
    from .spec import RunSpec

BASE_DIR = "base"
BASE_FIELD = "method.params.base"


class BaseModelParams(BaseModel):
    """Parameters every two-stage method has; its own ``Params`` extend these."""

    model_config = ConfigDict(extra="forbid")
    base: str | None = Field(
        None, min_length=1, max_length=1000,
        description="the trained model to start from: a finished run folder or a Hub id (from_pretrained); "
        "omitted: an erm run of this spec is trained first in <output_dir>/base (stage 1)",
    )


def stage_one_spec(spec: RunSpec) -> RunSpec:
    """The spec of stage 1: ``erm`` on the same data, model and recipe, in ``<output_dir>/base``,
    evaluated as the run is (so its metrics.json is the baseline's), never pushed."""
    return spec.model_copy(update={
        "method": spec.method.model_copy(update={"name": "erm", "params": {}}),
        "output_dir": str(Path(spec.output_dir) / BASE_DIR),
        "hub": spec.hub.model_copy(update={"push": False}),
    })


def train_stage_one(spec: RunSpec, resume: bool, overwrite: bool) -> Path:
    """Train the base model of ``spec`` (stage 1) unless ``<output_dir>/base`` already holds it,
    finished, for this very spec; returns its folder."""
    from .runner import Trainer, resolve

    stage_one = stage_one_spec(spec)
    folder = Path(stage_one.output_dir)
    dumped = stage_one.model_dump(mode="json")
    record = read_record(folder) or {}
    if run_state(folder) == "finished" and record.get("spec_hash") == spec_hash(dumped) and (folder / "model.safetensors").is_file():
        return folder
    try:
        trainer = Trainer(resolve(stage_one))
        trainer.last_stage = False
        trainer.fit(resume=resume, overwrite=overwrite)
    except FairError as exc:
        raise FairError(f"{BASE_FIELD} (stage 1, the base model in {folder}): {exc}") from None
    return folder


def load_base(source: str | Path, run: ResolvedRun, info: DataInfo, field: str = BASE_FIELD) -> nn.Module:
    """The base model ``source`` names, as the spec's model built for ``info``'s classes with the
    base's weights, frozen (no gradients) and in eval mode; a :class:`FairError` naming ``field``
    (``method.params.base``, or ``model.init`` for fine-tuning) when it cannot be that."""
    from .hub import FairModel

    try:
        loaded = FairModel.from_pretrained(source)
    except FairError as exc:
        raise FairError(f"{field}: cannot load {source}: {exc}") from None
    spec = run.spec
    if loaded.task != run.task.name:
        raise FairError(f"{field}: {source} is a {loaded.task} model; this run's task is {run.task.name}")
    if tuple(loaded.class_names) != tuple(info.class_names):
        raise FairError(f"{field}: the classes of {source} ({', '.join(loaded.class_names[:5])}) are not the "
                        f"training data's ({', '.join(info.class_names[:5])})")
    if loaded.preprocessing.image_size != info.preprocessing.image_size:
        raise FairError(f"{field}: {source} takes {loaded.preprocessing.image_size} px images; the training data "
                        f"has {info.preprocessing.image_size} px")
    config = loaded.fair_config
    if config["model"]["name"] != spec.model.name:
        raise FairError(f"{field}: {source} is a {config['model']['name']} model; the spec's model.name is "
                        f"{spec.model.name} (the model keeps its architecture)")
    def architecture(params: BaseModel) -> dict:  # the model's params but where its weights come from
        return {k: v for k, v in params.model_dump(mode="json").items() if k != "pretrained"}

    base_params = architecture(validate_params(run.model.Params, config["model"]["params"], "model.params"))
    spec_params = architecture(run.model.params)
    if base_params != spec_params:
        raise FairError(f"{field}: {source} has the model.params {base_params}; the spec's are {spec_params} "
                        f"(the model keeps its architecture)")
    model = run.model.build(info.num_classes)
    try:
        model.load_state_dict(loaded.network.state_dict())
    except RuntimeError:  # missing, unexpected or differently shaped tensors
        raise FairError(f"{field}: {source} was trained with the method {config['method']['name']}, whose model "
                        f"is not a plain {spec.model.name} with these model.params; start from a model trained "
                        f"with erm (or us, os, uw)") from None
    model.requires_grad_(False)
    return model.eval()
