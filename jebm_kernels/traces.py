"""Traces of users' energies: taken once per key, found again at later calls, with each call's
tensors put in.

An energy is a callable; what it computes besides z depends on what it can reach: a module's
parameters, buffers, attributes and hooks; a function's closure, defaults and the globals its code
names; a partial's arguments; a bound method's object. These are the energy's *roots*. A trace is
kept under a key made of everything about the roots that changes the graph the trace records
(types, shapes, dtypes, scalar attributes such as a temperature, training flags, hooks, the
identity of modules and functions) and of z's shape; tensors enter the key by shape only, and are
found again at each call by where they sit (a root and an attribute path: ``self.x``, a closure's
cell, ``net.0.weight``), so a posterior module given each batch as ``self.x``, or a closure rebuilt
per batch over new observations, keeps its trace and its fusion.

Traces are taken with ``make_fx`` on fake tensors: the energy's code runs on shapes only, so the
trace neither draws from torch's random generators nor writes buffers (BatchNorm's statistics, a
spectral norm's vectors) nor costs a real evaluation. A key whose trace could not be read, or whose
reading failed the start check (``fusion.py``), is traced again only after 1, 2, 4, ... more calls:
an energy that is not fusable costs a logarithmic number of traces, never one per call.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import types
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from .recognize import NotFusable, TracedEnergy, read_graph

__all__ = ["Recognition", "recognize", "forget_reads", "clear"]

_MAX_ENTRIES = 256
_MAX_ITEMS = 64          # a list, tuple or dict reached from an energy is keyed item by item up to this size
_SCALARS = (bool, int, float, complex, str, bytes, type(None))


@dataclass
class _Entry:
    traced: TracedEnergy | None
    why: str | None                     # why not fusable, when ``traced`` is None
    anchors: list                       # what the key names by identity, kept so an id is not reused
    calls: int = 0                      # calls looked up under this key
    failures: int = 0
    retry_at: int = 0                   # with traced None: trace again at this call
    confirmed: bool = False             # its reading passed the start check once (fusion.confirm)

    def fail(self, why: str) -> None:
        """Give up on this key until 2^failures more calls have passed."""
        self.failures += 1
        self.traced, self.why = None, why
        self.retry_at = self.calls + (1 << min(self.failures, 30))


@dataclass
class Recognition:
    """What ``recognize`` found for one call: a spec (with its ``PosteriorEnergy``) or why not."""
    spec: object = None
    posterior: object = None
    why: str | None = None
    entry: _Entry | None = field(default=None, repr=False)
    fresh: bool = False                 # traced at this call (not found again)
    retrace: object = field(default=None, repr=False)  # () -> Recognition: trace this key again now


_ENTRIES: dict = {}

# An energy whose key changes at every call (a counter among its attributes, a temperature set per
# call, a batch size that never repeats) would be traced at every call: after _CHURN_LIMIT new keys
# in a row it is not traced again before 1, 2, 4, ... more calls (and runs unfused meanwhile).
_CHURN_LIMIT = 4


@dataclass
class _Churn:
    streak: int = 0                     # calls in a row that needed a new key
    calls: int = 0
    failures: int = 0
    retry_at: int = 0

    def waiting(self) -> bool:
        self.calls += 1
        return self.streak >= _CHURN_LIMIT and self.calls < self.retry_at

    def seen(self, new_key: bool) -> None:
        self.streak = self.streak + 1 if new_key else 0
        if self.streak >= _CHURN_LIMIT:
            self.failures += 1
            self.retry_at = self.calls + (1 << min(self.failures, 30))

    @property
    def why(self) -> str:
        return (f"what it reads changed at each of its last {self.streak} calls (a counter or a value set per call "
                "among its attributes?), so no trace is reused; it is traced again after "
                f"{self.retry_at - self.calls} more calls")


_CHURNS: dict = {}


def _churn(kind, roots) -> _Churn:
    """The churn record of this energy: its kind and the identities of what it reaches (not z's shape)."""
    base = (kind, tuple(id(r) for r in roots))
    c = _CHURNS.pop(base, None) or _Churn()
    if len(_CHURNS) >= _MAX_ENTRIES:
        _CHURNS.pop(next(iter(_CHURNS)))
    _CHURNS[base] = c
    return c


def clear() -> None:
    _ENTRIES.clear()
    _CHURNS.clear()


def forget_reads() -> None:
    """Drop every trace's last reading of its weights (memory only: readings are found again by
    comparing values)."""
    for entry in _ENTRIES.values():
        if entry.traced is not None:
            entry.traced.forget()


def recognize(energy, z: torch.Tensor, *, shape, as_list: bool, squeeze: bool) -> Recognition:
    """The spec of ``energy`` at the [B, d] float32 tensor ``z`` (passed to the energy reshaped to
    ``shape``, as ``[z]`` with ``as_list``; a [B, 1] result read as [B] with ``squeeze``)."""
    shape = tuple(shape)

    def fn(t):
        t = t.reshape(shape) if tuple(t.shape) != shape else t
        u = energy([t] if as_list else t)
        return u.squeeze(-1) if squeeze and torch.is_tensor(u) and u.dim() == 2 and u.shape[-1] == 1 else u

    kind, roots = _roots(energy)
    anchors: list = []
    try:
        key = (kind, tuple(_signature(r, anchors, 2) for r in roots), _global_hooks(),
               shape, z.dtype, str(z.device), as_list, squeeze)
        hash(key)
    except Exception as exc:  # an attribute that cannot be hashed or read
        return Recognition(why=f"its state could not be keyed ({type(exc).__name__}: {exc})")
    entry = _ENTRIES.get(key)
    if entry is not None and not all(_alive(a) for a in entry.anchors):
        entry = None
    churn = _churn(kind, roots)
    if entry is None and churn.waiting():
        return Recognition(why=churn.why)
    churn.seen(new_key=entry is None)

    def trace_now() -> Recognition:
        nonlocal entry
        old = entry
        try:
            traced, why = _trace(fn, z, squeeze, roots), None
        except NotFusable as exc:
            traced, why = None, str(exc)
        entry = _Entry(traced, why, [_anchor(a) for a in anchors])
        if old is not None:  # a retrace keeps the key's history of failures
            entry.calls, entry.failures = old.calls, old.failures
        if traced is None:
            entry.fail(why)
        _remember(key, entry)
        return _read(entry, roots, fresh=True, retrace=None)

    if entry is None or (entry.traced is None and entry.calls >= entry.retry_at):
        found = trace_now()
        entry.calls += 1
        return found
    entry.calls += 1
    if entry.traced is None:
        return Recognition(why=entry.why, entry=entry)
    return _read(entry, roots, fresh=False, retrace=trace_now)


def _read(entry: _Entry, roots, *, fresh: bool, retrace) -> Recognition:
    if entry.traced is None:
        return Recognition(why=entry.why, entry=entry, fresh=fresh)
    try:
        attrs = {target: _resolve(roots, where) for target, where in entry.traced.bound.items()}
        spec, posterior = entry.traced.read(attrs)
    except Exception as exc:  # a tensor no longer where it was, an evaluation that needs state
        if retrace is not None:
            return retrace()
        why = (exc.args[0] if isinstance(exc, NotFusable)
               else f"its weights could not be read ({type(exc).__name__}: {exc})")
        entry.fail(why)
        return Recognition(why=why, entry=entry, fresh=fresh)
    return Recognition(spec, posterior, None, entry, fresh, retrace)


def _remember(key, entry: _Entry) -> None:
    _ENTRIES.pop(key, None)
    if len(_ENTRIES) >= _MAX_ENTRIES:
        _ENTRIES.pop(next(iter(_ENTRIES)))
    _ENTRIES[key] = entry


# ------------------------------------------------------------------------------ the trace

def _trace(fn, z: torch.Tensor, squeeze: bool, roots) -> TracedEnergy:
    from torch.fx.experimental.proxy_tensor import make_fx
    try:
        with torch.enable_grad(), _state_kept(roots), _quiet():
            gm = make_fx(fn, tracing_mode="fake", _allow_non_fake_inputs=True)(z.detach())
    except Exception as exc:  # data-dependent control flow, ops without a trace, the energy's own errors
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise NotFusable(f"it could not be traced ({type(exc).__name__}: {msg})") from None
    plan = read_graph(gm, tuple(z.shape), squeeze)
    places = _places(roots)
    bound = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            where = places.get(id(getattr(gm, node.target)))
            if where is not None:
                bound[node.target] = where
    return TracedEnergy(gm, plan, int(z.shape[1]), bound)


@contextlib.contextmanager
def _quiet():
    """The fake-tensor mode logs each op that fails in it (an energy that rejects its input, a
    shape mismatch) at ERROR level: here that is an answer (not fusable), not an error."""
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def _state_kept(roots):
    """Tensors the energy reaches hold the same values after the trace as before: an in-place write
    on a real tensor (BatchNorm's ``num_batches_tracked += 1``) runs even on fake inputs."""
    reachable = [t for t in _reachable(roots) if not t.is_inference()]
    versions = [t._version for t in reachable]
    copies = [t.detach().clone() for t in reachable]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, v, c in zip(reachable, versions, copies):
                if t._version != v:
                    t.copy_(c)


# ------------------------------------------------------------------------------ roots and keys

def _roots(energy) -> tuple[tuple, list]:
    """(what kind of callable, the objects its computation can reach besides z)."""
    if isinstance(energy, nn.Module):
        return ("module", type(energy)), [energy]
    if isinstance(energy, types.MethodType):
        kind, roots = _function_roots(energy.__func__)
        return ("method",) + kind, [energy.__self__] + roots
    if isinstance(energy, types.FunctionType):
        return _function_roots(energy)
    if isinstance(energy, functools.partial):
        kind, roots = _roots(energy.func)
        return (("partial", tuple(energy.keywords)) + kind,
                roots + list(energy.args) + list(energy.keywords.values()))
    return ("object", type(energy)), [energy] + ([energy.__dict__] if hasattr(energy, "__dict__") else [])


def _function_roots(fn: types.FunctionType) -> tuple[tuple, list]:
    """A function's closure cells, defaults and the globals its code (and its nested code) names;
    the key holds the code object and the globals dict by identity (equal code in two modules, or
    the same code over other globals, is another energy)."""
    code = fn.__code__
    names = _global_names(code)
    g = fn.__globals__
    present = tuple(n for n in names if n in g)
    cells = []
    for c in fn.__closure__ or ():
        try:
            cells.append(c.cell_contents)
        except ValueError:  # an empty cell
            cells.append(None)
    roots = cells + list(fn.__defaults__ or ()) + list((fn.__kwdefaults__ or {}).values()) + [g[n] for n in present]
    return ("function", id(code), id(g), present, tuple(fn.__kwdefaults__ or ())), roots + [code]


@functools.lru_cache(maxsize=1024)
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    names = list(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.extend(_global_names(const))
    return tuple(dict.fromkeys(names))


def _global_hooks() -> tuple:
    """nn.Module's global hooks (``register_module_forward_hook`` and kin) by identity."""
    m = nn.modules.module
    return tuple(tuple(id(h) for h in getattr(m, name, {}).values())
                 for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                              "_global_backward_pre_hooks"))


def _signature(o, anchors: list, depth: int):
    """What about ``o`` changes the graph a trace of the energy records."""
    if torch.is_tensor(o):
        return ("tensor", type(o), tuple(o.shape), o.dtype, str(o.device), o.is_inference())
    if isinstance(o, _SCALARS):
        return ("value", type(o), o)
    if isinstance(o, nn.Module):
        anchors.append(o)
        return ("module", id(o), _module_state(o, anchors))
    if isinstance(o, (list, tuple)) and depth and len(o) <= _MAX_ITEMS:
        anchors.append(o)
        return (type(o).__name__, id(o), tuple(_signature(x, anchors, depth - 1) for x in o))
    if isinstance(o, dict) and depth and len(o) <= _MAX_ITEMS:
        anchors.append(o)
        return ("dict", id(o), tuple((k if isinstance(k, _SCALARS) else id(k), _signature(v, anchors, depth - 1))
                                     for k, v in o.items()))
    anchors.append(o)
    if isinstance(o, types.FunctionType):  # a helper the energy calls: what it reaches counts too
        kind, parts = _function_roots(o) if depth else ((), ())
        return ("function", id(o), kind, tuple(_signature(p, anchors, depth - 1) for p in parts))
    attrs = _attributes(o) if depth else None
    if attrs is not None:  # an object holding the modules or tensors (``holder.net``, ``args.T``)
        return ("object", id(o), tuple((k, _signature(v, anchors, depth - 1)) for k, v in attrs))
    return ("object", id(o))


def _attributes(o) -> list | None:
    """A plain object's public attributes (not a module, function, class or Python module), when
    it has few enough to key on."""
    if isinstance(o, (types.FunctionType, types.MethodType, types.BuiltinFunctionType, types.ModuleType, type,
                      types.CodeType, functools.partial)):
        return None
    d = getattr(o, "__dict__", None)
    if not isinstance(d, dict) or len(d) > _MAX_ITEMS:
        return None
    return [(k, v) for k, v in d.items() if isinstance(k, str) and not k.startswith("_")]


def _module_state(module: nn.Module, anchors: list) -> tuple:
    """Per submodule: its type, training flag, hooks, an instance ``forward``, its scalar attributes
    (a temperature, a slope) and the shapes of its tensors."""
    state = []
    for name, m in module.named_modules(remove_duplicate=False):
        own = m.__dict__
        hooks = tuple(tuple(id(h) for h in own.get(k, {}).values())
                      for k in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))
        scalars = tuple((k, v) for k, v in own.items() if not k.startswith("_") and isinstance(v, _SCALARS))
        tensors = tuple((k, tuple(v.shape), v.dtype, str(v.device))
                        for d in (own.get("_parameters", {}), own.get("_buffers", {}))
                        for k, v in d.items() if v is not None)
        plain = tuple((k, tuple(v.shape), v.dtype, str(v.device)) for k, v in own.items() if torch.is_tensor(v))
        forward = own.get("forward")
        if forward is not None:
            anchors.append(forward)
        state.append((name, type(m), m.training, hooks, scalars, tensors, plain, id(forward)))
    return tuple(state)


