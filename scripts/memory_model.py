"""Analytic memory model: the bytes a training forward saves for backward, from shapes alone.

Korthikanti et al. (2022) count ``sbh(34 + 5as/h)`` bytes per transformer layer for 16-bit activations and
1-byte dropout masks, of which the masks are ``2sbh + as²b``. Here the same count is derived tensor by tensor
from the installed sources (transformers' BERT and Longformer, timm's ViT) for any activation size ``e``
and any mask storage, so it can be checked byte for byte against ``pmdrop.track_saved_tensors``:

BERT layer, eager attention (e = bytes per activation element, m = mask bytes per element, I = FFN width)::

    activations  bsh·e·8      layer input, Q and Kᵀ copies for the matmul, V copy, context, LayerNorm 1 input,
                              FFN input, LayerNorm 2 input
               + bsI·e·2      GELU input and output
               + bas²·e·2     softmax output and the dropped probabilities
               + 4bs·e_stat   LayerNorm mean and rstd (two LayerNorms)
    masks        bsh·m·2 + bas²·m      (2 hidden dropouts, 1 attention-probability dropout)

With e = 2, m = 1, I = 4h this is ``sbh(34 + 5as/h)`` plus the LayerNorm statistics Korthikanti leave out.
Fused attention (SDPA flash / memory-efficient kernels on CUDA) keeps Q, K, V, the output and a logsumexp
instead of the s² tensors, and regenerates its dropout mask; on CPU SDPA falls back to the math path,
which keeps the same tensors as eager attention and stores its dropout noise as an ordinary activation.

A mask costs what the dropout variant stores per call: torch on CPU keeps the noise in the input's dtype
(e bytes/element), torch on CUDA a bool mask (1 B), ``pmdrop`` ⌈n/8⌉ bytes, ``pmdrop_4bit`` ⌈n/4⌉, ``seeded``
only the generator state (5056 B on CPU, 16 B on CUDA), the fused Triton ``pmdrop_fused`` ⌈n/8⌉ bytes and
``seeded_fused`` nothing. A dropout's output has exactly the input's elements on every route.

Checked byte for byte on CPU (tests/scripts/test_report_memory_model.py): BERT eager and SDPA (math path),
classifier and MLM heads, fp32 and bf16 weights; timm ViT; Longformer with and without global attention. The
CUDA-only terms (bool masks, fused-attention logsumexp, fp32 LayerNorm statistics, the fused Triton variants)
follow the kernels' saved tensors as read from their sources but were not measured here (no GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pmdrop

INDEX_BYTES = 8  # int64 token ids, labels, position ids
CPU_RNG_STATE_BYTES = 5056  # torch.get_rng_state().numel(): the mt19937 state
CUDA_RNG_STATE_BYTES = 16  # Philox seed and offset
ATTENTION_KINDS = ("eager", "sdpa_math", "sdpa_fused")
HEADS = ("cls", "mlm")


@dataclass(frozen=True)
class MaskStorage:
    """What one dropout call keeps for backward: ``bytes_per_call(numel, activation_bytes)``."""

    name: str
    bytes_per_call: Callable[[int, int], int]


def _packed(k: int) -> MaskStorage:
    return MaskStorage(f"packed {k}/byte", lambda n, e: math.ceil(n / k))


def _torch_mask(device_type: str) -> MaskStorage:
    if device_type == "cpu":
        return MaskStorage("torch noise (input dtype)", lambda n, e: n * e)
    return MaskStorage("torch bool mask", lambda n, e: n)


def _rng_state(device_type: str) -> MaskStorage:
    state = CPU_RNG_STATE_BYTES if device_type == "cpu" else CUDA_RNG_STATE_BYTES
    return MaskStorage("generator state", lambda n, e: state)


def _fused_packed(k: int) -> MaskStorage:
    return MaskStorage(f"packed {k}/byte (fused kernel)", lambda n, e: math.ceil(n / k))


def _nothing() -> MaskStorage:
    return MaskStorage("nothing (seed in the autograd context)", lambda n, e: 0)


def mask_storage(variant: str, device_type: str) -> MaskStorage:
    """What one dropout call of ``variant`` keeps on ``device_type`` ("cpu" or "cuda"), as the core registry
    describes the variant: the reference (``baseline``) keeps torch's own mask; the others a mask packed
    ``masks_per_byte`` to a byte, or none. The exact ones keep torch's own mask that way through saved-tensor
    hooks (no mask: the generator state); the others are the Triton kernels (no mask: the Philox seed and counter
    as Python ints in the autograd context)."""
    names = pmdrop.variant_names()
    if variant not in names:
        raise ValueError(f"no mask-storage model for variant {variant!r}; modelled: {', '.join(names)}")
    registered = pmdrop.get_variant(variant)
    if variant == "baseline":
        return _torch_mask(device_type)
    k = registered.masks_per_byte
    if registered.bit_exact:
        return _packed(k) if k else _rng_state(device_type)
    return _fused_packed(k) if k else _nothing()


@dataclass(frozen=True)
class Storage:
    """How tensors are stored: activation element size, LayerNorm statistic size, masks, attention kernel."""

    activation_bytes: int
    mask: MaskStorage
    attention: str = "eager"
    stat_bytes: int | None = None  # LayerNorm mean/rstd: the activation dtype on CPU, fp32 on CUDA

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention {self.attention!r} is not modelled; valid: {', '.join(ATTENTION_KINDS)}")

    @property
    def stat(self) -> int:
        return self.activation_bytes if self.stat_bytes is None else self.stat_bytes


@dataclass(frozen=True)
class Shapes:
    """Model and batch shapes; dropout probabilities decide which masks exist (p = 0: no mask)."""

    family: str  # bert | longformer | vit
    batch: int
    seq: int  # tokens per sequence (ViT: ignored, derived from image and patch size)
    hidden: int
    heads: int
    intermediate: int
    layers: int
    head: str = "cls"  # cls (sequence/image classification) | mlm (masked language model)
    num_labels: int = 2
    vocab: int = 30522
    max_positions: int = 512
    hidden_p: float = 0.1  # BERT/Longformer hidden dropout; ViT proj_drop_rate (attention proj and MLP)
    attn_p: float = 0.1
    classifier_p: float | None = None  # classifier dropout; None: hidden_p (ViT: drop_rate, default 0)
    token_type_ids: bool = True  # BERT: passed by the caller (else a (1, s) slice of a buffer is kept)
    window: int = 512  # Longformer attention_window (both sides together)
    image_size: int = 224  # ViT
    patch_size: int = 16
    channels: int = 3
    pos_p: float = 0.0  # ViT position-embedding dropout
    label_smoothing: float = 0.0  # cross-entropy label smoothing (the harness's ViT)

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head {self.head!r} is not modelled; valid: {', '.join(HEADS)}")


@dataclass(frozen=True)
class Saved:
    """A tensor kept for backward."""

    name: str
    nbytes: int


@dataclass(frozen=True)
class Drop:
    """A dropout call that needs a mask."""

    name: str
    numel: int
    in_sdpa: bool = False  # fused into scaled_dot_product_attention (CPU math path: torch's noise, an activation)


Item = Saved | Drop


@dataclass(frozen=True)
class Inventory:
    embeddings: list[Item]
    layer: list[Item]  # one transformer layer; the model has ``Shapes.layers`` of them
    head: list[Item]


@dataclass(frozen=True)
class Prediction:
    activation_bytes: int
    mask_bytes: int
    layer_activation_bytes: int
    layer_mask_bytes: int
    breakdown: list[tuple[str, str, str, int]] = field(default_factory=list)  # (part, name, kind, bytes)


def _ln(name: str, s: Shapes, st: Storage, rows: int) -> list[Item]:
    """LayerNorm keeps its input and a mean and rstd per row."""
    return [Saved(f"{name} input", rows * s.hidden * st.activation_bytes),
            Saved(f"{name} mean, rstd", 2 * rows * st.stat)]


def _loss(s: Shapes, st: Storage, rows: int, classes: int) -> list[Item]:
    """Cross-entropy: log-softmax output, int64 targets, the total-weight scalar; label smoothing adds the
    ignore-index mask and the int64 count of targets it averages over."""
    e = st.activation_bytes
    items: list[Item] = [Saved("log-softmax output", rows * classes * e), Saved("labels", rows * INDEX_BYTES),
                         Saved("loss total weight", e)]
    if s.label_smoothing:
        items += [Saved("ignore-index mask (bool)", rows), Saved("target count", INDEX_BYTES)]
    return items


def _ffn(s: Shapes, st: Storage, rows: int, prefix: str = "") -> list[Item]:
    """Dense -> GELU -> dense -> dropout -> add & LayerNorm (BERT/Longformer FFN)."""
    e, bsh, bsi = st.activation_bytes, rows * s.hidden, rows * s.intermediate
    items: list[Item] = [Saved(f"{prefix}FFN input", bsh * e), Saved("GELU input", bsi * e),
                         Saved("GELU output (second dense input)", bsi * e)]
    if s.hidden_p:
        items.append(Drop("FFN output", bsh))
    return items + _ln("LayerNorm 2", s, st, rows)


def _mlm_head(s: Shapes, st: Storage, rows: int, label_rows: int) -> list[Item]:
    e, bsh = st.activation_bytes, rows * s.hidden
    return [Saved("last hidden state (transform input)", bsh * e), Saved("transform GELU input", bsh * e),
            *_ln("transform LayerNorm", s, st, rows), Saved("decoder input", bsh * e),
            *_loss(s, st, label_rows, s.vocab)]


def _eager_attention(s: Shapes, st: Storage, q_name: str) -> list[Item]:
    """matmul(Q, Kᵀ) -> softmax -> dropout -> matmul(·, V); the batched matmuls keep contiguous copies."""
    e, bsh, bas2 = st.activation_bytes, s.batch * s.seq * s.hidden, s.batch * s.heads * s.seq**2
    items: list[Item] = [Saved(q_name, bsh * e), Saved("Kᵀ copy", bsh * e), Saved("softmax output", bas2 * e),
                         Saved("V copy", bsh * e)]
    if s.attn_p:
        items += [Drop("attention probabilities", bas2, in_sdpa=st.attention == "sdpa_math"),
                  Saved("dropped probabilities", bas2 * e)]
    return items


def _fused_attention(s: Shapes, st: Storage, qkv_bytes: int) -> list[Item]:
    """SDPA flash / memory-efficient: Q, K, V, the output and a fp32 logsumexp; the dropout mask is regenerated."""
    e, bsh = st.activation_bytes, s.batch * s.seq * s.hidden
    return [Saved("Q, K, V (views of the projections)", qkv_bytes), Saved("attention output (out-proj input)", bsh * e),
            Saved("logsumexp (fp32)", s.batch * s.heads * s.seq * 4)]


def bert(s: Shapes, st: Storage) -> Inventory:
    e, b, t, h = st.activation_bytes, s.batch, s.seq, s.hidden
    bsh = b * t * h
    embeddings: list[Item] = [
        Saved("input_ids", b * t * INDEX_BYTES),
        Saved("token_type_ids", (b if s.token_type_ids else 1) * t * INDEX_BYTES),
        Saved("position_ids buffer", s.max_positions * INDEX_BYTES),
        *_ln("embedding LayerNorm", s, st, b * t),
    ]
    if s.hidden_p:
        embeddings.append(Drop("embeddings", bsh))
    layer: list[Item] = [Saved("layer input (Q/K/V input)", bsh * e)]
    if st.attention == "sdpa_fused":
        layer += _fused_attention(s, st, 3 * bsh * e)
    else:
        layer += [*_eager_attention(s, st, "Q copy"), Saved("context (out-proj input)", bsh * e)]
    if s.hidden_p:
        layer.append(Drop("attention output", bsh))
    layer += [*_ln("LayerNorm 1", s, st, b * t), *_ffn(s, st, b * t, "LayerNorm 1 output = ")]
    if s.head == "mlm":
        return Inventory(embeddings, layer, _mlm_head(s, st, b * t, b * t))
    classifier_p = s.hidden_p if s.classifier_p is None else s.classifier_p
    head: list[Item] = [Saved("last hidden state (pooler reads token 0)", bsh * e),
                        Saved("pooler tanh output", b * h * e)]
    if classifier_p:
        head += [Drop("classifier", b * h), Saved("classifier input", b * h * e)]
    return Inventory(embeddings, layer, head + _loss(s, st, b, s.num_labels))


def vit_tokens(s: Shapes) -> int:
    return (s.image_size // s.patch_size) ** 2 + 1  # patches and the class token


def vit(s: Shapes, st: Storage) -> Inventory:
    """timm VisionTransformer (pre-norm blocks, class-token pooling)."""
    s = Shapes(**{**s.__dict__, "seq": vit_tokens(s)})
    e, b, t, h, hi = st.activation_bytes, s.batch, s.seq, s.hidden, s.intermediate
    bsh = b * t * h
    embeddings: list[Item] = [Saved("image (patch-embedding conv input)", b * s.channels * s.image_size**2 * e)]
    if s.pos_p:
        embeddings.append(Drop("position embedding", bsh))
    layer: list[Item] = [*_ln("norm1", s, st, b * t), Saved("qkv input", bsh * e)]
    if st.attention == "sdpa_fused":
        layer += _fused_attention(s, st, 3 * bsh * e)
    else:
        layer += [*_eager_attention(s, st, "scaled Q"), Saved("proj input", bsh * e)]
    if s.hidden_p:
        layer.append(Drop("attention proj", bsh))
    layer += [*_ln("norm2", s, st, b * t), Saved("fc1 input", bsh * e), Saved("GELU input", b * t * hi * e)]
    if s.hidden_p:
        layer.append(Drop("MLP activation", b * t * hi))
    layer.append(Saved("fc2 input", b * t * hi * e))
    if s.hidden_p:
        layer.append(Drop("MLP output", bsh))
    head_p = s.classifier_p or 0.0
    head: list[Item] = _ln("final norm", s, st, b * t)
    if head_p:
        head += [Drop("head", b * h), Saved("head input", b * h * e)]
    else:  # dropout with p=0 returns its input: the head keeps token 0, a view of the whole final-norm output
        head.append(Saved("head input (view of the final-norm output)", bsh * e))
    return Inventory(embeddings, layer, head + _loss(s, st, b, s.num_labels))


def longformer(s: Shapes, st: Storage) -> Inventory:
    """transformers' Longformer: sliding-chunk attention (one-sided window w' = window/2), global attention on
    the class token for sequence classification (none for MLM). Inputs are padded to a multiple of the window."""
    if st.attention != "eager":
        raise ValueError(f"Longformer has no {st.attention!r} attention; valid: eager")
    e, b, h, a = st.activation_bytes, s.batch, s.hidden, s.heads
    t = math.ceil(s.seq / s.window) * s.window
    w = s.window // 2
    g = 1 if s.head == "cls" else 0
    bsh = b * t * h
    probs = b * t * a * (2 * w + 1 + g)
    embeddings: list[Item] = [
        Saved("input_ids, position_ids, token_type_ids", 3 * b * t * INDEX_BYTES),
        *_ln("embedding LayerNorm", s, st, b * t),
        Saved("padding mask (bool, shared by all layers)", b * t),
    ]
    # Attention runs on (seq, batch, hidden): transposed, so each Linear copies its input, unless batch = 1
    # where the transpose is contiguous and the Linears keep the layer input itself.
    input_copies = 1 if b == 1 else 3
    if s.hidden_p:
        embeddings.append(Drop("embeddings", bsh))
    layer: list[Item] = [
        Saved(f"Q/K/V input ({input_copies} storage(s))", input_copies * bsh * e),
        Saved("Q and K sliding chunks (2)", 2 * 2 * b * h * (t - w) * e),
        Saved("window-edge masks (2, bool)", 2 * b * w * a * (w + 1)),
    ]
    if g:
        layer += [Saved("global attention indices", 2 * 2 * b * g * INDEX_BYTES), Saved("global keys", b * g * h * e),
                  Saved("Q copy (scores against global keys)", bsh * e)]
    layer.append(Saved("softmax output (fp32)", probs * 4))
    if s.attn_p:
        layer.append(Drop("attention probabilities", probs))
    if g:
        layer += [Saved("global-key probabilities copy", b * a * t * g * e), Saved("global values", b * g * h * e)]
    layer += [Saved("chunked values (padded by w' each side)", 3 * bsh * e),
              Saved("diagonalised probabilities", b * a * t * (3 * w + 2) * e)]
    if g:
        global_probs = b * a * g * t
        layer += [Saved("global-token hidden states", g * b * h * e),
                  Saved("global K/V input copies", (input_copies - 1) * bsh * e), Saved("global keys copy", bsh * e),
                  Saved("global query", b * g * h * e), Saved("global softmax output (fp32)", global_probs * 4)]
        if s.attn_p:
            layer += [Drop("global attention probabilities", global_probs),
                      Saved("global dropped probabilities", global_probs * e)]
        elif e != 4:  # p = 0: the cast back from fp32 is a new tensor unless the activations are fp32 already
            layer.append(Saved("global probabilities (cast)", global_probs * e))
        layer.append(Saved("global values copy", bsh * e))
    layer.append(Saved("out-proj input copy", bsh * e))
    if s.hidden_p:
        layer.append(Drop("attention output", bsh))
    layer += [*_ln("LayerNorm 1", s, st, b * t), *_ffn(s, st, b * t, "LayerNorm 1 output = ")]
    if s.head == "mlm":
        return Inventory(embeddings, layer, _mlm_head(s, st, b * t, b * s.seq))
    head: list[Item] = []
    if s.hidden_p:
        head.append(Drop("head dense", b * h))
    head += [Saved("head dense input", b * h * e), Saved("head tanh output", b * h * e)]
    if s.hidden_p:
        head += [Drop("head out_proj", b * h), Saved("head out_proj input", b * h * e)]
    return Inventory(embeddings, layer, head + _loss(s, st, b, s.num_labels))


ARCHITECTURES: dict[str, Callable[[Shapes, Storage], Inventory]] = {"bert": bert, "vit": vit, "longformer": longformer}


def _cost(item: Item, st: Storage) -> tuple[str, int]:
    """(kind, bytes) of one inventory item."""
    if isinstance(item, Saved):
        return "activation", item.nbytes
    if item.in_sdpa:  # SDPA's math fallback on CPU: torch's noise in the activation dtype, not a dropout call
        return "activation", item.numel * st.activation_bytes
    return "mask", st.mask.bytes_per_call(item.numel, st.activation_bytes)


def predict(shapes: Shapes, storage: Storage) -> Prediction:
    if shapes.family not in ARCHITECTURES:
        raise ValueError(f"no memory model for family {shapes.family!r}; valid: {', '.join(ARCHITECTURES)}")
    inventory = ARCHITECTURES[shapes.family](shapes, storage)
    totals = {"activation": 0, "mask": 0}
    layer_totals = {"activation": 0, "mask": 0}
    breakdown = []
    for part, items, count in (("embeddings", inventory.embeddings, 1), ("layer", inventory.layer, shapes.layers),
                               ("head", inventory.head, 1)):
        for item in items:
            kind, nbytes = _cost(item, storage)
            breakdown.append((part, item.name, kind, nbytes))
            totals[kind] += count * nbytes
            if part == "layer":
                layer_totals[kind] += nbytes
    return Prediction(totals["activation"], totals["mask"], layer_totals["activation"], layer_totals["mask"], breakdown)
