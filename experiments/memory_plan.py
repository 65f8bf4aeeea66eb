"""Peak memory of a training step planned on the ``meta`` device: paper-scale shapes in seconds, on a CPU.

    python run.py -m experiment=memory_plan campaign/shape=bert_large_s512 variant=baseline,pmdrop

One real training step (forward, backward, AdamW step, after a first optimizer step has made AdamW's state) of the
configured model runs on ``meta`` tensors, which have shapes and dtypes but no memory, under
experiments/memory.py's :class:`~experiments.memory.StepMemory`. The peak of live tensor bytes it counts is the
plan, ``peak_memory_kind = "planned"``. With ``memory_plan.semantics=cuda`` (the default) the step runs as it would
on a CUDA GPU:

* dropout: ``nn.Dropout`` / ``F.dropout`` take ``native_dropout`` (a bool mask, 1 byte per element) as CUDA does;
  pmdrop's variants take their CUDA route, which pmdrop takes on meta (``native_dropout``, then the mask packed;
  ``seeded`` keeps a 16-byte stand-in of CUDA's Philox state, which on a GPU is a host tensor);
* AMP (``trainer.precision`` bf16/fp16): :class:`CudaAutocast`, a ``TorchFunctionMode`` that casts the inputs of
  the operators on CUDA autocast's lists (ATen/autocast_mode.h: lower precision for matmul/linear/conv/sdpa..., fp32
  for layer_norm/softmax/losses..., promote) and caches the casts of fp32 leaf tensors that require grad (the
  weights) until the forward ends, as ``torch.autocast("cuda")`` does; master weights, gradients and AdamW state
  stay fp32. Autocast itself does not act on meta tensors;
* ``attn_implementation=sdpa``: the flash kernel (half precision, no mask) or the memory-efficient kernel, which save
  q, k, v, the output and the log-sum-exp and regenerate their dropout (nothing b·h·s² is kept); eager attention
  stores its probabilities and their mask;
* AdamW's ``foreach`` implementation (torch's default on CUDA; its scratch lists count), and every storage rounded up
  to the caching allocator's 512-byte blocks.

Not modelled: kernel workspaces (cuBLAS, cuDNN: a few MiB), the CUDA context (outside ``max_memory_allocated``),
fragmentation (``memory_reserved`` above allocated), the half-to-float softmax shortcut of fp16 (bf16 converts).
``memory_plan.semantics=cpu`` runs the step as on a CPU instead; tests/harness/test_memory_plan.py checks that plan
against the same step measured on the CPU. Values the model computes from the batch and branches on (a padding
mask's ``all()``, Longformer's global-attention indices) come from :class:`ConcreteValues`, which keeps the real
values of tensors computed from the batch alone. A ``memory_plan.search`` block plans the largest batch or sequence
length whose planned peak fits ``memory_plan.budget_bytes`` (the search is experiments/maxfit.py's).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException
from torch.overrides import TorchFunctionMode
from torch.torch_version import TorchVersion
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.weak import WeakIdKeyDictionary

import pmdrop

from .data import TaskData, build_data
from .distributed import Ranks
from .maxfit import largest_fitting
from .memory import CUDA_BLOCK_BYTES, PeakMemory, StepMemory, tensors_in
from .models import build_model
from .record import MaxfitSearch, Measurement
from .step import PRECISIONS, Learner, prepare

SEMANTICS = ("cuda", "cpu")
PLANNED = "planned"
AXES = {"batch_size": ("trainer", "batch_size"), "seq_len": ("dataset", "seq_len")}

# CUDA autocast's operator lists, by operator name (ATen/autocast_mode.h of torch 2.14: AT_FORALL_LOWER_PRECISION_FP,
# AT_FORALL_FP32, AT_FORALL_FP32_SET_OPT_DTYPE, AT_FORALL_PROMOTE; tests/harness/test_memory_plan.py compares them
# with the installed header). rms_norm joined the fp32 list in torch 2.12 (pytorch#174824): 2.11's header lacks it.
# A TorchFunctionMode sees Python-level calls, so the names of the Python functions that
# reach these operators are added: operator dunders, and F.cross_entropy (log_softmax + nll_loss, both fp32).
LOWER_PRECISION = frozenset({
    "_convolution", "conv1d", "conv2d", "conv3d", "conv_tbc", "conv_transpose1d", "conv_transpose2d",
    "conv_transpose3d", "convolution", "prelu", "addmm", "addmv", "addr", "matmul", "einsum", "mm", "mv",
    "linalg_vecdot", "linear", "addbmm", "baddbmm", "bmm", "chain_matmul", "linalg_multi_dot",
    "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell",
    "_scaled_dot_product_flash_attention", "scaled_dot_product_attention"})
FP32 = frozenset({
    "acos", "asin", "cosh", "erfinv", "exp", "expm1", "log", "log10", "log2", "log1p", "reciprocal", "rsqrt", "sinh",
    "tan", "pow", "softplus", "layer_norm", "native_layer_norm", "group_norm", "frobenius_norm",
    "nuclear_norm", "cosine_similarity", "poisson_nll_loss", "cosine_embedding_loss", "nll_loss", "nll_loss2d",
    "hinge_embedding_loss", "kl_div", "l1_loss", "smooth_l1_loss", "huber_loss", "mse_loss", "margin_ranking_loss",
    "multilabel_margin_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
    "binary_cross_entropy_with_logits", "dist", "pdist", "cdist", "renorm", "logsumexp", "upsample_nearest1d",
    "_upsample_nearest_exact1d", "upsample_nearest2d", "_upsample_nearest_exact2d", "upsample_nearest3d",
    "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d", "_upsample_bilinear2d_aa",
    "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bicubic2d_aa",
    *(("rms_norm",) if TorchVersion(torch.__version__) >= "2.12" else ())})
FP32_SET_OPT_DTYPE = frozenset({"prod", "softmax", "log_softmax", "cumprod", "cumsum", "linalg_vector_norm",
                                "linalg_matrix_norm", "sum"})
PROMOTE = frozenset({"addcdiv", "addcmul", "atan2", "bilinear", "cross", "dot", "vdot", "grid_sampler", "index_put",
                     "tensordot", "scatter_add"})
_PYTHON_NAMES = {"__matmul__": "matmul", "__rmatmul__": "matmul", "__pow__": "pow", "__rpow__": "pow",
                 "cross_entropy": "nll_loss"}


def _floating(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype is not torch.float64


class CudaAutocast(TorchFunctionMode):
    """``torch.autocast("cuda", dtype)`` for tensors on any device (here: meta), at the level of Python calls."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, its cast)

    def _cast(self, t: object, dtype: torch.dtype) -> object:
        if not _floating(t) or t.dtype is dtype:
            return t
        cacheable = dtype is self.dtype and t.dtype is torch.float32 and t.requires_grad and t.is_leaf
        if not cacheable:
            return t.to(dtype)
        if id(t) not in self._cache:
            self._cache[id(t)] = (t, t.to(dtype))
        return self._cache[id(t)][1]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        name = _PYTHON_NAMES.get(name, name)
        if name in LOWER_PRECISION:
            args, kwargs = tree_map(lambda t: self._cast(t, self.dtype), (args, kwargs))
        elif name in FP32:
            args, kwargs = tree_map(lambda t: self._cast(t, torch.float32), (args, kwargs))
        elif name in FP32_SET_OPT_DTYPE and kwargs.get("dtype") is None:
            first = next((t for t in tree_leaves(args) if isinstance(t, torch.Tensor)), None)
            if _floating(first):
                kwargs = {**kwargs, "dtype": torch.float32}
        elif name in PROMOTE:
            floats = [t for t in tree_leaves((args, kwargs)) if _floating(t)]
            if floats:
                widest = floats[0].dtype
                for t in floats[1:]:
                    widest = torch.promote_types(widest, t.dtype)
                args, kwargs = tree_map(lambda t: self._cast(t, widest), (args, kwargs))
        return func(*args, **kwargs)

    def __exit__(self, *exc: object) -> None:
        self._cache.clear()  # torch.autocast drops its cast cache when the outermost autocast region ends
        super().__exit__(*exc)


