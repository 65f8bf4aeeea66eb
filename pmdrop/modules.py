"""The one-line swap: ``model = pmdrop.convert(model, "pmdrop")``.

Models apply dropout two ways: ``nn.Dropout`` modules, and ``F.dropout`` called inside their
code (transformers' ``eager_attention_forward``, Longformer's self-attention). ``convert``
replaces the modules with :class:`PackedDropout`. For the functional calls it reads, once per
module class, which methods can reach ``torch.nn.functional.dropout``: their code objects'
names resolved through globals, closures, module attributes (``nn.functional.dropout``,
``F.dropout``, ``torch.nn.functional.dropout``) and ``self.`` methods, a few calls deep. Modules
of such a class get a same-named subclass whose methods are copies of the originals — the same
code objects, so signatures, tracebacks and warnings are the originals' — with globals in which
``F.dropout`` is pmdrop's. Nothing runs per torch op, and a layer re-run by activation
checkpointing runs the same routed methods. Code the analysis cannot see needs ``routing="all"``
(:func:`dropout_mode` around every container's forward).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .functional import dropout
from .variants import DropoutVariant, check_runs_on, get_variant, register_variant, variant_names

_log = logging.getLogger("pmdrop")

ROUTINGS = ("static", "all")
_MAX_DEPTH = 8  # calls and attribute hops followed from a method before the analysis stops
_TORCH_DROPOUT = torch.nn.functional.dropout
# torch.jit.is_tracing() without its two Python calls on every training call (private; dynamo folds it to None).
_tracing = torch._C._get_tracing_state
_local = threading.local()


_NOT_TRACEABLE = (
    "torch.jit.trace cannot record pmdrop's dropout in training mode (its saved-tensor hooks are Python); "
    "trace in eval mode (model.eval()), or use torch.compile or torch.export"
)


def _refuse_scripting(self: nn.Module) -> nn.Module:
    raise RuntimeError("pmdrop's dropout cannot be compiled by TorchScript (its saved-tensor hooks are Python): "
                       "use torch.compile or torch.export instead")


def _routed_dropout(spec: DropoutVariant) -> Callable[..., torch.Tensor]:
    def routed_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False):  # noqa: A002
        if training and _tracing():
            raise RuntimeError(_NOT_TRACEABLE)
        return dropout(input, p, training, inplace, spec)

    routed_dropout.__qualname__ = f"routed_dropout[{spec.name}]"
    return routed_dropout


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name assigned later in the enclosing function)
        return None


def _code_names(code: types.CodeType) -> frozenset[str]:
    """Global and attribute names a code object and the code nested in it (lambdas, comprehensions) use."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return frozenset(names)


