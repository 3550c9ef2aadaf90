"""Recognise a fusable energy however it is written: trace it, read the graph as an MLP.

An energy a user hands to ``langevin`` is a callable; the fused kernels need its weights and
structure (a ``PriorSpec``). ``nn.Sequential`` of the MLP family is read directly
(``spec.mlp_spec_from_sequential``). Anything else (a module with its own activation classes,
``F.*`` calls in ``forward``, ``ModuleList`` loops, spectral-normalised Linear layers, a closure
over modules, a hand-written Gaussian term) is traced here with ``make_fx`` at the dispatcher
level, where all of those become the same few aten ops, and the graph is read as

    U(z) = a * MLP(z) + q * ||z||^2      (a != 0, q >= 0; MLP: Linear, one activation, ..., Linear)

or as a posterior with an MLP decoder g and observations x held by the energy (a closure over
the batch's images, as LEBM's posterior is written):

    U(z | x) = r * ||x - g(z)||^2 + [a * MLP(z)] + q * ||z||^2     (r > 0; x: [B, ...], one row per chain)

which the fused kernels run whole (a ``PosteriorEnergy`` with sigma_x = sqrt(1 / (2 r))).

The MLP may end in Linear(h, 1) (then squeezed, viewed, selected or summed to [B]) or in a wider
layer summed or averaged over its features (a Linear of ones); consecutive Linear layers with no
activation between them are multiplied out. Every tensor that does not depend on z (weights, their
transposes, a spectral norm's W / sigma) is evaluated from the graph at each call, so the chain
runs with the weights as they are at that call ("read at their current weights").

What is not of that form (another op on z, two MLP terms, mixed activations, a constant term, a
stopped gradient, a write to the energy's own state, random numbers) is left to autograd, and
``NotFusable`` says why. Reading a graph is pure: ``read_graph`` gives the plan, and
``TracedEnergy.read`` the spec with a call's tensors. Tracing, the cache of traces and where each
call's tensors come from are in ``traces.py``; whether a reading may run is decided at the chain's
start by ``fusion.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .activation_table import by_name
from .energies import PosteriorEnergy
from .spec import MLPSpec, PriorSpec
from .tensor_cache import LEDGER

__all__ = ["NotFusable", "TracedEnergy", "read_graph"]

aten = torch.ops.aten

# aten activation op -> (activation_table name, how to read its parameter from the node's args)
_ACT_OPS = {
    aten.relu.default: ("relu", lambda a: 0.0),
    aten.tanh.default: ("tanh", lambda a: 0.0),
    aten.silu.default: ("silu", lambda a: 0.0),
    aten.leaky_relu.default: ("leaky_relu", lambda a: float(a[1]) if len(a) > 1 else 0.01),
    aten.gelu.default: ("gelu", lambda a: 0.0),
    aten.softplus.default: ("softplus", lambda a: float(a[1]) if len(a) > 1 else 1.0),
    aten.elu.default: ("elu", lambda a: float(a[1]) if len(a) > 1 else 1.0),
}
# the in-place forms (``nn.ReLU(inplace=True)``), applied to a Linear's fresh output, compute the same
_ACT_OPS.update({getattr(aten, op.__name__.split(".")[0] + "_").default: read for op, read in list(_ACT_OPS.items())
                 if hasattr(aten, op.__name__.split(".")[0] + "_")})


class NotFusable(Exception):
    """The traced graph is not of the recognised form; the message says where."""


@dataclass
class _Const:
    node: object  # an fx node whose value does not depend on z


@dataclass
class _Chain:
    """h = MLP-so-far(z): Linear layers [(W node or tensor, b)], activations between them."""
    linears: list
    acts: list           # (name, param) after each linear (None: none yet after the last one)
    width: int
    square: bool = False  # z * z or z ** 2 (only of the input itself)


@dataclass
class _Sum:
    """A [B] energy: a * MLP(z) + q * ||z||^2 (mlp None: no MLP term) + r * ||x - g(z)||^2 (recon:
    the decoder chain g, x: the observations' node; None: no such term)."""
    mlp: _Chain | None
    a: float
    q: float
    recon: _Chain | None = None
    x: object = None
    r: float = 0.0

    def scaled(self, s: float) -> "_Sum":
        return _Sum(self.mlp, self.a * s, self.q * s, self.recon, self.x, self.r * s)


@dataclass
class _Resid:
    """x - g(z) (or g(z) - x), elementwise; ``square``: its square."""
    chain: _Chain
    x: object
    square: bool = False


@dataclass
class TracedEnergy:
    """A recognised energy: its graph, the plan read from it, and where a call finds the graph's
    tensors (``bound``: get_attr target -> (root index, path), resolved per call by ``traces.py``)."""
    graph_module: torch.fx.GraphModule
    plan: _Sum
    dim: int
    bound: dict = field(default_factory=dict)
    # (epochs of the weights' source tensors, (spec, decoder MLPSpec or None)): the last reading of
    # the weights, returned while the sources hold the same values, so the same weight tensors go to
    # the kernels call after call and the cpu backend's packed model is reused
    _weights: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        plan = self.plan
        weight_nodes = _nodes_of([plan.mlp.linears if plan.mlp else (), plan.recon.linears if plan.recon else ()])
        self._weight_nodes = weight_nodes
        self._x_nodes = _nodes_of([plan.x]) if plan.recon is not None else []
        self._weight_sources = [n for n in _ancestors(weight_nodes) if n.op == "get_attr"]

    def read(self, attrs: dict) -> tuple[PriorSpec, PosteriorEnergy | None]:
        """The PriorSpec (and for a posterior its ``PosteriorEnergy``) at this call's tensors
        (``attrs``: get_attr target -> tensor, for the bound ones; the graph's own otherwise)."""
        gm, plan = self.graph_module, self.plan
        sources = [attrs[n.target] if n.target in attrs else getattr(gm, n.target) for n in self._weight_sources]
        epochs = LEDGER.epochs(sources)
        if self._weights is None or self._weights[0] != epochs:
            values = _evaluate_constants(gm, attrs, self._weight_nodes)
            mlp = None if plan.mlp is None else _mlp_spec(plan.mlp, values)
            recon = None if plan.recon is None else _mlp_spec(plan.recon, values)
            sigma = math.inf if plan.q == 0 else math.sqrt(1.0 / (2.0 * plan.q))
            spec = PriorSpec(dims=(self.dim,), layer_terms=(mlp,),
                             energy_sign=float(plan.a) if mlp is not None else 1.0, base_sigma=(sigma,))
            self._weights = (epochs, (spec, recon))
        spec, recon = self._weights[1]
        if recon is None:
            return spec, None
        x = _value(plan.x, _evaluate_constants(gm, attrs, self._x_nodes)).detach()
        return spec, PosteriorEnergy(spec, recon, x, math.sqrt(1.0 / (2.0 * plan.r)))

    def forget(self) -> None:
        self._weights = None


def _nodes_of(refs) -> list:
    """The fx nodes a plan's value references name (nested tuples: ("t", node), ("mm", a, b), ...)."""
    out: list = []

    def walk(r):
        if isinstance(r, torch.fx.Node):
            out.append(r)
        elif isinstance(r, (tuple, list)):
            for x in r:
                walk(x)

    walk(refs)
    return out


def _ancestors(nodes) -> list:
    """``nodes`` and every node they depend on, in graph order."""
    seen: set = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    if not seen:
        return []
    graph = next(iter(seen)).graph
    return [n for n in graph.nodes if n in seen]


def _mlp_spec(chain: _Chain, values) -> MLPSpec:
    ws, bs = [], []
    for w, b in chain.linears:
        ws.append(_value(w, values))
        bs.append(None if b is None else _value(b, values))
    hidden = [a for a in chain.acts[:-1]]
    act, param = hidden[0] if hidden else ("identity", 0.0)
    out_act, out_param = chain.acts[-1] if chain.acts[-1] is not None else ("identity", 0.0)
    if any(h != (act, param) for h in hidden):
        raise NotFusable("the hidden layers use different activations")
    if hidden and out_act != "identity" and (out_act, out_param) != (act, param) and out_param != param \
            and by_name(out_act).param is not None:
        raise NotFusable("the output activation's parameter differs from the hidden one's")
    if not hidden and out_act != "identity":
        act, param = out_act, out_param
    return MLPSpec(tuple(w.detach() for w in ws), tuple(None if b is None else b.detach() for b in bs),
                   act, param, out_act)


def _value(x, values):
    if torch.is_tensor(x):
        return x
    if isinstance(x, tuple):  # ("t", node): the transpose of a value; ("mm", a, b): a product
        kind = x[0]
        if kind == "t":
            return _value(x[1], values).t()
        if kind == "mm":
            return _value(x[1], values) @ _value(x[2], values)
        if kind == "mv":
            return _value(x[1], values) @ _value(x[2], values)
        if kind == "scale":
            return _value(x[1], values) * x[2]
        if kind == "add":
            return _value(x[1], values) + _value(x[2], values)
        if kind == "rows":  # the observations, one row of features per chain
            return _value(x[1], values).reshape(x[2], x[3])
        if kind == "ones":
            return torch.full((1, x[1]), x[2], dtype=x[3], device=x[4])
    return values[x]


def _evaluate_constants(gm: torch.fx.GraphModule, attrs: dict, wanted) -> dict:
    """The values of the z-independent nodes ``wanted`` depends on, computed now (a small
    interpreter over those nodes); ``attrs`` replaces the graph's own tensor attributes by target."""
    env: dict = {}
    with torch.no_grad():  # the weights as values
        for node in _ancestors(wanted):
            if node.op == "get_attr":
                env[node] = attrs[node.target] if node.target in attrs else getattr(gm, node.target)
            elif node.op == "call_function" and node.meta.get("jebm_const"):
                args = torch.fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
                env[node] = node.target(*args, **kwargs)
    return env


def _scalar(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def read_graph(gm: torch.fx.GraphModule, z_shape, squeeze: bool) -> _Sum:
    """Walk the graph in order, giving each node a symbolic value; raise NotFusable otherwise."""
    _refuse_effects(gm)
    sym: dict = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NotFusable(f"the energy takes {len(placeholders)} tensors; only single-tensor energies are traced")
    B, D = z_shape
    out = None
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            sym[node] = _Chain([], [], D)
            sym[node].input = True
            continue
        if node.op == "get_attr":
            sym[node] = _Const(node)
            continue
        if node.op == "output":
            out = sym.get(node.args[0]) if not isinstance(node.args[0], (tuple, list)) else None
            break
        if node.op != "call_function":
            raise NotFusable(f"a {node.op} node in the trace")
        deps = [a for a in node.all_input_nodes]
        if all(isinstance(sym.get(a), _Const) for a in deps):
            node.meta["jebm_const"] = True
            sym[node] = _Const(node)
            continue
        sym[node] = _apply(node, sym, B)
    if squeeze and isinstance(out, _Chain) and out.linears and out.width == 1:
        out = _Sum(out, 1.0, 0.0)  # an nn.Sequential's [B, 1], which langevin reads as [B]
    if not isinstance(out, _Sum):
        raise NotFusable("the energy's result is not a [B] sum of an MLP term and ||z||^2 terms")
    if out.mlp is None and out.recon is None:
        raise NotFusable("no MLP term (a pure Gaussian needs no kernel)")
    if out.mlp is not None and not (math.isfinite(out.a) and out.a != 0):
        raise NotFusable(f"the MLP term's coefficient a = {out.a} is not finite and nonzero")
    if not (math.isfinite(out.q) and out.q >= 0):
        raise NotFusable(f"the ||z||^2 coefficient q = {out.q} is outside q >= 0")
    if out.recon is not None and not (math.isfinite(out.r) and out.r > 0):
        raise NotFusable(f"the reconstruction term's coefficient {out.r} is not finite and > 0")
    return out


def _refuse_effects(gm: torch.fx.GraphModule) -> None:
    """What a fixed reading cannot repeat: an energy that writes its own state at each call (a
    spectral norm's power iteration or BatchNorm's running statistics, in training mode), that
    draws random numbers, or that stops the gradient of a value computed from z (``detach``,
    ``.data``; autograd's own saved copies are detaches nothing uses)."""
    depends: set = set()
    for node in gm.graph.nodes:
        if node.op == "placeholder" or (node.op == "call_function" and any(a in depends for a in node.all_input_nodes)):
            depends.add(node)
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        op = node.target
        if torch.Tag.nondeterministic_seeded in op.tags:
            raise NotFusable(f"it draws random numbers ({op}): each call differs")
        if op is aten.detach.default and node in depends and node.users:
            raise NotFusable("it stops the gradient of a value computed from z (detach or .data)")
        for arg, value in zip(op._schema.arguments, list(node.args) + [node.kwargs.get(a.name) for a in
                                                                      op._schema.arguments[len(node.args):]]):
            if arg.alias_info is not None and arg.alias_info.is_write and _state_of(value):
                raise NotFusable(f"it writes its own state at each call ({op} on a buffer or weight: a spectral "
                                 "norm's power iteration or BatchNorm's statistics in training mode; .eval() "
                                 "makes such an energy a function of z)")


def _state_of(value) -> bool:
    """Whether ``value`` (an fx node) is a graph attribute (a weight, a buffer) or a view of one."""
    while isinstance(value, torch.fx.Node):
        if value.op == "get_attr":
            return True
        op = value.target
        if value.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not value.args:
            return False
        rets = op._schema.returns
        if not rets or rets[0].alias_info is None:  # a new tensor, not a view
            return False
        value = value.args[0]
    return False


def _is_input(v) -> bool:
    return isinstance(v, _Chain) and getattr(v, "input", False) and not v.linears and not v.square


def _linear(chain: _Chain, weight, bias, out_width: int) -> _Chain:
    """chain followed by h @ weight^T + bias; consecutive Linear layers with no activation between
    them are multiplied out (W2 (W1 h + b1) + b2)."""
    if chain.square:
        raise NotFusable("a Linear layer of z * z")
    if chain.linears and chain.acts[-1] is None:
        w1, b1 = chain.linears[-1]
        w = ("mm", weight, w1)
        b = bias if b1 is None else (("mv", weight, b1) if bias is None else ("add", ("mv", weight, b1), bias))
        return _Chain(chain.linears[:-1] + [(w, b)], chain.acts[:-1] + [None], out_width)
    return _Chain(chain.linears + [(weight, bias)], chain.acts + [None], out_width)


def _residual(chain, x_node, node, sym, B) -> _Resid | None:
    """x - g(z) when ``chain`` is an MLP's output g(z) and ``x_node`` observations that do not
    depend on z, one row per chain with g's width of features (no broadcasting), else None."""
    x_shape = tuple(x_node.meta["val"].shape) if isinstance(x_node, torch.fx.Node) and "val" in x_node.meta else None
    if (isinstance(chain, _Chain) and chain.linears and isinstance(sym.get(x_node), _Const) and x_shape
            and x_shape[0] == B and math.prod(x_shape[1:]) == chain.width
            and tuple(node.meta["val"].shape) == x_shape):
        return _Resid(chain, ("rows", x_node, B, chain.width))
    return None


def _apply(node, sym, B):
    t = node.target
    args = node.args
    val = lambda a: sym.get(a) if isinstance(a, torch.fx.Node) else a

    def const_shape(a):
        return tuple(a.meta["val"].shape) if isinstance(a, torch.fx.Node) and "val" in a.meta else None

    if t in (aten.addmm.default,):
        bias, h, wt = (val(a) for a in args[:3])
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            raise NotFusable("addmm with alpha/beta")
        if isinstance(h, _Chain) and isinstance(wt, _Const) and isinstance(bias, _Const):
            n_out = const_shape(args[2])[1]
            if const_shape(args[0]) not in ((n_out,), (1, n_out)):
                raise NotFusable("a bias that is not one value per output")
            return _linear(h, ("t", args[2]), args[0] if const_shape(args[0]) == (n_out,) else ("t", args[0]), n_out)
        raise NotFusable("a matrix product that is not z-dependent x weight")
    if t in (aten.mm.default,):
        h, wt = (val(a) for a in args[:2])
        if isinstance(h, _Chain) and isinstance(wt, _Const):
            return _linear(h, ("t", args[1]), None, const_shape(args[1])[1])
        raise NotFusable("a matrix product that is not z-dependent x weight")
    if t in _ACT_OPS:
        h = val(args[0])
        if not isinstance(h, _Chain) or not h.linears or h.acts[-1] is not None:
            raise NotFusable(f"{t} not directly after a Linear layer")
        name, read = _ACT_OPS[t]
        if name == "gelu" and node.kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh":
            name = "gelu_tanh"
        if name == "softplus" and (args[2] if len(args) > 2 else 20) != 20:
            raise NotFusable("Softplus with a threshold other than torch's 20")
        if name == "elu" and any((args[i] if len(args) > i else 1) != 1 for i in (2, 3)):
            raise NotFusable("ELU with scale or input_scale other than 1")
        return _Chain(h.linears, h.acts[:-1] + [(name, read(args))], h.width)
    if t in (aten.pow.Tensor_Scalar,):
        h = val(args[0])
        if _is_input(h) and args[1] == 2:
            return _Chain([], [], h.width, square=True)
        if isinstance(h, _Resid) and not h.square and args[1] == 2:
            return _Resid(h.chain, h.x, True)
        raise NotFusable("a power other than z ** 2 or (x - g(z)) ** 2")
    if t in (aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar):
        a, b = val(args[0]), val(args[1])
        if t in (aten.mul.Tensor, aten.mul.Scalar) and _is_input(a) and args[0] is args[1]:
            return _Chain([], [], a.width, square=True)
        if t is aten.mul.Tensor and isinstance(a, _Resid) and not a.square and args[0] is args[1]:
            return _Resid(a.chain, a.x, True)
        s = _scalar(b)
        if s is None and t in (aten.mul.Tensor, aten.mul.Scalar):
            s, a = _scalar(a), b
        if s is None or not isinstance(a, _Sum):
            raise NotFusable(f"{t} other than an energy times a number")
        if t in (aten.div.Tensor, aten.div.Scalar):
            s = 1.0 / s
        return a.scaled(s)
    if t is aten.neg.default:
        a = val(args[0])
        if not isinstance(a, _Sum):
            raise NotFusable("a negation of something other than an energy")
        return a.scaled(-1.0)
    if t in (aten.add.Tensor, aten.sub.Tensor):
        a, b = val(args[0]), val(args[1])
        alpha = node.kwargs.get("alpha", 1)
        if (isinstance(a, _Chain) and isinstance(b, _Const) and a.linears and a.acts[-1] is None
                and t is aten.add.Tensor):
            shape = const_shape(args[1])
            if shape in ((a.width,), (1, a.width)):  # a bias added after a bias-free product
                w, b0 = a.linears[-1]
                bias = args[1] if b0 is None else ("add", b0, args[1])
                return _Chain(a.linears[:-1] + [(w, bias)], a.acts, a.width)
        if t is aten.sub.Tensor and alpha == 1:
            # x - g(z) or g(z) - x: observations held by the energy, one row per chain
            for chain, x_node in ((b, args[0]), (a, args[1])):
                resid = _residual(chain, x_node, node, sym, B)
                if resid is not None:
                    return resid
        if not (isinstance(a, _Sum) and isinstance(b, _Sum)):
            raise NotFusable(f"{t} of something other than two energies")
        sign = alpha if t is aten.add.Tensor else -alpha
        if a.mlp is not None and b.mlp is not None:
            raise NotFusable("two MLP terms")
        if a.recon is not None and b.recon is not None:
            raise NotFusable("two reconstruction terms")
        recon, x, r = (a.recon, a.x, a.r) if a.recon is not None else (b.recon, b.x, sign * b.r)
        return _Sum(a.mlp or b.mlp, a.a if a.mlp is not None else sign * b.a, a.q + sign * b.q, recon, x, r)
    if t is aten.mse_loss.default:  # F.mse_loss(g(z), x, reduction="none"): (g(z) - x) ** 2
        reduction = args[2] if len(args) > 2 else node.kwargs.get("reduction", 1)
        for chain, x_node in ((val(args[0]), args[1]), (val(args[1]), args[0])):
            resid = _residual(chain, x_node, node, sym, B) if reduction == 0 else None
            if resid is not None:
                return _Resid(resid.chain, resid.x, True)
        raise NotFusable("an mse_loss that is not reduction='none' of g(z) against observations")
    if t in (aten.sum.dim_IntList, aten.mean.dim):
        h = val(args[0])
        dims = list(args[1]) if len(args) > 1 and args[1] is not None else None
        keep = (args[2] if len(args) > 2 else node.kwargs.get("keepdim", False))
        if isinstance(h, _Resid):
            ndim = args[0].meta["val"].dim() if "val" in args[0].meta else 0
            over = sorted(d % ndim for d in dims) if dims and ndim else None
            if not h.square or keep or over != list(range(1, ndim)):
                raise NotFusable("a sum of (x - g(z)) that is not of its square over every feature")
            scale = 1.0 / h.chain.width if t is aten.mean.dim else 1.0
            return _Sum(None, 0.0, 0.0, h.chain, h.x, scale)
        if dims not in ([-1], [1]) or keep:
            raise NotFusable("a sum or mean that is not over the last dimension")
        if not isinstance(h, _Chain):
            raise NotFusable("a sum of something other than the MLP's output or z * z")
        scale = 1.0 / h.width if t is aten.mean.dim else 1.0
        if h.square:
            return _Sum(None, 0.0, scale)
        if not h.linears:
            raise NotFusable("a sum of z itself")
        if h.width == 1:
            return _Sum(h, scale, 0.0)
        # sum over a wide layer = a Linear of ones (after an activation) or folded into the last Linear
        ones = ("ones", h.width, scale, node.meta["val"].dtype, node.meta["val"].device)
        return _Sum(_linear(h, ones, None, 1), 1.0, 0.0)
    if t in (aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.view.default, aten.reshape.default,
             aten._unsafe_view.default, aten.select.int, aten.flatten.using_ints, aten.unsqueeze.default):
        h = val(args[0])
        shape = tuple(node.meta["val"].shape) if "val" in node.meta else None
        if shape is None or not shape or shape[0] != B:
            raise NotFusable(f"{t} that mixes the batch with the features")
        per_row = math.prod(shape[1:])
        if isinstance(h, _Chain) and h.linears and h.width == 1 and shape == (B,):
            if t is aten.select.int and (args[1] not in (1, -1) or args[2] != 0):
                raise NotFusable("a select other than [:, 0]")
            return _Sum(h, 1.0, 0.0)
        if isinstance(h, _Chain) and t is not aten.select.int and per_row == h.width:
            return h  # a view of each chain's row-major features: the same values
        if isinstance(h, _Sum) and shape == (B,):
            return h
        if isinstance(h, _Resid) and t is not aten.select.int and per_row == h.chain.width:
            return h  # a view of each chain's residuals
        raise NotFusable(f"{t} that is not a view of each chain's features")
    if t in (aten.clone.default, aten.alias.default, aten.detach.default):
        return val(args[0])  # the same values (autograd's saved outputs show up as detach)
    if t in (aten.t.default, aten.transpose.int):
        raise NotFusable(f"{t} of a z-dependent value")
    raise NotFusable(f"{t} on a value that depends on z")