def _bind_dropout(input, p=0.5, train=True, inplace=False, training=None):  # noqa: A002 - torch's names
    return input, p, train if training is None else training, inplace


def _bind_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


class CudaKernels(TorchFunctionMode):
    """The kernels CUDA picks where CPU/meta would pick others: ``native_dropout`` for out-of-place dropout (a bool
    mask saved for backward), and SDPA's flash or memory-efficient kernel instead of the math fallback."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.dropout or func is torch.nn.functional.dropout:
            x, p, train, inplace = _bind_dropout(*args, **kwargs)
            if train and not inplace and 0.0 < p < 1.0 and x.numel() > 0:
                return torch.ops.aten.native_dropout(x, p, True)[0]
        if func is torch.nn.functional.scaled_dot_product_attention:
            return _cuda_sdpa(*_bind_sdpa(*args, **kwargs))
        return func(*args, **kwargs)


def _cuda_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa) -> torch.Tensor:
    if enable_gqa:
        raise NotImplementedError("memory_plan: grouped-query SDPA is not planned (no model here uses it)")
    flash = attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.size(-1) <= 256
    if flash:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                  False, scale=scale)[0]
    if attn_mask is not None:
        attn_mask = attn_mask.expand(query.size(0), query.size(1), query.size(2), key.size(2))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, needs_grad,
                                                                  dropout_p, is_causal, scale=scale)[0]


# ------------------------------------------------------------------ pmdrop's route on meta
@contextlib.contextmanager
def pmdrop_route_on_meta(semantics: str) -> Iterator[None]:
    """pmdrop drops out meta tensors by its CUDA route (``native_dropout``, then the packed mask). A plan with CPU
    semantics sends them by its CPU (noise) route instead, as pmdrop does CPU tensors."""
    if semantics == "cuda":
        yield
        return
    with pmdrop.use_route("noise", device_type="meta"):
        yield


# ------------------------------------------------------------------ values computed from the batch
_DATA_DEPENDENT = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                   torch.ops.aten.equal.default}
_VIEWS = {torch.ops.aten.select.int, torch.ops.aten.slice.Tensor, torch.ops.aten.unsqueeze.default,
          torch.ops.aten.squeeze.dim, torch.ops.aten.alias.default, torch.ops.aten.expand.default}
_CONCRETE_LIMIT = 1 << 24  # elements: batch-derived tensors (ids, masks) are b x s; activations are never copied


class _Recipe:
    """A batch-derived pointwise result too big to compute on the CPU (transformers materialises b x 1 x s x s
    masks and slices them back to b x s): its operator and inputs, each to be broadcast to ``shape``. A view of it is
    the recipe on the inputs' views, computed once it is small."""

    def __init__(self, func, args: tuple, kwargs: dict, shape: torch.Size) -> None:
        self.func, self.args, self.kwargs, self.shape = func, args, kwargs, shape

    def viewed(self, view, view_args: tuple, shape: torch.Size) -> _Recipe:
        def through(x):
            if isinstance(x, _Recipe):
                return x.viewed(view, view_args, shape)
            if isinstance(x, torch.Tensor):
                return view(x.expand(self.shape), *view_args)
            return x

        return _Recipe(self.func, tree_map(through, self.args), tree_map(through, self.kwargs), shape)

    def value(self) -> torch.Tensor:
        def computed(x):
            return x.value() if isinstance(x, _Recipe) else x

        return self.func(*tree_map(computed, self.args), **tree_map(computed, self.kwargs))


