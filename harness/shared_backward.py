"""--backward shared: the exact per-objective gradients of a step from ONE backward pass through the model.

Why it is exact (docs/method.md, section 10). Every loss reads the model only through the log-probs of the
micro-batch's R responses (dpo.py), so g_i = sum_r c_ir grad log pi(y_r) with c_ir = dL_i/d log pi(y_r)
(raco.objective_cotangents). The rows of a batch never mix in a transformer: row r's activations depend on row r's
tokens alone. So under the cotangent c_i on the log-probs, the gradient reaching any activation of row r is c_ir times
what reaches it under the cotangent 1. One backward pass of sum_r log pi(y_r) gives every layer's output gradient gy,
and the hooks below turn it into each objective's weight gradients, one product per objective:

    Linear y = x W^T + b   dL_i/dW = sum_{r,t} c_ir gy[r,t]^T x[r,t] = gy^T (c_i x)     dL_i/db = sum_{r,t} c_ir gy[r,t]
    Embedding              the rows picked by the tokens get c_ir gy[r,t] (a tied output layer adds its own product)
    RMSNorm, LayerNorm     the module's own backward on its saved inputs, with gy scaled by c_ir row by row (cheap:
    (and embeddings with   it works position by position); the same for an embedding whose forward is its own
    a forward of their own) (Gemma's, scaled)

Cost: the chain of activation gradients once, the weight-gradient products m times: about (3 + m) / 4 of DPO-LW's step
where per-objective passes cost (2 + 2m) / 4. The one pass asks autograd for the gradients of the embeddings' outputs
only, so it computes no weight gradient of its own. In float32 the layer inputs the hooks keep are tensors autograd
saves anyway; under bf16 autocast autograd saves each layer's own bf16 cast, and the hooks keep one bf16 cast of each
distinct input beside them (q, k and v share theirs).

Where the rows-never-mix assumption lives: here, and it is checked, not trusted. On the first micro-batch the one pass
is compared with a direct backward pass of a random mix of the objectives; a model whose rows mix (batch norm in
training mode, experts with a capacity the batch shares), or that uses a covered weight outside its module's forward
(F.linear(h, embedding.weight)), gives another gradient and is refused with one line (NotShareable). Every covered
layer must also see the batch's rows as its input's first dimension. What this module does not cover falls back to
per-objective passes with one line saying why (`shared_or_fallback`): a trainable parameter in any other kind of
module (a Linear with a forward of its own included), gradient checkpointing (its recomputed forward would run the
hooks twice), and FSDP2 shards (harness/scale.py's ShardedRows).
"""
import sys
import weakref

import torch

from harness import distributed
from harness.errors import UsageError
from raco import MultiObjectiveBackward, check_losses, flat_views, gradient_rows, objective_cotangents

AGREEMENT = {False: 1e-3, True: 5e-2}  # the first micro-batch's check, relative: float32, and under bf16 autocast


class NotShareable(UsageError):
    """A model the one shared backward pass would get wrong (its rows mix) or not reach: one line, exit code 2."""


def is_norm(module):
    """RMSNorm and LayerNorm, torch's and transformers' (LlamaRMSNorm, Qwen3RMSNorm, Gemma3RMSNorm, ...): each
    normalises one position's features, so rows stay apart."""
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def kind_of(module):
    """How the shared pass covers a module's trainable parameters: "linear" and "embedding" (torch's own forward: a
    product per objective), "module" (norms, and embeddings with a forward of their own: the module's own backward per
    objective), or None (not covered)."""
    if type(module).forward is torch.nn.Linear.forward:
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        plain = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return ("embedding" if type(module).forward is torch.nn.Embedding.forward else "module") if plain else None
    return "module" if is_norm(module) else None


def uncovered(model, params):
    """Why the shared pass cannot serve this model ("" if it can): the first trainable parameter outside a covered
    module, or the reason none is there to start from."""
    trainable = {id(p) for p in params}
    owners = {}
    for name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in trainable:
                owners.setdefault(id(param), []).append((f"{name}.{param_name}" if name else param_name, module))
    for param in params:
        if id(param) not in owners:
            return f"a trainable parameter of shape {tuple(param.shape)} is not in the model"
        for name, module in owners[id(param)]:
            if kind_of(module) is None:
                return f"parameter {name} belongs to a {type(module).__name__}, which it does not cover (Linear, " \
                       "Embedding, RMSNorm, LayerNorm)"
    if not any(isinstance(m, torch.nn.Embedding) for m in model.modules()):
        return "the model has no nn.Embedding for the pass to start from"
    return ""


