"""VLBC's classifier training (D'Inca et al., "Improving Fairness using Vision-Language Driven
Image Augmentation", WACV 2024): the focal loss on real + attribute-edited images.

Loss: ``L = (1/N) sum_i -alpha (1 - p_i)^gamma log p_i`` with ``p_i`` the softmax probability
of the target (Lin et al., ICCV 2017), alpha 0.25 and gamma 3 as in VLBC's code
(:func:`fair_core.losses.focal_loss`). The method is the last step of the pipeline: the data is
a ``concat`` of the real training set and the images ``fair augment`` wrote, and ``model.init``
names the baseline it fine-tunes (VLBC: baseline lr 1e-3 for 100 epochs, then lr 1e-4 for 50).
On the synthetic data the README's VLBC table was measured with cross-entropy (``erm``,
``examples/vlbc/finetune.json``); this method is VLBC's own recipe.
"""

from pydantic import BaseModel, ConfigDict, Field

from fair_core import Method
from fair_core.losses import focal_loss


class VLBCParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.25, gt=0, description="focal loss weight")
    gamma: float = Field(3.0, ge=0, description="focal loss focusing exponent")


class VLBC(Method):
    """Fine-tuning on real + edited images (`fair augment`) with VLBC's focal loss."""

    Params = VLBCParams
    stage = "pre-processing"
    uses_task_loss = False  # its own loss (train.loss other than cross_entropy is refused)
    description = "VLBC fine-tuning: focal loss on real + `fair augment` edited images (concat data, model.init)"
    paper = "D'Inca et al., Improving Fairness using Vision-Language Driven Image Augmentation, WACV 2024"

    def compute_loss(self, model, batch):
        return focal_loss(model(batch["image"]), batch["target"], self.params.alpha, self.params.gamma)
