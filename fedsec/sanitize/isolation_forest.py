"""Isolation forest on a client's inputs or on the global model's penultimate-layer embeddings.

Liu, Ting, Zhou, "Isolation Forest", ICDM 2008 (https://doi.org/10.1109/ICDM.2008.17), through scikit-learn's
``sklearn.ensemble.IsolationForest`` (used as is: it is the reference implementation most users know). The source
surveys' "data autoclaving" (Al-Karaki et al., "Deep Learning Under Siege", 2024, sec. 3.2 item 3) asks for removing
anomalous examples; this is one anomaly detector for it.

Defaults: ``features = "inputs"`` (flattened raw inputs), ``contamination = "auto"`` (the paper's offset: a point is
an outlier when its anomaly score exceeds 0.5), ``n_estimators = 100``, ``max_samples = "auto"`` (min(256, N)),
``random_state = seed``. With ``features = "embedding"`` the forest runs on the input of the given model's last
``nn.Linear`` layer (its penultimate representation), captured with a forward hook, so any fedsec model works.
Departure: none from scikit-learn; ``scores`` are ``-score_samples`` (higher = more anomalous), and labels are not
used (the forest sees inputs only, so it targets outliers and triggers, not mislabelled clean inputs).
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fedsec.registry import Params

from .base import FilterResult, SanitizeError, Sanitizer, check_choice, check_number

FEATURES = ("inputs", "embedding")


# --------------------------------------------------------------------------------------------------------- kernels


@torch.no_grad()
def penultimate_embeddings(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Inputs of ``model``'s last ``nn.Linear`` for ``x`` (N, ...), flattened to (N, D), in eval mode."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise SanitizeError("defense.sanitize.features='embedding': the model has no nn.Linear layer; use 'inputs'")
    captured: list[torch.Tensor] = []
    handle = last[-1].register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].flatten(1)))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size])
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


# ------------------------------------------------------------------------------------------------------------ glue


class IsolationForestParams(Params):
    """``[defense.sanitize]`` keys of ``method = "isolation_forest"``."""

    contamination: Annotated[float, Field(gt=0, le=0.5)] | Literal["auto"] = Field(
        "auto", description="expected outlier share, in (0, 0.5] (scikit-learn's range), or 'auto'.")
    features: Literal["inputs", "embedding"] = Field(
        "inputs", description="raw inputs or the global model's penultimate-layer embeddings.")


class IsolationForestFilter(Sanitizer):
    """Drop the points scikit-learn's ``IsolationForest`` predicts as outliers.

    Parameters:
        contamination (float | "auto", default "auto"): expected share of outliers, in (0, 0.5], or "auto".
        features (str, default "inputs"): "inputs" (flattened) or "embedding" (needs ``model``).
        n_estimators (int, default 100): number of trees.
        max_samples (int | "auto", default "auto"): points per tree.

    Assumptions: the client holds enough points for a forest (>= 2); labels are ignored.
    """

    method = "isolation_forest"
    description = "scikit-learn's isolation forest on the inputs or on the global model's embeddings"
    Params = IsolationForestParams

    @classmethod
    def per_round(cls, keys: dict) -> bool:
        return keys.get("features", "inputs") == "embedding"  # the global model changes every round

    def __init__(
        self,
        *,
        contamination: float | str = "auto",
        features: str = "inputs",
        n_estimators: int = 100,
        max_samples: int | str = "auto",
    ) -> None:
        self.contamination, self.features = contamination, features
        self.n_estimators, self.max_samples = n_estimators, max_samples
        super().__init__()

    def _check_params(self) -> None:
        if self.contamination != "auto":
            check_number("contamination", self.contamination, low=0.0, high=0.5, low_open=True, example="0.1 or 'auto'")
        check_choice("features", self.features, FEATURES)
        check_number("n_estimators", self.n_estimators, low=1, integer=True, example="100")
        if self.max_samples != "auto":
            check_number("max_samples", self.max_samples, low=2, integer=True, example="256 or 'auto'")

    def _filter(self, x: np.ndarray, y: np.ndarray, *, x_raw, model: nn.Module | None, seed: int) -> FilterResult:
        if self.features == "embedding":
            if model is None:
                raise SanitizeError(
                    "defense.sanitize.features='embedding' needs the global model; pass model=..., or use 'inputs'"
                )
            device = next(model.parameters()).device
            xt = x_raw if isinstance(x_raw, torch.Tensor) else torch.as_tensor(x)
            feats = penultimate_embeddings(model, xt.to(device=device, dtype=torch.float32)).cpu().numpy()
        else:
            feats = x.reshape(x.shape[0], -1)
        if feats.shape[0] < 2:
            return FilterResult(keep=np.ones(feats.shape[0], bool), scores=np.zeros(feats.shape[0]), method=self.method)
        from sklearn.ensemble import IsolationForest  # here: scikit-learn costs ~2 s of start-up

        forest = IsolationForest(
            n_estimators=self.n_estimators,
            max_samples=self.max_samples,
            contamination=self.contamination,
            random_state=seed,
        ).fit(feats)
        scores = -forest.score_samples(feats)
        keep = forest.predict(feats) == 1
        return FilterResult(keep=keep, scores=scores, method=self.method, threshold=float(-forest.offset_))