class _Router:
    """Copies of functions and modules in which ``F.dropout`` is ``spec``'s, for one variant.

    Each ``route_*`` returns its argument itself when nothing it reaches calls dropout, so
    "is it routed" is an identity test and unrelated code is never copied.
    """

    def __init__(self, spec: DropoutVariant) -> None:
        self.spec = spec
        self.dropout = _routed_dropout(spec)
        self._done: dict[object, object] = {}  # function, or (module, names) -> routed copy or the original
        self._path: set[object] = set()  # keys being analysed, so that cycles end
        self._cuts: set[object] = set()  # keys the current analysis stopped at (a cycle, or _MAX_DEPTH)
        self._classes: dict[type, type | None] = {}

    def _memo(self, key: object, original: object, depth: int, analyse: Callable[[], object]) -> object:
        """``analyse()``, cached unless it stopped short (at a key still being analysed, or too deep):
        that partial answer may miss a route another path finds, so it is redone where it is met again."""
        if key in self._done:
            return self._done[key]
        if key in self._path or depth > _MAX_DEPTH:
            self._cuts.add(key)
            return original
        outer, self._cuts = self._cuts, set()
        self._path.add(key)
        try:
            result = analyse()
        finally:
            self._path.discard(key)
        cuts = self._cuts - {key}
        self._cuts = outer | cuts
        if not cuts:
            self._done[key] = result
        return result

    def route_value(self, value: object, names: frozenset[str], depth: int) -> object:
        if value is _TORCH_DROPOUT:
            return self.dropout
        if isinstance(value, types.FunctionType):
            return self._memo(value, value, depth, lambda: self._route_function(value, depth))
        if isinstance(value, types.ModuleType):
            return self._memo((value, names), value, depth, lambda: self._route_module(value, names, depth))
        return value

    def _routed_entries(self, namespace: dict, names: frozenset[str], depth: int) -> dict[str, object]:
        """The entries of ``namespace`` among ``names`` whose routed value differs from the original."""
        replaced = {}
        for name in names & namespace.keys():
            value = namespace[name]
            routed = self.route_value(value, names, depth + 1)
            if routed is not value:
                replaced[name] = routed
        return replaced

    def _route_function(self, fn: types.FunctionType, depth: int) -> types.FunctionType:
        names = _code_names(fn.__code__)
        replaced = self._routed_entries(fn.__globals__, names, depth)
        cells = fn.__closure__ or ()
        values = [_cell_contents(cell) for cell in cells]
        routed = [self.route_value(value, names, depth + 1) for value in values]
        if not replaced and all(a is b for a, b in zip(values, routed, strict=True)):
            return fn
        new_cells = tuple(c if a is b else types.CellType(b) for c, a, b in zip(cells, values, routed, strict=True))
        # A snapshot of the globals: a module global rebound after convert is not seen by the copy.
        copy = types.FunctionType(fn.__code__, {**fn.__globals__, **replaced}, fn.__name__, fn.__defaults__,
                                  new_cells or None)
        copy.__kwdefaults__ = dict(fn.__kwdefaults__) if fn.__kwdefaults__ else None
        copy.__dict__.update(fn.__dict__)
        copy.__qualname__, copy.__module__, copy.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
        copy.__annotations__ = fn.__annotations__
        return copy

    def _route_module(self, module: types.ModuleType, names: frozenset[str], depth: int) -> types.ModuleType:
        replaced = self._routed_entries(module.__dict__, names, depth)
        if not replaced:
            return module
        shim = types.ModuleType(module.__name__, module.__doc__)
        shim.__dict__.update(module.__dict__)
        shim.__dict__.update(replaced)
        shim.__dict__["__getattr__"] = lambda name: getattr(module, name)  # lazily loaded submodules
        return shim

    def routed_methods(self, cls: type) -> dict[str, object]:
        """Class attributes that make ``cls``'s methods route: every method reachable from ``forward``
        through ``self.<name>`` whose code reaches ``F.dropout``, as a routed copy."""
        found: dict[str, object] = {}
        seen: set[str] = set()
        pending = ["forward"]
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            attr = inspect.getattr_static(cls, name, None)
            wrapper = type(attr) if isinstance(attr, staticmethod | classmethod) else None
            fn = attr.__func__ if wrapper else attr
            if not isinstance(fn, types.FunctionType):
                continue
            routed = self.route_value(fn, frozenset(), 0)
            if routed is not fn:
                found[name] = wrapper(routed) if wrapper else routed
            pending.extend(_function_names(fn))
        return found

    def routed_class(self, cls: type) -> type | None:
        """A same-named subclass of ``cls`` with routed methods, or None when ``cls`` never calls F.dropout."""
        if cls not in self._classes:
            methods = self.routed_methods(cls)
            self._classes[cls] = None if not methods else type(cls)(
                cls.__name__, (cls,), {
                    **methods, "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
                    "_pmdrop_base": cls, "_pmdrop_spec": self.spec, "__reduce_ex__": _reduce_routed,
                    "__prepare_scriptable__": _refuse_scripting,
                },
            )
        return self._classes[cls]


def _function_names(fn: types.FunctionType, depth: int = 0) -> frozenset[str]:
    """Names used by ``fn`` and by the functions in its closure (a decorator's wrapped function)."""
    names = _code_names(fn.__code__)
    for cell in fn.__closure__ or ():
        value = _cell_contents(cell)
        if isinstance(value, types.FunctionType) and depth < _MAX_DEPTH:
            names |= _function_names(value, depth + 1)
    return names


_router = functools.cache(_Router)  # one per variant


def _restore_routed(base: type, spec: DropoutVariant) -> nn.Module:
    # The registry's instance of spec, registering it where this process has not.
    spec = get_variant(spec.name) if spec.name in variant_names() else register_variant(spec)
    cls = _router(spec).routed_class(base)
    return (cls or base).__new__(cls or base)


def _reduce_routed(self: nn.Module, protocol: int) -> tuple:
    # The routed subclass is made at run time and cannot be found by name: pickle the original
    # class and the variant, and make the subclass again on load.
    return _restore_routed, (self._pmdrop_base, self._pmdrop_spec), self.__getstate__()


class _RouteDropout(TorchFunctionMode):
    def __init__(self, spec: DropoutVariant) -> None:
        super().__init__()
        self.dropout = _routed_dropout(spec)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return (self.dropout if func is _TORCH_DROPOUT else func)(*args, **(kwargs or {}))


