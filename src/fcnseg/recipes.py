"""Training recipes as data: the paper's two, and one of ours for small models on a CPU.

- "cvpr": Long et al. CVPR 2015, section 4.3: SGD momentum 0.9, minibatch 20, fixed lr 1e-3
  (AlexNet), 1e-4 (VGG16), 5e-5 (GoogLeNet), weight decay 5e-4, biases at twice the lr and
  no decay, the per-pixel softmax loss averaged over labelled pixels (255 ignored).
- "heavy": the reference release (TPAMI): batch 1, momentum 0.99, fixed lr 1e-10 (32s),
  1e-12 (16s), 1e-14 (8s), 1e-10 (at-once) with an UNNORMALIZED loss (summed over pixels),
  100k iterations per stage (300k at once); every upsampling layer frozen at bilinear.
- "heavy_alexnet": the reference FCN-AlexNet: momentum 0.9, lr 1e-4, averaged loss, 20
  images accumulated per step. `--recipe heavy` gives it to voc-fcn-alexnet: the release's own
  solver for that net (`for_model`).

The paper's "AlexNet" is Caffe's reference CaffeNet (the release's voc-fcn-alexnet trunk), so
the AlexNet rates are also keyed "caffenet".
- today's classifiers (ResNet, MobileNetV3, EfficientNet-Lite; fcnseg.models.modern) under
  "cvpr": SGD at 1e-3 (`MODERN_CVPR_LR`, ours); "heavy" keeps its rates by head, "modern" its 1e-3.
- "modern" (ours, not the paper's): AdamW, lr 1e-3, weight decay 1e-4, poly decay, batch 16;
  for training small models from scratch, e.g. the digit-scenes benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["RECIPES", "REFERENCE_LR", "REFERENCE_SOLVERS", "Recipe", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    optimizer: str  # "sgd" or "adamw"
    lr: dict[str, float]  # by model-name prefix or backbone; the longest matching key wins
    momentum: float = 0.9
    weight_decay: float = 5e-4
    bias_lr_mult: float = 2.0  # Caffe's lr_mult 2 on biases
    bias_decay: bool = False
    batch_size: int = 20  # images per optimizer step (all processes together)
    accumulate: int = 1  # micro-batches per step (the reference's iter_size)
    loss: str = "mean"  # "mean" over labelled pixels, or "sum" (unnormalized)
    schedule: str = "fixed"  # "fixed" or "poly" (lr * (1 - step/steps) ** 0.9)
    learn_upsampling: bool = True  # 2x layers learned from bilinear; final one always fixed
    steps: dict[str, int] = field(default_factory=dict)  # iterations per stage, as published
    ours: bool = False  # True: not from the paper

    def lr_for(self, model_name: str) -> float:
        """The learning rate this recipe gives `model_name` (e.g. "fcn16s_vgg16").

        A release net by its folder name (e.g. "nyud-fcn32s-color-hha"): under its release
        solver (heavy; heavy_alexnet for voc-fcn-alexnet) the release's own rate for that net
        (FCN.md 8), else the rate of its head and trunk (e.g. fcn32s_vgg16, fcn_alexnet_caffenet).
        """
        from .models.reference import REFERENCE_NETS

        spec = REFERENCE_NETS.get(model_name)
        if self.for_model(model_name) is not self:  # heavy on voc-fcn-alexnet: its own solver
            return self.for_model(model_name).lr_for(model_name)
        if spec is not None:
            solver = REFERENCE_SOLVERS.get(model_name)
            if solver is not None and self.name == solver[0]:
                return solver[1]
            model_name = f"{spec.variant}_{spec.arch.name}"
        keys = [k for k in self.lr if model_name.startswith(k) or model_name.endswith(k)]
        if not keys:
            raise ValueError(
                f"recipe '{self.name}' has no learning rate for '{model_name}' (it has "
                f"{', '.join(self.lr)}): pass lr= / --lr"
            )
        return self.lr[max(keys, key=len)]

    def for_model(self, model_name: str) -> Recipe:
        """The recipe that trains `model_name`: this one, except "heavy" (the release's solvers)
        on a release net that the release trained with another solver (voc-fcn-alexnet:
        heavy_alexnet's momentum 0.9, lr 1e-4, averaged loss, 20 images accumulated)."""
        solver = REFERENCE_SOLVERS.get(model_name)
        if self.name == "heavy" and solver is not None and solver[0] != self.name:
            return RECIPES[solver[0]]
        return self


# The paper's recipe on today's BN trunks (fcnseg.models.modern): ours, not the paper's, which had
# none. Batch-normalized nets take ~10x VGG16's rate: torchvision's segmentation reference trains
# fcn_resnet50 by SGD at 0.02 (batch 32, poly decay); at a fixed rate and batch 20, 1e-3 (a tenth
# of the linearly scaled 0.0125) keeps fine-tuning from ImageNet stable.
MODERN_CVPR_LR = {"resnet18": 1e-3, "resnet34": 1e-3, "resnet50": 1e-3,
                  "mobilenet_v3_large": 1e-3, "efficientnet_lite0": 1e-3}  # fmt: skip

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("cvpr", "CVPR 2015: SGD 0.9, batch 20, fixed lr, averaged loss", "sgd",
               {"alexnet": 1e-3, "caffenet": 1e-3, "vgg16": 1e-4, "googlenet": 5e-5,
                **MODERN_CVPR_LR}),
        Recipe("heavy", "reference release: batch 1, momentum 0.99, summed loss", "sgd",
               {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s_atonce": 1e-10},
               momentum=0.99, batch_size=1, loss="sum", learn_upsampling=False,
               steps={"fcn32s": 100_000, "fcn16s": 100_000, "fcn8s": 100_000,
                      "fcn8s_atonce": 300_000}),
        Recipe("heavy_alexnet", "reference FCN-AlexNet: lr 1e-4, 20 images accumulated", "sgd",
               {"alexnet": 1e-4, "caffenet": 1e-4}, batch_size=20, accumulate=20,
               learn_upsampling=False),
        Recipe("modern", "ours: AdamW 1e-3, poly decay, batch 16 (small models, CPU)", "adamw",
               {"fcn": 1e-3}, weight_decay=1e-4, bias_lr_mult=1.0, batch_size=16,
               schedule="poly", ours=True),
    )
}  # fmt: skip


# The release's solver per net (FCN.md 8): (recipe, learning rate). The VGG16 nets: the heavy
# solver (batch 1, momentum 0.99, unnormalized loss); voc-fcn-alexnet its own (heavy_alexnet).
REFERENCE_SOLVERS = {
    "voc-fcn32s": ("heavy", 1e-10), "voc-fcn16s": ("heavy", 1e-12),
    "voc-fcn8s": ("heavy", 1e-14), "voc-fcn8s-atonce": ("heavy", 1e-10),
    "voc-fcn-alexnet": ("heavy_alexnet", 1e-4),
    "nyud-fcn32s-color": ("heavy", 1e-10), "nyud-fcn32s-hha": ("heavy", 1e-10),
    "nyud-fcn32s-color-d": ("heavy", 1e-10), "nyud-fcn32s-color-hha": ("heavy", 1e-12),
    "pascalcontext-fcn32s": ("heavy", 1e-10), "pascalcontext-fcn16s": ("heavy", 1e-12),
    "pascalcontext-fcn8s": ("heavy", 1e-14),
    "siftflow-fcn32s": ("heavy", 1e-10), "siftflow-fcn16s": ("heavy", 1e-12),
    "siftflow-fcn8s": ("heavy", 1e-12),
}  # fmt: skip
# the heavy solver's rates alone (what earlier versions exported)
REFERENCE_LR = {net: lr for net, (recipe, lr) in REFERENCE_SOLVERS.items() if recipe == "heavy"}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe '{name}': use one of {', '.join(RECIPES)}")
    return RECIPES[name]
