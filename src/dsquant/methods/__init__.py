"""Selection methods, one registry.

| name | class | what it does |
|---|---|---|
| ``random`` | :class:`Random` | class-balanced random sampling (the baseline) |
| ``dq`` | :class:`DQ` | GraphCut bins + the same fraction of every bin |
| ``adq`` | :class:`ADQ` | DQ's bins, per-bin shares from importance and size |
| ``dq-budget`` | :class:`DQBudget` | DQ's bins, shares that follow the budget (dsquant) |
| ``herding-drop`` | :class:`HerdingDrop` | herding over DQ's bins but the last (dsquant) |
| ``kcenter`` | :class:`KCenterGreedy` | k-center greedy in the embedding |
| ``herding`` | :class:`Herding` | running mean closest to the class mean |
| ``facility-location`` | :class:`FacilityLocation` | submodular facility location |
| ``moderate-ds`` | :class:`ModerateDS` | distance to the class median closest to its median |
| ``prototypes`` | :class:`Prototypes` | distance to the k-means centroid |
| ``typiclust`` | :class:`TypiClust` | the most typical sample of budget-many k-means clusters |
| ``el2n`` | :class:`EL2N` | error L2 norm early in training (Paul et al. 2021) |
| ``grand`` | :class:`GraNd` | gradient norm early in training (Paul et al. 2021) |
| ``forgetting`` | :class:`Forgetting` | forgetting events in training (Toneva et al. 2019) |
| ``least-confidence``, ``entropy``, ``margin`` | :class:`LeastConfidence`, ... | uncertainty of the trained proxy |
| ``ccs`` | :class:`CCS` | coverage-centric stratified sampling, hardest cut (Zheng et al. 2023) |
| ``validated`` | :class:`Validated` | the best of its candidates on a validation split (dsquant) |

The CLI's ``--method`` choices, the benchmark grid and ``dsquant info`` read :data:`METHODS`;
a method added with :func:`register_method` is available to all of them.
"""

from __future__ import annotations

import inspect

from .base import Context, Selection, SelectionMethod, check_int, check_unit
from .baselines import FacilityLocation, Herding, KCenterGreedy, ModerateDS, Prototypes, TypiClust
from .budget import DQBudget, HerdingDrop
from .dq import ADQ, DQ, Random
from .dynamics import CCS, DYNAMICS_METHODS, EL2N, Entropy, Forgetting, GraNd, LeastConfidence, Margin
from .validated import Validated

__all__ = ["ADQ", "CCS", "DQ", "DQBudget", "DYNAMICS_METHODS", "EL2N", "Entropy", "Forgetting", "GraNd", "LeastConfidence", "Margin", "FacilityLocation", "Herding", "HerdingDrop", "KCenterGreedy", "METHODS", "ModerateDS", "Prototypes", "Context", "Random", "Selection", "SelectionMethod", "TypiClust", "Validated", "check_int", "check_unit", "make_method", "register_method"]

METHODS: dict[str, type[SelectionMethod]] = {cls.name: cls for cls in (DQ, ADQ, DQBudget, Validated, Random, KCenterGreedy, Herding, HerdingDrop, FacilityLocation, ModerateDS, Prototypes, TypiClust, *DYNAMICS_METHODS)}
"""Every selection method by name, in the order reports list them after ``random``."""


def register_method(cls: type[SelectionMethod]) -> type[SelectionMethod]:
    """Add ``cls`` to :data:`METHODS` under ``cls.name`` (usable as a class decorator).

    Raises:
        ValueError: if ``cls`` is not a :class:`SelectionMethod` with a new name.
    """
    if not (isinstance(cls, type) and issubclass(cls, SelectionMethod)) or not cls.name:
        raise ValueError(f"register_method: expected a SelectionMethod subclass with a name, got {cls!r}")
    if cls.name in METHODS and METHODS[cls.name] is not cls:
        raise ValueError(f"register_method: a method named {cls.name!r} exists ({METHODS[cls.name].__name__})")
    METHODS[cls.name] = cls
    return cls


def make_method(spec, **options) -> SelectionMethod:
    """The method named by ``spec`` (a registry name, or a method object returned as is), built
    with the ``options`` its constructor takes (the others are ignored: ``compress``'s
    shorthands pass them all).

    Raises:
        ValueError: on an unknown name (the message lists the known ones), or a bad option.
    """
    if isinstance(spec, SelectionMethod):
        return spec
    cls = METHODS.get(spec) if isinstance(spec, str) else None
    if cls is None:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {spec!r}")
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in options.items() if k in accepted})