def active_variant() -> str | None:
    """Name of the variant the innermost :func:`dropout_mode` routes to, or None outside one."""
    stack = getattr(_local, "stack", None)
    return stack[-1][0] if stack else None


def _enter_mode(spec: DropoutVariant, *_hook_args: object) -> None:
    """Route to ``spec`` until the matching :func:`_exit_mode` (a new mode only where the innermost routes elsewhere);
    with :func:`_exit_mode` (``always_call``, so it also runs when forward raises), the forward hooks of
    ``routing="all"``."""
    mode = None if active_variant() == spec.name else _RouteDropout(spec)
    if mode is not None:
        mode.__enter__()
    _local.__dict__.setdefault("stack", []).append((spec.name, mode))


def _exit_mode(*_hook_args: object) -> None:
    _, mode = _local.stack.pop()
    if mode is not None:
        mode.__exit__(None, None, None)


@contextmanager
def dropout_mode(variant: str | DropoutVariant = "pmdrop") -> Iterator[None]:
    """Send every ``torch.nn.functional.dropout`` call made inside to pmdrop's ``variant``.

    Also covers ``nn.Dropout`` modules (their forward calls ``F.dropout``). Dropout fused into
    ``F.scaled_dot_product_attention`` is not a separate call and stays torch's.
    """
    _enter_mode(get_variant(variant))
    try:
        yield
    finally:
        _exit_mode()


class PackedDropout(nn.Dropout):
    """``nn.Dropout`` whose mask is stored for backward as ``variant`` says: ``PackedDropout(0.1)`` packs it at 1 bit
    per element and computes what ``nn.Dropout(0.1)`` computes, bit for bit (output, gradient, RNG state).

    ``variant``: ``"pmdrop"`` (default) or another of :func:`pmdrop.variant_names`; :func:`pmdrop.dropout` says when to
    pick each. An ``nn.Dropout`` subclass, so code that reads
    ``.p`` or checks ``isinstance(m, nn.Dropout)`` keeps working; ``.variant`` reads or switches the variant.
    TorchScript cannot compile it (a one-sentence RuntimeError); ``torch.compile`` and ``torch.export`` can.
    Raises ValueError for an unknown variant.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, variant: str | DropoutVariant = "pmdrop") -> None:
        super().__init__(p, inplace)
        self.spec = get_variant(variant)  # resolved once here, not on every call

    @property
    def variant(self) -> str:
        return self.spec.name

    @variant.setter
    def variant(self, name: str | DropoutVariant) -> None:
        self.spec = get_variant(name)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Dropout's name
        if self.training and _tracing():
            raise RuntimeError(_NOT_TRACEABLE)
        return dropout(input, self.p, self.training, self.inplace, self.spec)

    __prepare_scriptable__ = _refuse_scripting  # torch.jit.script calls it on every submodule first

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}"


def _warn_fused_attention_dropout(model: nn.Module) -> None:
    """Attention dropout inside SDPA is one fused kernel: no mask call exists for pmdrop to take."""
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    attn_p = getattr(config, "attention_probs_dropout_prob", 0.0) or getattr(config, "attention_dropout", 0.0)
    if attn not in (None, "eager") and attn_p:
        warnings.warn(
            f"attention uses {attn!r}: its attention-probability dropout (p={attn_p}) runs inside the fused "
            "kernel and is not packed; load the model with attn_implementation='eager' to pack it",
            stacklevel=3,
        )
    for name, module in model.named_modules():
        attn_drop = getattr(module, "attn_drop", None)
        if getattr(module, "fused_attn", False) and getattr(attn_drop, "p", 0.0):
            warnings.warn(
                f"{name or type(module).__name__} uses fused attention: its attention dropout is not packed; "
                "call timm.layers.set_fused_attn(False) before create_model to pack it",
                stacklevel=3,
            )
            break


def _undo_routing(module: nn.Module) -> None:
    """Back to the module's own class and hooks, so that converting again starts from the original."""
    base = type(module).__dict__.get("_pmdrop_base")
    if base is not None:
        module.__class__ = base
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for key in [k for k, hook in hooks.items() if hook is _exit_mode or getattr(hook, "func", None) is _enter_mode]:
            del hooks[key]
            module._forward_hooks_always_called.pop(key, None)