_FROM_DATA = {torch.tensor, torch.as_tensor, torch.asarray}


class _TensorsFromData(TorchFunctionMode):
    """Records the values of meta tensors made from Python data (``torch.tensor(0.0, device=mask.device)``, as
    transformers 5.17's masks do): these factories reach no dispatched operator, so a TorchDispatchMode never sees the
    tensor made, and a value computed from it would otherwise be unknown."""

    def __init__(self, values: WeakIdKeyDictionary) -> None:
        super().__init__()
        self.values = values

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        made = (func in _FROM_DATA and isinstance(out, torch.Tensor) and out.device.type == "meta"
                and out not in self.values)
        if made and not any(isinstance(t, torch.Tensor) for t in tree_leaves((args, kwargs))):
            self.values[out] = func(*args, **{**kwargs, "device": "cpu"})
        return out


class ConcreteValues(TorchDispatchMode):
    """Keeps the real (CPU) value of every meta tensor computed from the batch alone, so that a model's
    data-dependent questions (``item``, ``bool``, ``nonzero``) get the answers the real batch gives."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.values: WeakIdKeyDictionary = WeakIdKeyDictionary()  # meta tensor -> CPU tensor or _Recipe
        for meta, concrete in pairs:
            self.values[meta] = concrete
        self._from_data = _TensorsFromData(self.values)

    def __enter__(self) -> ConcreteValues:
        self._from_data.__enter__()
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._from_data.__exit__(*exc)

    def _concrete(self, tree):
        def value(t):
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                return self.values[t]
            if isinstance(t, torch.device) and t.type == "meta":
                return torch.device("cpu")
            return t

        return tree_map(value, tree)

    def _answer(self, func, args, kwargs):
        concrete = func(*self._concrete(args), **self._concrete(kwargs))
        if not isinstance(concrete, torch.Tensor):
            return concrete
        out = torch.empty(concrete.shape, dtype=concrete.dtype, device="meta")
        self.values[out] = concrete
        return out

    def _keep(self, func, args, kwargs, out, metas) -> bool:
        """Record the values of ``out``; False when they cannot be known."""
        inputs = [self.values.get(t) for t in metas]
        if any(v is None for v in inputs):
            return False
        outputs = [t for t in tensors_in(out) if t.device.type == "meta"]
        makes_meta = metas or any(isinstance(v, torch.device) and v.type == "meta" for v in kwargs.values())
        if not outputs or not makes_meta:
            return True
        recipes = any(isinstance(v, _Recipe) for v in inputs)
        small = all(t.numel() <= _CONCRETE_LIMIT for t in outputs)
        if func in _VIEWS and isinstance(inputs[0], _Recipe) and len(outputs) == 1:
            recipe = inputs[0].viewed(func, args[1:], outputs[0].shape)
            self.values[outputs[0]] = recipe.value() if small else recipe
            return True
        if torch.Tag.pointwise in func.tags and len(outputs) == 1 and (recipes or not small):
            self.values[outputs[0]] = _Recipe(func, self._concrete(args), self._concrete(kwargs), outputs[0].shape)
            return True
        if recipes or not (small or func in _VIEWS):  # a view of a CPU tensor costs nothing, whatever its size
            return False
        concrete = func(*self._concrete(args), **self._concrete(kwargs))
        for meta, value in zip(tree_leaves(out), tree_leaves(concrete), strict=False):
            if isinstance(meta, torch.Tensor) and meta.device.type == "meta":
                self.values[meta] = value
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        metas = [t for t in tensors_in(args, kwargs) if t.device.type == "meta"]
        if metas and not any(t in self.values for t in metas) and func not in _DATA_DEPENDENT:
            out = func(*args, **kwargs)  # the common case, an activation's operator: nothing to know or forget
            for t in tensors_in(out):
                self.values.pop(t, None)
            return out
        if func in _DATA_DEPENDENT:
            if not all(isinstance(self.values.get(t), torch.Tensor) for t in metas):
                raise RuntimeError(f"memory_plan: the model asks for a data-dependent value ({func}) of a tensor "
                                   "that is not computed from the batch alone; the plan cannot know it")
            return self._answer(func, args, kwargs)
        out = func(*args, **kwargs)
        if not self._keep(func, args, kwargs, out, metas):
            for t in tensors_in(out):  # e.g. an in-place op with an unknown operand: no longer known
                self.values.pop(t, None)
        return out


# ------------------------------------------------------------------ one step, on any device
@dataclass
class PlanSchema:
    """Types of ``memory_plan.*``."""

    semantics: str = "cuda"
    budget_bytes: int = 80 * 10**9  # the paper's A100 80GB, in bytes (the GPU's 80 GiB less the context: see README)
    search: dict | None = None  # {axis: batch_size | seq_len, start, limit, multiple_of}: the largest that fits


def _schema(cfg: DictConfig) -> PlanSchema:
    try:
        block = OmegaConf.to_container(cfg.memory_plan, resolve=True)  # resolved in the run's config, not apart
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(PlanSchema), block))
    except OmegaConfBaseException as error:
        raise ValueError(f"memory_plan: {str(error).splitlines()[0]}") from None


def check_plan_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad ``memory_plan`` block, before any work."""
    plan = _schema(cfg)
    if plan.semantics not in SEMANTICS:
        raise ValueError(f"memory_plan.semantics={plan.semantics!r} is not valid; valid: {', '.join(SEMANTICS)}")
    if plan.semantics == "cpu" and cfg.trainer.precision != "fp32":
        raise ValueError(f"memory_plan.semantics=cpu plans fp32 only (trainer.precision={cfg.trainer.precision!r}); "
                         "CUDA autocast is what is modelled: use memory_plan.semantics=cuda")
    if cfg.trainer.compile:
        raise ValueError("memory_plan: trainer.compile=true is not planned (Inductor's memory plan is its own)")
    if plan.budget_bytes < 1:
        raise ValueError(f"memory_plan.budget_bytes={plan.budget_bytes} must be >= 1")
    if plan.search is not None:
        axis = plan.search.get("axis")
        if axis not in AXES:
            raise ValueError(f"memory_plan.search.axis={axis!r} is not valid; valid: {', '.join(AXES)}")
        unknown = set(plan.search) - {"axis", "start", "limit", "multiple_of"}
        if unknown:
            raise ValueError(f"memory_plan.search has unknown keys {sorted(unknown)}; valid: axis, start, limit, "
                             "multiple_of")


