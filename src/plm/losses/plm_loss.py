"""The whole PLM loss as one module: PL target from teacher embeddings, point term, proxy terms.

::

    plm_loss = PLMLoss(PLMConfig(), embed_dim=64)
    plm_loss.init_proxies(teacher_train_embeddings)        # required once when proxies are on
    optimizer = torch.optim.Adam([*model.parameters(), *plm_loss.parameters()])
    loss = plm_loss(student_embeddings, teacher_embeddings)

The proxies are parameters of the module (optimised with the model, saved by ``state_dict``).
They must be placed on the data with :meth:`PLMLoss.init_proxies` before the first step: a
forward pass with random proxies raises instead of silently training against noise.

``plm train``'s ``plm`` method (:class:`plm.training.methods.PLMMethod`) calls
:meth:`PLMLoss.terms` with its process's rows, so one implementation serves both.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from plm.losses.config import PLMConfig
from plm.losses.functional import (
    ALL_ROWS,
    Rows,
    balanced_pair_weights,
    neighborhood_loss_from_coordinates,
    point_loss,
    proxy_contrastive_loss,
    proxy_loss,
    relaxed_contrastive_loss,
)
from plm.losses.proxies import ProxyBank
from plm.utils.threads import threads_for


class ProxiesNotInitializedError(RuntimeError):
    """A :class:`PLMLoss` with proxies ran before :meth:`PLMLoss.init_proxies`."""


def binary_piece_similarity(members: Tensor, n: int) -> Tensor:
    """1 where j belongs to i's selected neighbourhood S_i or i to S_j, else 0; diagonal 1.

    Args:
        members: (N, K) long, -1 padded (:attr:`plm.manifold.Pieces.members`).
        n: number of points N.
    """
    s = torch.zeros(n, n, device=members.device)
    rows = torch.arange(n, device=members.device).unsqueeze(1).expand_as(members)
    valid = members >= 0
    s[rows[valid], members[valid]] = 1.0
    s = torch.maximum(s, s.T)
    s.fill_diagonal_(1.0)
    return s


class PLMLoss(nn.Module):
    """L = w_point·L_point + w_proxy·L_proxy + w_neigh·L_neighbourhood on a PL target (docs/method.md §6).

    Args:
        config: manifold, loss and proxy options (defaults: those of ``plm train``).
        embed_dim: d, the embedding dimension (of the proxies).
        num_proxies: overrides ``config.proxies.num`` (0 disables the proxy terms).
        seed: seed of the proxies' random start and of their initialisation.

    Attributes:
        last_terms: the detached terms of the last call (``point``, ``proxy``, ``neighbourhood``, ``loss``).
    """

    def __init__(self, config: Optional[PLMConfig] = None, *, embed_dim: int, num_proxies: Optional[int] = None,
                 seed: int = 0) -> None:
        super().__init__()
        config = config or PLMConfig()
        if num_proxies is not None:
            config = dataclasses.replace(config, proxies=dataclasses.replace(config.proxies, num=num_proxies))
        self.config, self.seed = config, int(seed)
        n = config.proxies.num
        self.proxies: Optional[ProxyBank] = (ProxyBank(n, embed_dim, config.manifold.piece_dim, seed=seed)
                                             if n > 0 else None)
        self.last_terms: dict[str, Tensor] = {}

    @torch.no_grad()
    def init_proxies(self, train_embeddings: Tensor | np.ndarray) -> None:
        """Place the proxies on the teacher's embeddings (N, d) of the training set (N ≥ number of proxies).

        A no-op without proxies. Call once before training (not when resuming from a state dict).
        """
        if self.proxies is not None:
            p = self.config.proxies
            self.proxies.init_from_embeddings(train_embeddings, method=p.init, local_points=p.local_points,
                                              seed=self.seed, on_sphere=p.on_sphere)

    def proxy_locations(self) -> Tensor:
        """(K, d) ρ_k as the losses see them (on the unit sphere with ``proxies.on_sphere``)."""
        if self.proxies is None:
            raise ValueError("this PLMLoss has no proxies (proxies.num = 0)")
        rho = self.proxies.locations
        return F.normalize(rho, dim=1) if self.config.proxies.on_sphere else rho

    def _points(self, teacher: Tensor) -> Tensor:
        return F.normalize(teacher, dim=1) if self.config.manifold.normalize_inputs else teacher

    @torch.no_grad()
    def target_similarity(self, teacher: Tensor) -> Tensor:
        """(B, B) target similarity in [0, 1] of a batch from its teacher embeddings (no gradient)."""
        from plm.estimators.stml import contextual_target
        from plm.manifold import fit_pieces, similarity_matrix
        from plm.manifold.expansion import expanded_similarity

        if self.config.similarity == "binary":
            s = binary_piece_similarity(fit_pieces(teacher, self.config.manifold).members, teacher.shape[0])
        else:
            s = similarity_matrix(teacher, self.config.manifold)
        loss = self.config.loss
        s = expanded_similarity(s, teacher, loss.expansion)
        return contextual_target(s, loss.context, loss.context_k, loss.context_mode)

    @torch.no_grad()
    def proxy_similarity(self, teacher: Tensor) -> Tensor:
        """(B, K) s′(x_i, proxy k) of teacher points to the proxies' pieces (detached)."""
        if self.proxies is None:
            raise ValueError("this PLMLoss has no proxies (proxies.num = 0)")
        return self._proxy_similarity(*self.proxies.coordinates(self._points(teacher), self.proxy_locations()))

    def _proxy_similarity(self, dist2: Tensor, coords: Tensor) -> Tensor:
        """s′ of points to proxy pieces from :meth:`ProxyBank.coordinates` (detached: a target).

        The piece's anchor is its mean ρ_k, so o² = ‖x − ρ_k‖² − ‖c‖² and p² = ‖c‖², c = W_kᵀ(x − ρ_k)
        (:func:`plm.manifold.directed_similarity` with anchors = means)."""
        from plm.manifold.similarity import alpha_beta

        m = self.config.manifold
        c2 = coords.detach().pow(2).sum(2)
        return alpha_beta(dist2.detach() - c2, c2, m.n_alpha, m.n_beta)

    def terms(self, student: Tensor, teacher_all: Tensor, *, student_all: Optional[Tensor] = None,
              rows: Rows = ALL_ROWS) -> dict[str, Tensor]:
        """The loss terms of one process's rows of a (global) batch; ``"loss"`` is the weighted total.

        Args:
            student: (R, d) student embeddings of this process's rows (with gradient).
            teacher_all: (B, d) teacher embeddings of the global batch (no gradient).
            student_all: (B, d) student embeddings of the global batch; ``None`` = ``student`` (one process).
            rows: where this process's rows sit in the global batch (:meth:`Rows.of_process`).

        Summed over processes, every term equals its value on the concatenated global batch.

        Raises:
            ProxiesNotInitializedError: proxies on and :meth:`init_proxies` never called.
            ValueError: mismatched shapes.
        """
        student_all = student if student_all is None else student_all
        if teacher_all.shape[0] != student_all.shape[0]:
            raise ValueError(f"student and teacher batches differ in size: {student_all.shape[0]} vs "
                             f"{teacher_all.shape[0]}")
        if self.proxies is not None and not bool(self.proxies.initialised):
            raise ProxiesNotInitializedError(
                "the proxies are not initialised: call plm_loss.init_proxies(train_embeddings) with the teacher's "
                "embeddings of the training set before the first step (or set proxies.num=0)")
        b, d = student_all.shape
        # a batch's matrices are small: one thread (plm.utils.threads), so that a core held by
        # another process does not stall every operation
        with threads_for(b * b * d):
            out = self._terms(student, student_all, teacher_all, rows)
        self.last_terms = {k: v.detach() for k, v in out.items()}
        return out

    def _terms(self, student: Tensor, student_all: Tensor, teacher_all: Tensor, rows: Rows) -> dict[str, Tensor]:
        cfg = self.config.loss
        b = student_all.shape[0]
        mine = rows.slice(student.shape[0])
        s = self.target_similarity(teacher_all)[mine]
        if cfg.kind == "relaxed_contrastive":
            l_point = relaxed_contrastive_loss(student, s, cfg.margin, columns=student_all, rows=rows)
        else:
            weights = balanced_pair_weights(s, rows) if cfg.kind == "weighted_regression" else None
            l_point = point_loss(student, s, cfg.delta, columns=student_all, rows=rows, weights=weights)
        out = {"point": l_point}
        total = cfg.point * l_point
        if self.proxies is not None:
            rho = self.proxy_locations()
            # every teacher point at every proxy piece, once: the similarity reads it detached,
            # the neighbourhood term with its gradient into ρ and the bases
            dist2, coords = self.proxies.coordinates(self._points(teacher_all.detach()), rho)
            s_p = self._proxy_similarity(dist2, coords)  # (B, K)
            num = b * self.proxies.num
            ref = rho if self.config.proxies.update == "all" else rho.detach()
            if cfg.kind == "relaxed_contrastive":
                l_proxy = proxy_contrastive_loss(student, ref, s_p[mine], cfg.margin, denom=num)
            else:
                l_proxy = proxy_loss(student, ref, s_p[mine], cfg.delta, denom=num)
            # computed identically on every rank from the global batch: each contributes 1/world
            l_neigh = neighborhood_loss_from_coordinates(dist2, coords, s_p, cfg.neighbourhood_points,
                                                         cfg.neighbourhood_lambda,
                                                         radius=cfg.neighbourhood_radius) / rows.world_size
            out.update(proxy=l_proxy, neighbourhood=l_neigh)
            total = total + cfg.proxy * l_proxy + cfg.neighbourhood * l_neigh
        out["loss"] = total
        return out

    def forward(self, student_embeddings: Tensor, teacher_embeddings: Tensor) -> Tensor:
        """The total loss of a batch: student (B, d) embeddings (with gradient), teacher (B, d) embeddings.

        The terms are in :attr:`last_terms` afterwards.
        """
        if student_embeddings.ndim != 2 or teacher_embeddings.ndim != 2:
            raise ValueError(f"expected (B, d) student and teacher embeddings, got {tuple(student_embeddings.shape)} "
                             f"and {tuple(teacher_embeddings.shape)}")
        return self.terms(student_embeddings, teacher_embeddings.detach())["loss"]