def _anchor(o):
    try:
        return ("weak", weakref.ref(o), id(o))
    except TypeError:
        return ("strong", o, id(o))


def _alive(anchor) -> bool:
    kind, ref, _ = anchor
    return kind == "strong" or ref() is not None


# ------------------------------------------------------------------------------ places of tensors

def _reachable(roots) -> list:
    tensors: dict = {}
    _places(roots, tensors)
    return list(tensors.values())


def reachable_modules(energy) -> list[nn.Module]:
    """The modules (and their submodules) the energy's computation can reach, found as the trace
    keys find its tensors (``_roots``: the energy itself, closure cells, defaults, globals named,
    bound objects and their attributes)."""
    found: dict = {}

    def on_module(module, where):
        for m in module.modules():
            found.setdefault(id(m), m)

    _walk(_roots(energy)[1], on_module=on_module)
    return list(found.values())


def _places(roots, tensors: dict | None = None) -> dict:
    """id(tensor) -> (root index, path) for every tensor reachable from the roots: a tensor root,
    a module's parameters, buffers and tensor attributes, the items of a list, tuple or dict, an
    object's attributes (``tensors``, when given, collects id -> tensor)."""
    places: dict = {}
    seen = tensors if tensors is not None else {}

    def on_tensor(t, where):
        places.setdefault(id(t), where)
        seen[id(t)] = t

    def on_module(module, where):
        for name, m in module.named_modules(remove_duplicate=False):
            prefix = tuple(name.split(".")) if name else ()
            own = [(k, v) for d in (m._parameters, m._buffers) for k, v in d.items()]
            own += [(k, v) for k, v in m.__dict__.items() if torch.is_tensor(v)]
            for k, v in own:
                if v is not None:
                    on_tensor(v, (where[0], where[1] + prefix + (k,)))

    _walk(roots, on_tensor=on_tensor, on_module=on_module)
    return places


