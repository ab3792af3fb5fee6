"""Training objectives, one place for all of them.

wav2vec 2.0 / SeisLM (`wav2vec2_loss`, `contrastive_logits`, `codevector_perplexity`): the
contrastive task over masked frames plus the codebook diversity term, sum-reduced over masked
frames exactly as SeisLM's and HuggingFace's `Wav2Vec2ForPreTraining` (the training step divides
by the number of masked frames).

Joint embedding (`clip_loss`, `siglip_loss`): contrastive losses between two batches of paired
unit embeddings, with a learnable temperature (and bias); given the mesh, both use the global
batch as negatives across devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from seisfuse.parallel import BATCH_AXES

# --------------------------------------------------------------------------- wav2vec 2.0


def codevector_perplexity(probs: jax.Array, mask: jax.Array) -> jax.Array:
    """Σ_groups exp(entropy of the code distribution averaged over masked frames).

    probs [B, L, G, V]; mask bool [B, L]. p̄ = Σ_masked p / n_masked; entropy with log(p̄ + 1e-7).
    """
    weights = mask.astype(jnp.float32)
    mean = jnp.einsum("blgv,bl->gv", probs.astype(jnp.float32), weights) / jnp.sum(weights)
    return jnp.sum(jnp.exp(-jnp.sum(mean * jnp.log(mean + 1e-7), axis=-1)))


def _unit(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """x / max(‖x‖, eps) along the last axis (torch.cosine_similarity's normalisation)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def contrastive_logits(predicted: jax.Array, targets: jax.Array, code_ids: jax.Array,
                       negative_indices: jax.Array, temperature: float) -> tuple[jax.Array, jax.Array]:
    """Cosine logits / temperature [B, L, 1 + K] in float32 (column 0: the frame's own target).

    predicted, targets [B, L, D]; code_ids int [B, L, G] identify each target vector (equal ids in
    every group = identical vectors); negative_indices int [B, L, K] index the flattened B·L
    frames and must stay inside the frame's own example, as the wav2vec2 samplers draw them.
    A negative identical to the positive gets −inf. Rather than gathering B·L·K target vectors, the
    similarities of all frame pairs of an example ([B, L, L], one matmul) are computed and indexed.
    Also returns `outside` bool [B, L, K]: indices pointing outside the example.
    """
    batch, length, _ = predicted.shape
    sims = jnp.einsum("bid,bjd->bij", _unit(predicted), _unit(targets),
                      preferred_element_type=jnp.float32)
    local = negative_indices.astype(jnp.int32) - (jnp.arange(batch, dtype=jnp.int32) * length)[:, None, None]
    outside = (local < 0) | (local >= length)
    local = jnp.clip(local, 0, length - 1)
    positive = jnp.diagonal(sims, axis1=1, axis2=2)[..., None]
    negatives = jnp.take_along_axis(sims, local, axis=2)
    negative_ids = jnp.take_along_axis(code_ids[:, None, :, :], local[..., None], axis=2)
    same = jnp.all(negative_ids == code_ids[:, :, None, :], axis=-1)
    negatives = jnp.where(same, -jnp.inf, negatives)
    return jnp.concatenate([positive, negatives], axis=-1) / temperature, outside


def wav2vec2_loss(projected_states: jax.Array, projected_quantized_states: jax.Array,
                  code_ids: jax.Array, mask_time_indices: jax.Array, sampled_negative_indices: jax.Array,
                  perplexity: jax.Array, *, num_codevectors: int, temperature: float,
                  diversity_weight: float) -> dict[str, jax.Array]:
    """{loss, contrastive_loss, diversity_loss}, summed over masked frames as the original.

    contrastive = Σ_masked cross-entropy(logits, target 0); diversity = (GV − perplexity)/GV ·
    n_masked; loss = contrastive + diversity_weight · diversity. A negative index of a masked frame
    outside its own example makes the losses NaN instead of silently wrong.
    """
    mask = mask_time_indices.astype(bool)
    logits, outside = contrastive_logits(projected_states, projected_quantized_states, code_ids,
                                         sampled_negative_indices, temperature)
    per_frame = jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]
    contrastive = jnp.sum(jnp.where(mask, per_frame, 0.0))
    contrastive = jnp.where(jnp.any(outside & mask[..., None]), jnp.nan, contrastive)
    num_masked = jnp.sum(mask.astype(jnp.float32))
    diversity = (num_codevectors - perplexity) / num_codevectors * num_masked
    return {"loss": contrastive + diversity_weight * diversity, "contrastive_loss": contrastive,
            "diversity_loss": diversity}


# --------------------------------------------------------------------------- CLIP / SigLIP

CLIP_LOGIT_SCALE_INIT = math.log(1 / 0.07)  # CLIP: t = 1/0.07, learned as log t
CLIP_MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps t at 100
SIGLIP_LOGIT_SCALE_INIT = math.log(10.0)  # SigLIP: t' = log 10
SIGLIP_BIAS_INIT = -10.0