def _sized(cfg: DictConfig, axis: str, size: int) -> DictConfig:
    sized = copy.deepcopy(cfg)
    group, key = AXES[axis]
    with open_dict(sized):
        sized[group][key] = size
    return sized


def _step(learner: Learner, batch: dict[str, torch.Tensor], memory: StepMemory | None) -> None:
    """Forward, backward, optimizer step: the training loop's step (without reading the loss back)."""
    on_save = None if memory is None else memory.note_saved
    if memory is not None:
        memory.phase("forward")
    with pmdrop.track_saved_tensors(learner.model.parameters(), on_save=on_save):
        loss = learner.forward(batch)
    if memory is not None:
        memory.phase("backward")
    learner.scaler.scale(loss).backward()
    del loss
    if memory is not None:
        memory.phase("optimizer")
    learner.update()


def _make_optimizer_state(learner: Learner) -> None:
    """AdamW makes its state at its first step: take one with zero gradients, so the measured step is a steady one."""
    for parameter in learner.model.parameters():
        if parameter.requires_grad:
            parameter.grad = torch.zeros_like(parameter)
    learner.optimizer.step()
    learner.optimizer.zero_grad(set_to_none=True)


def step_memory(cfg: DictConfig, device: torch.device | str, semantics: str = "cuda",
                data: TaskData | None = None) -> tuple[PeakMemory, dict]:
    """The live-tensor peak of one steady training step of ``cfg``'s model, variant and batch on ``device``.

    On ``meta`` that is a plan with ``semantics`` ("cuda" or "cpu"); on a real device, a measurement. ``data``: the
    samples to take the batch from (default: ``cfg.dataset``'s, built). Returns the peak and facts about the step
    (parameters, batch size, sequence length)."""
    device = torch.device(device)
    trainer = cfg.trainer
    torch.manual_seed(cfg.seed)
    data = build_data(cfg.dataset, cfg.model, cfg.seed) if data is None else data
    with torch.device(device):
        model = build_model(cfg.model, data)
    cuda_on_meta = device.type == "meta" and semantics == "cuda"
    learner = Learner(prepare(pmdrop.convert(model, cfg.variant.name), trainer, device, Ranks()), trainer, device)
    dtype = PRECISIONS[trainer.precision]
    if cuda_on_meta:
        for group in learner.optimizer.param_groups:
            group["foreach"] = True  # torch's default for CUDA parameters
        learner.autocast = (lambda: CudaAutocast(dtype)) if dtype else contextlib.nullcontext
    # a plan needs one batch's shapes: one larger than the training set repeats its samples
    cpu_batch = (next(data.batches(trainer.batch_size, torch.Generator().manual_seed(cfg.seed)))
                 if data.train_samples >= trainer.batch_size else data.repeated_batch(trainer.batch_size))
    batch = {key: value.to(device) for key, value in cpu_batch.items()}
    with contextlib.ExitStack() as stack:
        if device.type == "meta":
            stack.enter_context(pmdrop_route_on_meta(semantics))
        if cuda_on_meta:
            stack.enter_context(CudaKernels())
        if device.type == "meta":
            stack.enter_context(ConcreteValues([(batch[key], cpu_batch[key]) for key in batch]))
        _make_optimizer_state(learner)
        with StepMemory(device, learner.model, learner.optimizer, inputs=batch,
                        block_bytes=CUDA_BLOCK_BYTES if cuda_on_meta else 1) as memory:
            _step(learner, batch, memory)
    facts = {"num_params": sum(p.numel() for p in model.parameters()), "batch_size": trainer.batch_size,
             "seq_len": data.seq_len}
    return memory.result(), facts