def _walk(roots, *, on_tensor=None, on_module=None, depth: int = 2) -> None:
    """Visits every tensor and module reachable from the roots with its place (root index, path):
    through the items of a list, tuple or dict, a function's roots and an object's attributes, down
    to ``depth`` containers (a module is visited whole: its own walk is the caller's)."""

    def walk(o, where, depth):
        if torch.is_tensor(o):
            if on_tensor is not None:
                on_tensor(o, where)
        elif isinstance(o, nn.Module):
            if on_module is not None:
                on_module(o, where)
        elif depth and isinstance(o, (list, tuple)) and len(o) <= _MAX_ITEMS:
            for i, x in enumerate(o):
                walk(x, (where[0], where[1] + (("item", i),)), depth - 1)
        elif depth and isinstance(o, dict) and len(o) <= _MAX_ITEMS:
            for k, x in o.items():
                walk(x, (where[0], where[1] + (("item", k),)), depth - 1)
        elif depth and isinstance(o, types.FunctionType):
            for i, x in enumerate(_function_roots(o)[1]):
                walk(x, (where[0], where[1] + (("function", i),)), depth - 1)
        elif depth and _attributes(o) is not None:
            for k, x in _attributes(o):
                walk(x, (where[0], where[1] + (k,)), depth - 1)

    for i, r in enumerate(roots):
        walk(r, (i, ()), depth)


def _resolve(roots, where):
    i, path = where
    o = roots[i]
    for step in path:
        if isinstance(step, str):
            o = getattr(o, step)
        elif step[0] == "function":
            o = _function_roots(o)[1][step[1]]
        else:
            o = o[step[1]]
    if not torch.is_tensor(o):
        raise NotFusable("a tensor the trace read is no longer a tensor")
    return o
