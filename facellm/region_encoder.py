"""The face-region encoder: per-face landmark-region tokens and the image's patch tokens attend to each other.

For every detected face (up to ``max_faces`` per image) it makes ``tokens_per_face`` tokens:

* one **region token** per landmark region (eyes, brows, nose, mouth, jaw, forehead, whole face): a learned
  region-type embedding + the patch features softly pooled over the region's footprint + an embedding of
  where the region is (its centre and extent on the grid);
* a **geometry token**: the face's normalised mesh (478 x (x, y, z) relative to the face box) through an MLP;
* an optional **identity token**: the recognizer's 128-d descriptor through a linear layer.

Every token also gets a face-index embedding (slot 0 = "Face 1" in the text), so the LM can tell faces apart.

The footprint of a region is a Gaussian fitted to its landmark points in feature-grid units (mean and
covariance, floored at half a cell). The attention bias between a region token and a patch is
``-0.5 * m^2 / s^2`` where m is the patch centre's Mahalanobis distance under that Gaussian and ``s`` a learned
per-token-type scale (1 at init: the bias is -1 on the region's outline). With ``bias_type="mask"`` regions
that have a parser mask use ``log(coverage)`` of each grid cell instead. The same bias drives the soft pooling
(softmax over patches) that initialises each region token.

Each block then runs both directions (Face-LLaVA has only the first):
region tokens -> patches (cross-attention, biased), patches -> region tokens of every face of the image
(biased by the same table, transposed) plus a learned "null" token, so that patches far from any face can
attend to nothing in particular; then an MLP on each stream. Images with no face pass their patch tokens
through the patch stream (attending only to the null token), so the same code runs on every image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import FaceLLMConfig

COV_FLOOR = 0.25  # grid cells^2: a region never gets narrower than half a cell
MASK_FLOOR = 1e-3  # log(coverage) is clipped here (about -6.9)


def fourier_xy(xy: torch.Tensor, n_freq: int = 4) -> torch.Tensor:
    """(..., 2) coordinates in [-1, 1] -> (..., 2 + 4 * n_freq) sin/cos features."""
    freqs = (2.0 ** torch.arange(n_freq, device=xy.device, dtype=xy.dtype)) * math.pi
    ang = xy[..., None] * freqs  # (..., 2, n)
    return torch.cat([xy, ang.sin().flatten(-2), ang.cos().flatten(-2)], dim=-1)


class BiasedAttention(nn.Module):
    """Multi-head attention whose logits get an additive (B, Q, K) bias."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, nq, d = x.shape
        h = self.heads
        q = self.q(x).view(b, nq, h, d // h).transpose(1, 2)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None].to(q.dtype))
        return self.out(y.transpose(1, 2).reshape(b, nq, d))


def _mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


class RegionPatchBlock(nn.Module):
    """One round of region -> patch and patch -> region attention, each followed by an MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.r_norm, self.r_ctx_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.r_attn = BiasedAttention(dim, heads)
        self.p_norm, self.p_ctx_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.p_attn = BiasedAttention(dim, heads)
        self.r_mlp, self.p_mlp = _mlp(dim, 4 * dim), _mlp(dim, 4 * dim)

    def forward(self, patches: torch.Tensor, faces: torch.Tensor, null: torch.Tensor, bias: torch.Tensor,
                key_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """patches (B, N, d), faces (B, M, d), null (d,), bias (B, M, N) region->patch,
        key_bias (B, N, 1 + M) patch->[null, regions] (-inf on padded faces)."""
        faces = faces + self.r_attn(self.r_norm(faces), self.r_ctx_norm(patches), bias)
        ctx = torch.cat([null.expand(faces.shape[0], 1, -1), faces], dim=1)
        patches = patches + self.p_attn(self.p_norm(patches), self.p_ctx_norm(ctx), key_bias)
        return patches + self.p_mlp(patches), faces + self.r_mlp(faces)


class RegionEncoder(nn.Module):
    """Patch tokens (B, N, C) + per-face landmark data -> patch tokens (B, N, d) and face tokens (B, F, T, d)."""

    def __init__(self, config: FaceLLMConfig, vision_dim: int) -> None:
        super().__init__()
        d = config.region_dim
        self.config = config
        self.n_regions = len(config.regions)
        self.n_tokens = config.tokens_per_face
        self.patch_in = nn.Linear(vision_dim, d)
        self.patch_pos = nn.Linear(2 + 4 * 4, d)
        self.region_where = nn.Linear(4, d)  # region centre and spread, in [-1, 1] grid units
        self.type_emb = nn.Embedding(self.n_tokens, d)
        self.face_emb = nn.Embedding(config.max_faces, d)
        self.log_scale = nn.Parameter(torch.zeros(self.n_tokens))
        self.null = nn.Parameter(torch.randn(d) * 0.02)
        if config.use_geometry_token:
            g = config.geometry_points * 3
            self.geometry = nn.Sequential(nn.Linear(g, d), nn.GELU(), nn.Linear(d, d))
        if config.use_identity_token:
            self.identity = nn.Linear(config.identity_dim, d)
        self.blocks = nn.ModuleList(RegionPatchBlock(d, config.region_heads) for _ in range(config.region_layers))
        self.patch_norm, self.face_norm = nn.LayerNorm(d), nn.LayerNorm(d)

    # ---------------------------------------------------------------- geometry of the bias
    @staticmethod
    def footprints(points: torch.Tensor, point_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussian (mean (..., 2), covariance (..., 2, 2)) of each point set (..., P, 2) with mask (..., P)."""
        w = point_mask.to(points.dtype)
        n = w.sum(-1, keepdim=True).clamp(min=1.0)
        mu = (points * w[..., None]).sum(-2) / n
        diff = (points - mu[..., None, :]) * w[..., None]
        cov = diff.transpose(-1, -2) @ diff / n[..., None]
        return mu, cov + COV_FLOOR * torch.eye(2, dtype=points.dtype, device=points.device)

    @staticmethod
    def proximity(mu: torch.Tensor, cov: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """-0.5 * squared Mahalanobis distance of each centre (N, 2) under each Gaussian: (..., N)."""
        a, b, c, dd = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 0], cov[..., 1, 1]
        det = (a * dd - b * c).clamp(min=1e-6)
        delta = centres - mu[..., None, :]  # (..., N, 2)
        dx, dy = delta[..., 0], delta[..., 1]
        m2 = (dd[..., None] * dx * dx - (b + c)[..., None] * dx * dy + a[..., None] * dy * dy) / det[..., None]
        return -0.5 * m2

    def token_bias(self, grid: tuple[int, int], points: torch.Tensor, point_mask: torch.Tensor,
                   region_masks: torch.Tensor | None, region_mask_valid: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bias (B, F, T, N) of every face token over the patches, and each region's (mu, cov)."""
        gh, gw = grid
        centres = torch.stack(torch.meshgrid(torch.arange(gw, device=points.device, dtype=points.dtype) + 0.5,
                                             torch.arange(gh, device=points.device, dtype=points.dtype) + 0.5,
                                             indexing="xy"), dim=-1).reshape(-1, 2)
        mu, cov = self.footprints(points, point_mask)  # (B, F, R, 2), (B, F, R, 2, 2)
        # the extra tokens (geometry, identity) look at the whole face: every landmark of the face at once
        extra = self.n_tokens - self.n_regions
        if extra:
            b, f, r, p, _ = points.shape
            fmu, fcov = self.footprints(points.reshape(b, f, 1, r * p, 2), point_mask.reshape(b, f, 1, r * p))
            mu_all = torch.cat([mu, fmu.expand(b, f, extra, 2)], dim=2)
            cov_all = torch.cat([cov, fcov.expand(b, f, extra, 2, 2)], dim=2)
        else:
            mu_all, cov_all = mu, cov
        bias = self.proximity(mu_all, cov_all, centres)  # (B, F, T, N)
        if self.config.bias_type == "mask" and region_masks is not None and region_mask_valid is not None:
            logm = region_masks.flatten(-2).clamp(min=MASK_FLOOR).log().to(bias.dtype)  # (B, F, R, N)
            use = region_mask_valid[..., None].to(torch.bool)
            bias = torch.cat([torch.where(use, logm, bias[:, :, : self.n_regions]), bias[:, :, self.n_regions:]],
                             dim=2)
        if self.config.bias_type == "none":
            bias = torch.zeros_like(bias)
        scale = torch.exp(2 * self.log_scale).to(bias.dtype)  # s^2 per token type
        return bias / scale[:, None], mu_all, cov_all

    # ---------------------------------------------------------------- forward
    def forward(self, patch_tokens: torch.Tensor, grid: tuple[int, int], *, face_mask: torch.Tensor,
                region_points: torch.Tensor, region_point_mask: torch.Tensor,
                geometry: torch.Tensor | None = None, identity: torch.Tensor | None = None,
                region_masks: torch.Tensor | None = None, region_mask_valid: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        patch_tokens (B, N, C) of B images on a (gh, gw) grid; face_mask (B, F) which face slots are real;
        region_points (B, F, R, P, 2) landmark points per region in grid units (x, y), region_point_mask
        (B, F, R, P); geometry (B, F, G*3); identity (B, F, 128); region_masks (B, F, R, gh, gw) coverage in
        [0, 1] with region_mask_valid (B, F, R). Returns patches (B, N, d), faces (B, F, T, d).
        """
        b, n, _ = patch_tokens.shape
        gh, gw = grid
        if n != gh * gw:
            raise ValueError(f"{n} patch tokens do not fill a {gh}x{gw} grid")
        dtype = self.patch_in.weight.dtype
        pos = torch.stack(torch.meshgrid((torch.arange(gw, device=patch_tokens.device) + 0.5) / gw * 2 - 1,
                                         (torch.arange(gh, device=patch_tokens.device) + 0.5) / gh * 2 - 1,
                                         indexing="xy"), dim=-1).reshape(-1, 2).to(dtype)
        patches = self.patch_in(patch_tokens.to(dtype)) + self.patch_pos(fourier_xy(pos))
        nf, t = face_mask.shape[1], self.n_tokens
        if nf == 0:  # no face in any image of the batch: the patch stream alone
            key_bias = torch.zeros(b, n, 1, dtype=dtype, device=patches.device)
            empty = patches.new_zeros(b, 0, patches.shape[-1])
            for block in self.blocks:
                patches, _ = block(patches, empty, self.null, empty.new_zeros(b, 0, n), key_bias)
            return self.patch_norm(patches), patches.new_zeros(b, 0, t, patches.shape[-1])
        if nf > self.config.max_faces:
            raise ValueError(f"{nf} face slots per image, but the model has face embeddings for {self.config.max_faces}")

        pts = region_points.to(torch.float32)
        bias, mu, cov = self.token_bias(grid, pts, region_point_mask, region_masks, region_mask_valid)
        bias = bias.to(dtype)  # (B, F, T, N)

        # initial face tokens: pooled features + region type + where it is (+ geometry / identity) + face index
        pooled = torch.softmax(bias, dim=-1) @ patches[:, None]  # (B, F, T, d)
        spread = torch.sqrt(torch.diagonal(cov, dim1=-2, dim2=-1))
        scale = torch.tensor([gw, gh], dtype=mu.dtype, device=mu.device)
        where = torch.cat([mu / scale * 2 - 1, spread / scale * 2], dim=-1).to(dtype)
        types = torch.arange(t, device=patches.device)
        faces = pooled + self.type_emb(types) + self.region_where(where)
        extra = []
        if self.config.use_geometry_token:
            g = geometry if geometry is not None else patches.new_zeros(b, nf, self.config.geometry_points * 3)
            extra.append(self.geometry(g.to(dtype)))
        if self.config.use_identity_token:
            e = identity if identity is not None else patches.new_zeros(b, nf, self.config.identity_dim)
            extra.append(self.identity(e.to(dtype)))
        if extra:
            faces = faces + torch.cat([faces.new_zeros(b, nf, self.n_regions, faces.shape[-1]),
                                       torch.stack(extra, dim=2)], dim=2)
        faces = faces + self.face_emb(torch.arange(nf, device=patches.device))[None, :, None]

        # attention tables: padded face slots are invisible to the patches
        flat_bias = bias.reshape(b, nf * t, n)
        valid = face_mask.to(torch.bool)[:, :, None].expand(b, nf, t).reshape(b, nf * t)
        key_bias = flat_bias.transpose(1, 2).masked_fill(~valid[:, None, :], float("-inf"))
        key_bias = torch.cat([key_bias.new_zeros(b, n, 1), key_bias], dim=2)
        faces = faces.reshape(b, nf * t, -1)
        for block in self.blocks:
            patches, faces = block(patches, faces, self.null, flat_bias, key_bias)
        return self.patch_norm(patches), self.face_norm(faces).reshape(b, nf, t, -1)