def _batch_shards(mesh: Mesh | None) -> int:
    return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def _check_pair(a: jax.Array, b: jax.Array, mesh: Mesh | None) -> None:
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"contrastive losses take two embedding batches [B, D] of one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    shards = _batch_shards(mesh)
    if a.shape[0] % shards:
        raise ValueError(f"batch {a.shape[0]} is not divisible by the {shards} batch shards of the mesh")


def clip_loss(a: jax.Array, b: jax.Array, logit_scale: jax.Array, *, mesh: Mesh | None = None) -> jax.Array:
    """CLIP's symmetric softmax loss: mean of the a->b and b->a cross-entropies over the batch.

    a, b [B, D] are unit embeddings with a[i] paired to b[i]; logits = t · a·bᵀ with
    t = exp(min(logit_scale, ln 100)). With a mesh whose batch axes span several devices each
    device keeps its rows and all-gathers the other side (open_clip's gather-with-grad): every
    example sees the global batch as negatives, and no device holds more than [B/n, B] logits.
    """
    _check_pair(a, b, mesh)
    scale = jnp.exp(jnp.minimum(logit_scale, CLIP_MAX_LOGIT_SCALE))
    if _batch_shards(mesh) == 1:
        return _clip_rows(a, b, a, b, scale, 0) / (2 * a.shape[0])

    def local(a: jax.Array, b: jax.Array, scale: jax.Array) -> jax.Array:
        a_all = jax.lax.all_gather(a, BATCH_AXES, tiled=True)
        b_all = jax.lax.all_gather(b, BATCH_AXES, tiled=True)
        first = jax.lax.axis_index(BATCH_AXES) * a.shape[0]
        return jax.lax.psum(_clip_rows(a, b, a_all, b_all, scale, first), BATCH_AXES)

    rows = PartitionSpec(BATCH_AXES)
    total = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, PartitionSpec()),
                          out_specs=PartitionSpec())(a, b, scale)
    return total / (2 * a.shape[0])


def _clip_rows(a: jax.Array, b: jax.Array, a_all: jax.Array, b_all: jax.Array, scale: jax.Array,
               first: jax.Array | int) -> jax.Array:
    """Summed cross-entropies of local rows a (against b_all) and b (against a_all); the positives
    are columns first .. first + rows."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    target = first + jnp.arange(a.shape[0])
    total = 0.0
    for query, keys in ((a, b_all), (b, a_all)):
        logits = scale * jnp.einsum("id,jd->ij", query, keys.astype(jnp.float32))
        positive = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
        total = total + jnp.sum(jax.nn.logsumexp(logits, axis=1) - positive)
    return total


def siglip_loss(a: jax.Array, b: jax.Array, logit_scale: jax.Array, logit_bias: jax.Array, *,
                mesh: Mesh | None = None) -> jax.Array:
    """SigLIP's pairwise sigmoid loss, −Σ_ij log σ(z_ij (t·a_i·b_j + bias)) / B, z = +1 on pairs, −1 off.

    t = exp(logit_scale). With a mesh whose batch axes span n devices the b chunks travel round
    a ring (ppermute, n − 1 hops) while each device scores its a rows against the chunk it holds,
    as big_vision's chunked sigmoid loss: the global batch is the negatives and no device ever
    holds more than a [B/n, B/n] block of logits.
    """
    _check_pair(a, b, mesh)
    scale = jnp.exp(logit_scale)
    n = _batch_shards(mesh)
    if n == 1:
        return -_sigmoid_block(a, b, scale, logit_bias, positives=True) / a.shape[0]

    def local(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array) -> jax.Array:
        ring = [(i, (i + 1) % n) for i in range(n)]

        def hop(carry: tuple[jax.Array, jax.Array], _: None) -> tuple[tuple[jax.Array, jax.Array], None]:
            chunk, total = carry
            chunk = jax.lax.ppermute(chunk, BATCH_AXES, ring)
            return (chunk, total + _sigmoid_block(a, chunk, scale, bias, positives=False)), None

        own = _sigmoid_block(a, b, scale, bias, positives=True)
        (_, total), _ = jax.lax.scan(hop, (b, own), None, length=n - 1)
        return jax.lax.psum(total, BATCH_AXES)

    rows = PartitionSpec(BATCH_AXES)
    total = jax.shard_map(local, mesh=mesh, in_specs=(rows, rows, PartitionSpec(), PartitionSpec()),
                          out_specs=PartitionSpec())(a, b, scale, logit_bias)
    return -total / a.shape[0]


def _sigmoid_block(a: jax.Array, b: jax.Array, scale: jax.Array, bias: jax.Array, *,
                   positives: bool) -> jax.Array:
    """Σ log σ(z · logits) over one block of rows a against columns b; the diagonal holds the
    pairs when `positives`, otherwise every entry is a negative."""
    logits = scale * jnp.einsum("id,jd->ij", a.astype(jnp.float32), b.astype(jnp.float32)) + bias
    sign = 2 * jnp.eye(a.shape[0], b.shape[0]) - 1 if positives else -1.0
    return jnp.sum(jax.nn.log_sigmoid(sign * logits))
