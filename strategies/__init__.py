"""Server strategies (robust aggregation), importable as ``fedsec.strategies``.

Each strategy is a Flower Message-API strategy usable in any Flower ServerApp; ``STRATEGIES`` maps the config's
``defense.strategy`` names to them. Adding a rule: copy ``median.py`` (kernel on top, class below, its ``Params``
and ``description``), then one ``STRATEGIES.register`` line here. ``PRE_AGGREGATORS`` maps the names of
``defense.pre`` to the pre-aggregators that run before any rule (:mod:`fedsec.strategies.pre`, one file each);
``SERVER_OPTIMIZERS`` maps ``server.optimizer`` to the step taken on the rule's aggregate
(:mod:`fedsec.strategies.server_optimizers`).
"""

from __future__ import annotations

from fedsec.registry import Registry

from .base import ClientDecision, RobustStrategy, RoundReport, StrategyConfigError, StrategyContext
from .bulyan import Bulyan, bulyan_aggregate
from .centered_clipping import CenteredClipping, centered_clip
from .crfl import CRFL, CrflSchedule, clip_and_perturb, crfl_clip_bound
from .dnc import DnC, dnc_aggregate, dnc_select
from .fedavg import FedAvg, fedavg_aggregate
from .flame import FLAME, flame_aggregate
from .fldetector import FLDetector
from .fltrust import FLTrust, fltrust_aggregate
from .foolsgold import FoolsGold, foolsgold_aggregate, foolsgold_weights
from .freqfed import FreqFed, freqfed_aggregate
from .geometric_median import GeometricMedian, geometric_median
from .krum import Krum
from .median import Median, coordinate_median
from .multi_metrics import MultiMetrics, multi_metrics_aggregate, multi_metrics_scores
from .multikrum import MultiKrum, krum_scores, multikrum_aggregate, multikrum_select
from .norm_clipping import NormClipping, norm_clip
from .pre import ARC, NNM, Bucketing, PreAggregator, plan_pre_aggregators
from .server_optimizers import SERVER_OPTIMIZERS, ServerOptimizer
from .trimmed_mean import TrimmedMean, trimmed_mean

#: defense.strategy name -> strategy class (each declares its ``Params`` and ``description``); one line per rule
STRATEGIES: Registry[type[RobustStrategy]] = Registry("defense.strategy", "strategy")
STRATEGIES.register("fedavg", FedAvg)
STRATEGIES.register("krum", Krum)
STRATEGIES.register("multikrum", MultiKrum)
STRATEGIES.register("bulyan", Bulyan)
STRATEGIES.register("median", Median)
STRATEGIES.register("trimmed_mean", TrimmedMean)
STRATEGIES.register("geomed", GeometricMedian)
STRATEGIES.register("norm_clipping", NormClipping)
STRATEGIES.register("centered_clipping", CenteredClipping)
STRATEGIES.register("fltrust", FLTrust)
STRATEGIES.register("flame", FLAME)
STRATEGIES.register("foolsgold", FoolsGold)
STRATEGIES.register("dnc", DnC)
STRATEGIES.register("multi_metrics", MultiMetrics)
STRATEGIES.register("freqfed", FreqFed)
STRATEGIES.register("fldetector", FLDetector)
STRATEGIES.register("crfl", CRFL)

#: defense.pre name -> pre-aggregator class (each declares its ``Params`` and ``description``); one line per step
PRE_AGGREGATORS: Registry[type[PreAggregator]] = Registry("defense.pre", "pre-aggregator")
PRE_AGGREGATORS.register("nnm", NNM)
PRE_AGGREGATORS.register("bucketing", Bucketing)
PRE_AGGREGATORS.register("arc", ARC)

__all__ = [
    "ARC",
    "FLAME",
    "NNM",
    "PRE_AGGREGATORS",
    "SERVER_OPTIMIZERS",
    "STRATEGIES",
    "ServerOptimizer",
    "Bucketing",
    "PreAggregator",
    "plan_pre_aggregators",
    "DnC",
    "MultiMetrics",
    "FLDetector",
    "FreqFed",
    "freqfed_aggregate",
    "multi_metrics_aggregate",
    "multi_metrics_scores",
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
    "CRFL",
    "CrflSchedule",
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
    "StrategyContext",
    "TrimmedMean",
    "bulyan_aggregate",
    "centered_clip",
    "clip_and_perturb",
    "crfl_clip_bound",
    "coordinate_median",
    "fedavg_aggregate",
    "geometric_median",
    "krum_scores",
    "multikrum_aggregate",
    "multikrum_select",
    "norm_clip",
    "trimmed_mean",
]
