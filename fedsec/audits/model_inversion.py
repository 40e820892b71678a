"""Output-driven model inversion: one representative input per class from the model's outputs alone.

Fredrikson, Jha, Ristenpart, "Model Inversion Attacks that Exploit Confidence Information and Basic
Countermeasures", ACM CCS 2015, https://doi.org/10.1145/2810103.2813677, run with the Adversarial Robustness
Toolbox's ``MIFace`` (gradient ascent on the class score, ``art.attacks.inference.model_inversion``) on an ART
``PyTorchClassifier`` whose ``clip_values`` are the input box.

Each representative is compared with every class's mean training image (pixel scale [0, 1]): SSIM, PSNR and cosine
similarity. Cosine is taken after subtracting the mean of the class means (raw non-negative images all have cosine
near 1), so it measures the class-specific pattern. ``top1_*`` is the share of classes whose representative is
closest to its own class mean.

Defaults: ``max_iter=1000``, ``window_length=100``, ``threshold=0.99``, ``learning_rate=0.1`` (ART's, except
``max_iter``, 10000 in ART), ``batch_size`` = one batch of all classes; start at grey (pixel 0.5).

Differences from the paper: the paper's MI-Face adds a denoising/sharpening post-process (an autoencoder); ART's
``MIFace`` (used as is) omits it, and so does this module.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .image_metrics import cosine, psnr, ssim
from .input_space import UNIT, InputSpace

log = logging.getLogger(__name__)


class ModelInversionConfigError(ValueError):
    """Bad model-inversion parameters; the message names the ``audit.model_inversion`` key and the fix."""


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean image per class, (N, ...) and (N,) -> (num_classes, ...); NaN for a class without examples."""
    x = torch.as_tensor(x).double()
    y = torch.as_tensor(y).long()
    sums = torch.zeros((num_classes, *x.shape[1:]), dtype=x.dtype).index_add_(0, y, x)
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    return sums / counts.reshape(-1, *([1] * (x.dim() - 1)))


def similarity_matrices(reps: torch.Tensor, means: torch.Tensor) -> dict[str, torch.Tensor]:
    """(K, C, H, W) representatives x (M, C, H, W) means (pixels) -> {"ssim", "psnr", "cosine"} each (K, M)."""
    k, m = reps.shape[0], means.shape[0]
    a = reps.repeat_interleave(m, dim=0)
    b = means.repeat(k, 1, 1, 1)
    centre = means.mean(dim=0, keepdim=True)
    return {
        "ssim": ssim(a, b).reshape(k, m),
        "psnr": psnr(a, b).reshape(k, m),
        "cosine": cosine(a - centre, b - centre).reshape(k, m),
    }


@dataclass(frozen=True)
class ModelInversionResult:
    """Class representatives and their similarity to each class mean (rows: representatives, cols: means)."""

    representatives: torch.Tensor  # (K, C, H, W) model units
    classes: torch.Tensor  # (K,) the class each representative was inverted for
    similarity: dict[str, torch.Tensor]  # "ssim" | "psnr" | "cosine" -> (K, num_classes)
    seconds: float

    def true_class(self, metric: str) -> torch.Tensor:
        """(K,) similarity of each representative to its own class mean."""
        return self.similarity[metric][torch.arange(len(self.classes)), self.classes]

    def top1(self, metric: str) -> float:
        """Share of representatives whose closest class mean (by ``metric``) is their own class."""
        return float((self.similarity[metric].argmax(dim=1) == self.classes).double().mean())

    def summary(self) -> dict[str, float]:
        out = {}
        for metric in self.similarity:
            own = self.true_class(metric)
            mask = torch.ones_like(self.similarity[metric], dtype=torch.bool)
            mask[torch.arange(len(self.classes)), self.classes] = False
            out[f"{metric}_true_class"] = float(own.mean())
            out[f"{metric}_other_classes"] = float(self.similarity[metric][mask].mean())
            out[f"top1_{metric}"] = self.top1(metric)
        return out


