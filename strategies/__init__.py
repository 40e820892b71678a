"""Server strategies (robust aggregation), importable as ``fedsec.strategies``.

Each strategy is a Flower Message-API strategy usable in any Flower ServerApp; ``STRATEGIES`` maps the config's
``defense.strategy`` names to them.
"""

from __future__ import annotations

from .base import ClientDecision, RobustStrategy, RoundReport, StrategyConfigError
from .bulyan import Bulyan, bulyan_aggregate
from .centered_clipping import CenteredClipping, centered_clip
from .dnc import DnC, dnc_aggregate, dnc_select
from .fedavg import FedAvg, fedavg_aggregate
from .flame import FLAME, flame_aggregate
from .fltrust import FLTrust, fltrust_aggregate
from .foolsgold import FoolsGold, foolsgold_aggregate, foolsgold_weights
from .geometric_median import GeometricMedian, geometric_median
from .krum import Krum
from .median import Median, coordinate_median
from .multikrum import MultiKrum, krum_scores, multikrum_aggregate, multikrum_select
from .norm_clipping import NormClipping, norm_clip
from .trimmed_mean import TrimmedMean, trimmed_mean

#: defense.strategy name -> (class, one-line description)
STRATEGIES: dict[str, tuple[type[RobustStrategy], str]] = {
    "fedavg": (FedAvg, "Federated Averaging, no defense (McMahan et al. 2017)"),
    "krum": (Krum, "Krum: the update closest to its n-f-2 nearest neighbours (Blanchard et al. 2017); num_malicious"),
    "multikrum": (MultiKrum, "Multi-Krum: mean of the m lowest Krum scores; num_malicious, num_selected"),
    "bulyan": (Bulyan, "Bulyan: Multi-Krum then trimmed mean around the median (El Mhamdi et al. 2018); num_malicious"),
    "median": (Median, "coordinate-wise median (Yin et al. 2018)"),
    "trimmed_mean": (TrimmedMean, "coordinate-wise trimmed mean (Yin et al. 2018); trim_ratio"),
    "geomed": (GeometricMedian, "geometric median by smoothed Weiszfeld, RFA (Pillutla et al. 2022); iterations"),
    "norm_clipping": (NormClipping, "norm bounding + optional Gaussian noise (Sun et al. 2019); clip_norm, noise_std"),
    "centered_clipping": (CenteredClipping, "centered clipping (Karimireddy et al. 2021); clip_norm, iterations"),
    "fltrust": (FLTrust, "FLTrust: ReLU-cosine trust vs the server's root-data update (Cao et al. 2021); root_size"),
    "flame": (FLAME, "FLAME: HDBSCAN majority, median-norm clipping, noise (Nguyen et al. 2022); noise_lambda"),
    "foolsgold": (FoolsGold, "FoolsGold: down-weight clients with similar update histories (Fung et al. 2020); kappa"),
    "dnc": (DnC, "Divide-and-Conquer: SVD outlier filtering (Shejwalkar & Houmansadr 2021); num_malicious, iterations,"
            " subsample_dim, filter_frac"),
}

__all__ = [
    "FLAME",
    "STRATEGIES",
    "DnC",
    "FLTrust",
    "FoolsGold",
    "dnc_aggregate",
    "dnc_select",
    "flame_aggregate",
    "fltrust_aggregate",
    "foolsgold_aggregate",
    "foolsgold_weights",
    "Bulyan",
    "CenteredClipping",
    "ClientDecision",
    "FedAvg",
    "GeometricMedian",
    "Krum",
    "Median",
    "MultiKrum",
    "NormClipping",
    "RobustStrategy",
    "RoundReport",
    "StrategyConfigError",
    "TrimmedMean",
    "bulyan_aggregate",
    "centered_clip",
    "coordinate_median",
    "fedavg_aggregate",
    "geometric_median",
    "krum_scores",
    "multikrum_aggregate",
    "multikrum_select",
    "norm_clip",
    "trimmed_mean",
]