# Dropout kinds convert leaves as torch's: they drop whole channels or keep SELU's statistics, not elementwise masks.
_UNHANDLED_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def convert(model: nn.Module, variant: str | DropoutVariant = "pmdrop", routing: str = "static") -> nn.Module:
    """Route every dropout of ``model`` through pmdrop's ``variant``; returns ``model``, changed in place.

    ``variant``: a name from :func:`pmdrop.variant_names` or a :class:`pmdrop.DropoutVariant`; ``"pmdrop"`` (mask at
    1 bit per element, bit-identical to torch) for almost every model. :func:`pmdrop.dropout` says when to pick another.

    What changes: every exact ``nn.Dropout`` module becomes a :class:`PackedDropout` (an ``nn.Dropout`` subclass, same
    ``p`` and ``inplace``); modules whose own code calls ``F.dropout`` (transformers' eager attention, Longformer)
    get a same-named subclass whose methods are the originals' code with ``F.dropout`` bound to pmdrop's
    (``routing="static"``, no cost per op); ``routing="all"`` instead runs every container's forward under
    :func:`dropout_mode`, for code the analysis cannot see (slower: Python runs for every torch op). Converting again
    switches the variant and routing. What stays: parameters, buffers, ``state_dict`` keys, ``forward``'s signature,
    eval mode (torch's dropout, the identity), and these, which keep torch's dropout with a warning: ``Dropout1d``/
    ``2d``/``3d``, ``AlphaDropout``, ``FeatureAlphaDropout``, ``nn.Dropout`` subclasses whose code calls no
    ``F.dropout`` (``routing="all"`` routes those), and attention dropout fused into
    ``scaled_dot_product_attention`` (SDPA, flash; load transformers models with ``attn_implementation="eager"``).

    A converted model pickles; loading a whole pickled model needs ``torch.load(path, weights_only=False)`` (its
    classes are made at run time), or save and load its ``state_dict`` into a model converted again.

    Raises ValueError for an unknown variant or routing, or a variant the model's device cannot run (naming the valid
    ones); TypeError for a TorchScript module (convert the eager model, then use ``torch.compile`` or
    ``torch.export``). Warns when it finds no dropout to convert. Logs (logger ``pmdrop``, INFO) what it converted.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise TypeError(f"convert takes an eager nn.Module, got a TorchScript {type(model).__name__}: convert the "
                        "eager model before scripting (TorchScript cannot run pmdrop's dropout; torch.compile and "
                        "torch.export can)")
    spec = get_variant(variant)
    if routing not in ROUTINGS:
        raise ValueError(f"unknown routing {routing!r}; valid: {', '.join(ROUTINGS)}")
    for device in {t.device for t in (*model.parameters(), *model.buffers())}:
        check_runs_on(spec, device)
    router = _router(spec)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                replacement = PackedDropout(child.p, child.inplace, spec)
                replacement.train(child.training)
                setattr(parent, name, replacement)
                replaced += 1
    modules, routed, unhandled, warned = 0, set(), {}, False
    for module in model.modules():
        _undo_routing(module)
        if isinstance(module, PackedDropout):
            module.spec = spec
            modules += 1
        elif isinstance(module, _UNHANDLED_DROPOUT):
            unhandled[type(module).__name__] = unhandled.get(type(module).__name__, 0) + 1
        elif routing == "all":
            if module is model or next(module.children(), None) is not None:
                module.register_forward_pre_hook(functools.partial(_enter_mode, spec))
                module.register_forward_hook(_exit_mode, always_call=True)
        else:
            cls = router.routed_class(type(module))
            if cls is not None:
                module.__class__ = cls
                routed.add(cls.__qualname__)
            elif isinstance(module, nn.Dropout):  # only the exact nn.Dropout is replaced
                warnings.warn(f"{type(module).__qualname__} subclasses nn.Dropout but its own code calls no F.dropout "
                              "that convert can route (e.g. it calls super().forward): it keeps torch's dropout; "
                              "convert(..., routing='all') routes it", stacklevel=2)
                warned = True
    if unhandled:
        kinds = ", ".join(f"{count} {name}" for name, count in unhandled.items())
        warnings.warn(f"convert leaves {kinds} as torch's dropout: pmdrop packs elementwise dropout (nn.Dropout, "
                      "F.dropout) only", stacklevel=2)
    elif not modules and not routed and routing == "static" and not warned:
        warnings.warn(f"convert found no dropout in {type(model).__name__}: no nn.Dropout module and no F.dropout "
                      "call in its modules' code; the model is unchanged (routing='all' reaches code the analysis "
                      "cannot see)", stacklevel=2)
    _log.info("convert(%s, %r, routing=%r): %d nn.Dropout -> PackedDropout (%d in all); F.dropout routed in %s",
              type(model).__name__, spec.name, routing, replaced, modules,
              ", ".join(sorted(routed)) or ("every container's forward" if routing == "all" else "no module"))
    _warn_fused_attention_dropout(model)
    return model
