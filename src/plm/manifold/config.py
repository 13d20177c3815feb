"""Options of the piecewise-linear (PL) manifold model."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Optional

from plm.utils.choices import CRITERIA, NORMALIZATIONS, ON_BREACH, SYMMETRIZE


@dataclass
class ManifoldConfig:
    """Options of the PL model (docs/method.md §3-§4).

    Attributes:
        piece_dim: m, the dimension of every linear piece.
        eps: ε, the largest scale-free fit error at which a candidate joins a neighbourhood.
        criterion: the test a candidate must pass to join (docs/method.md, "Subset selection"):
            ``"residual_variance"`` (share of the grown set's variance outside its top-m principal
            directions ≤ ε), ``"relative_residual"`` (the grown set's mean orthogonal residual over
            its mean distance to the anchor ≤ ε), ``"candidate_residual"`` (the candidate's own
            orthogonal distance to the piece fitted to the current set ≤ ε, absolute: on unit-norm
            inputs a chord length) or ``"relative_candidate_residual"`` (that distance over the
            anchor's nearest-neighbour distance ≤ ε). The first two are scale-free errors of the
            set and fall when a far point joins; the last two judge the candidate itself.
        on_breach: ``"skip"`` (a rejected candidate is skipped and the next one tried) or
            ``"stop"`` (the neighbourhood stops growing at the first rejection).
        max_candidates: K_c, candidates per anchor (its nearest other points); ``None`` = all.
        group_size: restrict the candidates to the anchor's group, for points that come in
            consecutive groups of this many (a training batch's seed groups: ``sampler.k``);
            ``None`` = every other point is a candidate.
        n_alpha: N_α, the exponent of the orthogonal-distance term α.
        n_beta: N_β, the exponent of the in-piece-distance term β.
        symmetrize: ``"mean"`` (½(s′(i,j) + s′(j,i))), ``"max"``, ``"min"`` (both directions must
            agree) or ``"geometric"`` (√(s′(i,j)·s′(j,i))).
        subset_selection: ``False`` is the ablation "no subset selection": every candidate joins.
        normalize_inputs: L2-normalise the inputs before fitting.
        normalization: how the batch similarity (``similarity_matrix``) is mapped onto [0, 1]
            before it becomes a training target: ``"none"`` (s as the formula gives it),
            ``"row_max"`` (each row divided by its largest off-diagonal value),
            ``"row_minmax"`` (each row's off-diagonal values stretched to [0, 1]) or
            ``"row_rank"`` (each off-diagonal value replaced by its quantile within the row);
            the row-wise results are symmetrised again (mean of the two directions).
    """

    piece_dim: int = 2
    eps: float = 1.5
    criterion: str = "relative_candidate_residual"
    max_candidates: Optional[int] = 16
    group_size: Optional[int] = None
    n_alpha: float = 2.0
    n_beta: float = 0.5
    symmetrize: str = "mean"
    subset_selection: bool = True
    normalize_inputs: bool = True
    on_breach: str = "skip"
    normalization: str = "none"

    def __post_init__(self) -> None:
        if isinstance(self.piece_dim, bool) or not isinstance(self.piece_dim, int) or self.piece_dim < 1:
            raise ValueError(f"piece_dim must be an integer >= 1, got {self.piece_dim!r}")
        if not _finite_number(self.eps) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {CRITERIA}, got {self.criterion!r}")
        if self.max_candidates is not None and (isinstance(self.max_candidates, bool)
                                                or not isinstance(self.max_candidates, int)
                                                or self.max_candidates < 1):
            raise ValueError(f"max_candidates must be None or an integer >= 1, got {self.max_candidates!r}")
        if self.group_size is not None and (isinstance(self.group_size, bool) or not isinstance(self.group_size, int)
                                            or self.group_size < 2):
            raise ValueError(f"group_size must be None or an integer >= 2, got {self.group_size!r}")
        for name in ("n_alpha", "n_beta"):
            value = getattr(self, name)
            if not _finite_number(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.symmetrize not in SYMMETRIZE:
            raise ValueError(f"symmetrize must be one of {SYMMETRIZE}, got {self.symmetrize!r}")
        if self.on_breach not in ON_BREACH:
            raise ValueError(f"on_breach must be one of {ON_BREACH}, got {self.on_breach!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {self.normalization!r}")
        for name in ("subset_selection", "normalize_inputs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """The options as a plain dict (for configs and JSON)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
