"""A test dataset with one setting of its own: scikit-learn's digits with Gaussian noise of ``noise_std``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydantic import Field

from fedsec.data import DatasetSpec, load_digits
from fedsec.data.datasets import ArrayDataset
from fedsec.registry import Params


class NoisyDigitsParams(Params):
    noise_std: float = Field(0.1, ge=0, le=10, description="std of the noise added to every pixel.")


def load(*, seed: int = 0, params: NoisyDigitsParams | None = None, **_: object) -> ArrayDataset:
    params = params or NoisyDigitsParams()
    digits = load_digits(seed=seed)
    rng = np.random.default_rng([seed, 7])
    noisy = digits.x_train + rng.normal(0, params.noise_std, digits.x_train.shape).astype(np.float32)
    return replace(digits, name="noisy_digits", x_train=noisy)


NOISY_DIGITS = DatasetSpec("test dataset: digits with noise", (1, 8, 8), 10, load, train_size=1_347, test_size=450,
                           Params=NoisyDigitsParams)
