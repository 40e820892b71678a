"""Model extraction and hyperparameter stealing against a served model (black-box over HTTP)."""

from .client import Answer, QueryRefused, QueryStats, RemoteModel
from .equation import (
    EquationResult,
    equation_solving_attack,
    logreg_parameters,
    relative_parameter_error,
    solve_softmax_equations,
)
from .hyperparameters import HyperparameterEstimate, stationary_l2_strength, steal_l2_regularisation
from .jacobian import jacobian_augment, jacobian_extract
from .knockoff import budget_checkpoints, knockoff_extract
from .results import CurvePoint, ExtractionResult, write_result_dir

__all__ = [
    "Answer",
    "CurvePoint",
    "EquationResult",
    "ExtractionResult",
    "HyperparameterEstimate",
    "QueryRefused",
    "QueryStats",
    "RemoteModel",
    "budget_checkpoints",
    "equation_solving_attack",
    "jacobian_augment",
    "jacobian_extract",
    "knockoff_extract",
    "logreg_parameters",
    "relative_parameter_error",
    "solve_softmax_equations",
    "stationary_l2_strength",
    "steal_l2_regularisation",
    "write_result_dir",
]