class ModelInversion:
    """MI-Face (Fredrikson et al. 2015) via ART: reconstruct a representative input per class.

    Parameters:
        model (nn.Module): the (global) model, queried for outputs and their input gradients only.
        input_shape (tuple[int, ...]): (C, H, W) of one input.
        num_classes (int): number of classes.
        input_space (InputSpace, default pixels in [0, 1]): box constraint and pixel mapping.
        max_iter (int, default 1000), window_length (int, default 100), threshold (float, default 0.99),
        learning_rate (float, default 0.1): ART ``MIFace`` parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        input_space: InputSpace = UNIT,
        max_iter: int = 1000,
        window_length: int = 100,
        threshold: float = 0.99,
        learning_rate: float = 0.1,
    ) -> None:
        self.model = model
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.input_space = input_space
        self.max_iter = max_iter
        self.window_length = window_length
        self.threshold = threshold
        self.learning_rate = learning_rate
        self._check_params()

    def _check_params(self) -> None:
        key = "audit.model_inversion"
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, int) or self.max_iter < 1:
            raise ModelInversionConfigError(f"{key}.max_iter={self.max_iter!r}: must be an integer >= 1; use 1000")
        if not isinstance(self.window_length, int) or self.window_length < 1:
            raise ModelInversionConfigError(f"{key}.window_length={self.window_length!r}: must be an integer >= 1")
        if not 0 < self.threshold <= 1:
            raise ModelInversionConfigError(f"{key}.threshold={self.threshold!r}: must be in (0, 1]; use 0.99")
        if not self.learning_rate > 0:
            raise ModelInversionConfigError(f"{key}.learning_rate={self.learning_rate!r}: must be > 0; use 0.1")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ModelInversionConfigError(f"{key}: num_classes={self.num_classes!r} must be an integer >= 2")

    def _classifier(self):
        from art.estimators.classification import PyTorchClassifier

        return PyTorchClassifier(
            model=self.model,
            loss=nn.CrossEntropyLoss(),
            input_shape=self.input_shape,
            nb_classes=self.num_classes,
            clip_values=(self.input_space.low, self.input_space.high),
            device_type="gpu" if next(self.model.parameters()).is_cuda else "cpu",
        )

    def infer(
        self, x_reference: torch.Tensor, y_reference: torch.Tensor, *, classes: list[int] | None = None
    ) -> ModelInversionResult:
        """Invert each class in ``classes`` (default all) and compare with the class means of the reference data.

        The reference data (model units) is used only for scoring, never by the attack.
        """
        from art.attacks.inference.model_inversion import MIFace

        classes = list(range(self.num_classes)) if classes is None else list(classes)
        bad = [c for c in classes if not 0 <= c < self.num_classes]
        if bad:
            raise ModelInversionConfigError(f"classes={bad}: not in 0..{self.num_classes - 1}")
        start = time.perf_counter()
        self.model.eval()
        attack = MIFace(
            self._classifier(),
            max_iter=self.max_iter,
            window_length=self.window_length,
            threshold=float(self.threshold),
            learning_rate=float(self.learning_rate),
            batch_size=len(classes),
            verbose=False,
        )
        grey = float(self.input_space.from_pixels(torch.tensor(0.5)))
        x0 = np.full((len(classes), *self.input_shape), grey, dtype=np.float32)
        reps = torch.as_tensor(attack.infer(x0, np.asarray(classes, dtype=np.int64)))
        seconds = time.perf_counter() - start
        px = self.input_space.to_pixels
        means = px(class_means(torch.as_tensor(x_reference), torch.as_tensor(y_reference), self.num_classes))
        sim = similarity_matrices(px(reps.double()), means)
        result = ModelInversionResult(reps, torch.as_tensor(classes), sim, seconds)
        log.info("model inversion (MIFace): %d classes in %.1fs, %s", len(classes), seconds, result.summary())
        return result