def _planned(peak: PeakMemory, plan: PlanSchema, cfg: DictConfig) -> dict:
    return {"semantics": plan.semantics, "tensor_bytes": peak.peak_bytes, "split": peak.split, "phase": peak.phase,
            "block_bytes": peak.block_bytes, "attention": cfg.model.get("attn_implementation", "eager"),
            "grad_checkpointing": bool(cfg.trainer.grad_checkpointing), "budget_bytes": plan.budget_bytes,
            "fits_budget": peak.peak_bytes <= plan.budget_bytes}


def run_plan(cfg: DictConfig, log_step: Callable[[int, dict], None]) -> Measurement:
    """The job of a config with a ``memory_plan`` block: results.json's measured fields, planned."""
    plan = _schema(cfg)
    search = None
    if plan.search is not None:
        axis, probes = plan.search["axis"], []

        def fits(size: int) -> bool:
            peak, _ = step_memory(_sized(cfg, axis, size), "meta", plan.semantics)
            probes.append([size, peak.peak_bytes <= plan.budget_bytes, peak.peak_bytes])
            log_step(len(probes), {"size": size, "fits": probes[-1][1], "bytes": peak.peak_bytes})
            return probes[-1][1]

        largest = largest_fitting(fits, plan.search.get("start", 1), plan.search.get("limit", 4096),
                                  plan.search.get("multiple_of", 1))
        search = MaxfitSearch(axis=axis, largest=largest, budget=PLANNED, budget_bytes=plan.budget_bytes,
                              multiple_of=plan.search.get("multiple_of", 1), probes=probes)
        cfg = _sized(cfg, axis, max(largest, plan.search.get("start", 1)))
    peak, facts = step_memory(cfg, "meta", plan.semantics)
    log_step(1, {"planned_peak_bytes": peak.peak_bytes})
    return Measurement(
        device=f"meta ({plan.semantics} semantics)",
        world_size=1,
        steps=1,
        batch_size=facts["batch_size"],
        global_batch_size=facts["batch_size"],
        seq_len=facts["seq_len"],
        num_params=facts["num_params"],
        precision=cfg.trainer.precision,
        peak_memory_bytes=peak.peak_bytes,
        peak_memory_bytes_per_rank=[peak.peak_bytes],
        peak_memory_kind=PLANNED,
        memory_at_start_bytes=peak.start_bytes,
        tensor_peak_bytes=peak.peak_bytes,
        tensor_peak_split=peak.split,
        tensor_peak_phase=peak.phase,
        saved_mask_bytes=peak.saved_mask_bytes,
        saved_activation_bytes=peak.saved_activation_bytes,
        saved_parameter_bytes=peak.saved_parameter_bytes,
        memory_plan=_planned(peak, plan, cfg),
        maxfit=search,
    )