def shared_or_fallback(cfg, model, params, weights, method, names, fallback):
    """SharedBackward where it applies; else fallback (the per-objective class), with one line on stderr saying why.
    One objective needs no sharing: its own backward pass is the one pass, without the hooks' work."""
    if len(weights) == 1:
        return fallback(params, weights, method, cfg.c, names)
    why = ("gradient checkpointing recomputes the forward pass inside the backward one" if cfg.gradient_checkpointing
           else "FSDP2 shards the parameters" if fallback is not MultiObjectiveBackward else uncovered(model, params))
    if not why:
        return SharedBackward(model, params, weights, method, cfg.c, names)
    if distributed.is_main_process():
        print(f"warning: --backward shared falls back to one backward pass per objective: {why}", file=sys.stderr)
    return fallback(params, weights, method, cfg.c, names)


def _calling(owner, method):
    """A hook that calls owner.method while owner lives: the model holds its hooks, and the hooks hold no reference
    to the SharedBackward, which removes them when it goes (no cycle keeps the model and G alive)."""
    ref = weakref.ref(owner)
    return lambda *args: getattr(ref(), method)(*args) if ref() is not None else None


class SharedBackward(MultiObjectiveBackward):
    """raco.MultiObjectiveBackward with line 2 done in one backward pass (see the module docstring). The same use:
    backward(losses, logps) per micro-batch, then finish(); G holds the same rows, up to float rounding.

    Forward hooks on the covered modules keep each one's input and hook its output, on forward passes under autograd
    (the training forward; the reference's and sampling's run without). The output hooks act only inside backward()."""

    def __init__(self, model, params, weights, method="raco", c=0.4, names=None):
        super().__init__(params, weights, method, c, names)
        self.checked = False
        self.index = {id(p): k for k, p in enumerate(self.params)}
        covered = [m for m in model.modules() if kind_of(m) is not None
                   and any(id(p) in self.index for p in m.parameters(recurse=False))]
        self.roots, self.pending, self.casts, self.autocast = [], 0, {}, False  # this forward's
        self.active, self.scales, self.views = False, None, None  # this backward's
        self.recomputing = False  # a module's forward run again for its own backward: not a forward to capture
        self.handles = [model.register_forward_pre_hook(_calling(self, "_start"))]
        self.handles += [m.register_forward_hook(_calling(self, "_root")) for m in model.modules()
                         if isinstance(m, torch.nn.Embedding)]
        self.handles += [m.register_forward_hook(_calling(self, "_capture"), with_kwargs=True) for m in covered]

    def __del__(self):
        for handle in getattr(self, "handles", []):
            handle.remove()

    def _start(self, model, args):
        """A new forward pass of the whole model: what the last one left is dropped."""
        if torch.is_grad_enabled():
            self.roots, self.pending, self.casts = [], 0, {}
            self.autocast = torch.is_autocast_enabled(next(model.parameters()).device.type)

    def _root(self, module, inputs, output):
        """An embedding's output is where the one backward pass stops (a leaf that requires grad where the embedding
        is frozen, so that the pass still reaches the layers above it)."""
        if not torch.is_grad_enabled() or self.recomputing:
            return None
        if not output.requires_grad:
            output = output.detach().requires_grad_()
        self.roots.append(output)
        return output

    def _capture(self, module, args, kwargs, output):
        """A covered module's inputs are kept, and its output gets a hook that turns its gradient into the m
        objectives' gradients of the module's trainable parameters."""
        if not torch.is_grad_enabled() or self.recomputing:
            return None
        kind = kind_of(module)
        if kind != "module" and not args:  # Linear.forward(input), Embedding.forward(input), called by keyword
            args, kwargs = (kwargs["input"],), {}
        if kind == "linear" and self.autocast:  # the operand autocast multiplies: one bf16 cast per distinct input
            x = args[0]
            cached = self.casts.get((id(x), x._version))
            if cached is None or cached[0]() is not x:  # (a weak reference: the cast must not keep x alive)
                cached = self.casts[id(x), x._version] = (weakref.ref(x), x.to(torch.get_autocast_dtype(x.device.type)))
            args = (cached[1],)
        saved = [(a, a._version) for a in (*args, *kwargs.values()) if torch.is_tensor(a)]
        self.pending += 1
        output.register_hook(_calling_with(self, module, kind, args, kwargs, saved))
        return None

    def backward(self, losses, logps):
        check_losses(losses, self.weights)
        if self.G is None:
            self.G = gradient_rows(self.params, len(self.weights))
            self.views = [flat_views(row, self.params) for row in self.G]
        self.scales = objective_cotangents(losses, logps)  # (m, R): c_ir
        direct = None
        if not self.checked:  # a direct backward pass of a random mix of the objectives, to hold the one pass against
            mix = torch.randn(len(self.scales), generator=torch.Generator().manual_seed(0))
            direct = torch.autograd.grad(logps, self.params, mix.to(self.scales) @ self.scales, retain_graph=True,
                                         allow_unused=True)
        self.active, expected = True, self.pending
        try:  # one pass: the gradients of the roots only, so autograd computes no weight gradient itself
            torch.autograd.grad(logps, self.roots, grad_outputs=torch.ones_like(logps), allow_unused=True)
        finally:
            self.active = False
        if self.pending != 0:
            reached = expected - self.pending
            raise NotShareable(f"--backward shared: the backward pass from the log-probs reached {reached} of the "
                               f"{expected} covered layers of the forward; use --backward per_objective")
        if direct is not None:  # G held nothing before this first micro-batch: its rows are the one pass's
            self._check(direct, mix, self.G)
        self.roots, self.scales, self.casts = [], None, {}
        self.count += 1

    def _check(self, direct, mix, rows):
        """The one pass's rows, mixed, against the direct pass: NotShareable beyond AGREEMENT."""
        want = torch.cat([torch.zeros(p.numel(), dtype=rows.dtype, device=rows.device) if g is None
                          else g.reshape(-1).to(rows.dtype) for p, g in zip(self.params, direct)])
        got = mix.to(rows) @ rows
        error = ((got - want).norm() / want.norm().clamp_min(torch.finfo(want.dtype).tiny)).item()
        if not error <= AGREEMENT[self.autocast]:
            raise NotShareable(f"--backward shared: on the first micro-batch the one pass's gradients differ from a "
                               f"direct backward pass by {error:.2g} of their norm (the model mixes the rows of a "
                               "batch, or uses a covered weight outside its module's forward); use --backward "
                               "per_objective")
        self.checked = True

    def _weight_gradients(self, module, kind, args, kwargs, saved, gy):
        """Each objective's gradient of the module's trainable parameters, added into its row of G."""
        if not self.active:  # a backward pass of some other kind (DPO-LW's weighted loss, the check): not here
            return
        self.pending -= 1
        rows = len(self.scales[0])
        if gy.shape[0] != rows or any(a.dim() == 0 or a.shape[0] != rows for a in args[:1]):
            raise NotShareable(f"--backward shared: a {type(module).__name__} sees {gy.shape[0]} rows where the batch "
                               f"has {rows}: it mixes the rows; use --backward per_objective")
        if any(a._version != version for a, version in saved):
            raise NotShareable(f"--backward shared: a {type(module).__name__}'s input was changed in place after it "
                               "read it; use --backward per_objective")
        if kind == "module":
            return self._module_gradients(module, args, kwargs, gy)
        x, weight, bias = args[0], module.weight, getattr(module, "bias", None)
        for i, scale in enumerate(self.scales):
            row_scale = scale.to(gy.dtype).view(rows, *([1] * (gy.dim() - 1)))
            if kind == "embedding":
                keep = x != module.padding_idx if module.padding_idx is not None else torch.ones_like(x, dtype=bool)
                view = self.views[i][self.index[id(weight)]]
                view.index_add_(0, x[keep], (gy * row_scale)[keep].to(view.dtype))
                continue
            if id(weight) in self.index:  # gy^T (c_i x), the scale on whichever of the two is narrower
                view = self.views[i][self.index[id(weight)]]
                if gy.shape[-1] < x.shape[-1]:
                    g, xs = (gy * row_scale).reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1]).to(gy.dtype)
                else:
                    g, xs = gy.reshape(-1, gy.shape[-1]), (x * row_scale.to(x.dtype)).reshape(-1, x.shape[-1])
                    xs = xs.to(g.dtype)
                if g.dtype == view.dtype:
                    view.addmm_(g.T, xs)
                else:  # bf16 activations: the product in their dtype, as autograd takes it, added in float32
                    view.add_(g.T @ xs)
            if bias is not None and id(bias) in self.index:
                self.views[i][self.index[id(bias)]].add_((gy * row_scale).reshape(-1, gy.shape[-1]).sum(0))

    def _module_gradients(self, module, args, kwargs, gy):
        """The module's parameters' gradients from its own backward on its saved inputs, one per objective."""
        own = {name: p for name, p in module.named_parameters(recurse=False) if id(p) in self.index}
        leaves = {name: p.detach().requires_grad_() for name, p in own.items()}
        detached = lambda v: v.detach() if torch.is_tensor(v) else v  # noqa: E731
        self.recomputing = True
        try:
            with torch.enable_grad():
                y = torch.func.functional_call(module, leaves, tuple(map(detached, args)),
                                               {k: detached(v) for k, v in kwargs.items()})
        finally:
            self.recomputing = False
        for i, scale in enumerate(self.scales):
            row_scale = scale.to(gy.dtype).view(len(scale), *([1] * (gy.dim() - 1)))
            grads = torch.autograd.grad(y, list(leaves.values()), gy * row_scale, retain_graph=i < len(self.scales) - 1)
            for param, g in zip(own.values(), grads):
                self.views[i][self.index[id(param)]].add_(g)


def _calling_with(owner, module, kind, args, kwargs, saved):
    """The output gradient's hook of one module call (as _calling: no reference to the owner)."""
    ref = weakref.ref(owner)
    return lambda gy: ref()._weight_gradients(module, kind, args, kwargs, saved, gy) if ref() is not None else None
