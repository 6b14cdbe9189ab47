"""--backward shared: the exact per-objective gradients of a step from ONE backward pass through the model.

Why it is exact (docs/method.md, section 10). Every loss reads the model only through the log-probs of the
micro-batch's R responses (dpo.py), so g_i = sum_r c_ir grad log pi(y_r) with c_ir = dL_i/d log pi(y_r)
(raco.objective_cotangents). The rows of a batch never mix in a transformer: row r's activations depend on row r's
tokens alone. So under the cotangent c_i on the log-probs, the gradient reaching any activation of row r is c_ir times
what reaches it under the cotangent 1. One backward pass of sum_r log pi(y_r) gives every layer's output gradient gy,
and the hooks below turn it into each objective's weight gradients, one product per objective:

    Linear y = x W^T + b   dL_i/dW = sum_{r,t} c_ir gy[r,t]^T x[r,t] = gy^T (c_i x)     dL_i/db = sum_{r,t} c_ir gy[r,t]
    Embedding              the rows picked by the tokens get c_ir gy[r,t] (a tied output layer adds its own product)
    RMSNorm, LayerNorm     the norm's own backward on its saved input, with gy scaled by c_ir row by row (elementwise)

Cost: the chain of activation gradients once, the weight-gradient products m times: about (3 + m) / 4 of DPO-LW's step
where per-objective passes cost (2 + 2m) / 4. The one pass asks autograd for the gradients of the embeddings' outputs
only, so it computes no weight gradient of its own; the layer inputs the hooks keep are those autograd saves anyway.

Where the rows-never-mix assumption lives: here, and it is checked, not trusted. The first step runs the model twice
on a few rows of its micro-batch, once with row 0 changed, and refuses the model (one line, NotShareable) if any other
row's output moved; every covered layer must also see the batch's rows as its input's first dimension. What this
module does not cover falls back to per-objective passes with one line saying why (`shared_or_fallback`): a trainable
parameter in any other kind of module, gradient checkpointing (its recomputed forward would run the hooks twice), and
FSDP2 shards (harness/scale.py's ShardedRows).
"""
import sys

import torch

from harness import distributed
from harness.errors import UsageError
from raco import MultiObjectiveBackward, flat_views, gradient_rows, objective_cotangents


class NotShareable(UsageError):
    """A model the one shared backward pass would get wrong (its rows mix) or not reach: one line, exit code 2."""


def is_norm(module):
    """RMSNorm and LayerNorm, torch's and transformers' (LlamaRMSNorm, Qwen3RMSNorm, Gemma3RMSNorm, ...): each
    normalises one position's features, so rows stay apart."""
    name = type(module).__name__
    return isinstance(module, torch.nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def kind_of(module):
    """"linear", "embedding" or "norm" for the modules whose trainable parameters the shared pass covers, else None."""
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        plain = module.max_norm is None and not module.scale_grad_by_freq and not module.sparse
        return "embedding" if plain else None
    return "norm" if is_norm(module) else None


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
    """SharedBackward where it applies; else fallback (the per-objective class), with one line on stderr saying why."""
    why = ("gradient checkpointing recomputes the forward pass inside the backward one" if cfg.gradient_checkpointing
           else "FSDP2 shards the parameters" if fallback is not MultiObjectiveBackward else uncovered(model, params))
    if not why:
        return SharedBackward(model, params, weights, method, cfg.c, names)
    if distributed.is_main_process():
        print(f"warning: --backward shared falls back to one backward pass per objective: {why}", file=sys.stderr)
    return fallback(params, weights, method, cfg.c, names)


def check_rows_independent(model, input_ids, attention_mask, rows=4, positions=64):
    """The model's outputs for rows 1.. of a batch must not change when row 0 does (a copy of row 1 in its place):
    two forward passes over the first `rows` rows and `positions` positions, with the same random state (dropout).
    Raises NotShareable if any output moves by more than 1e-4 of the largest (batch norm in training mode, experts
    with a capacity shared by the batch, ...)."""
    ids, mask = input_ids[:rows, :positions], attention_mask[:rows, :positions]
    if len(ids) < 2:
        return
    changed_ids, changed_mask = ids.clone(), mask.clone()
    changed_ids[0], changed_mask[0] = ids[1], mask[1]
    devices = [ids.device] if ids.is_cuda else []
    outputs = []
    with torch.no_grad():
        for batch_ids, batch_mask in ((ids, mask), (changed_ids, changed_mask)):
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(0)
                outputs.append(model(input_ids=batch_ids, attention_mask=batch_mask).logits[1:].float())
    moved = (outputs[0] - outputs[1]).abs().max().item()
    if moved > 1e-4 * max(outputs[0].abs().max().item(), 1e-30):
        raise NotShareable(f"--backward shared: {type(model).__name__} lets one row of a batch change the outputs of "
                           f"the others (by {moved:.2g}), so one backward pass cannot stand for one per objective; "
                           "use --backward per_objective")


class SharedBackward(MultiObjectiveBackward):
    """raco.MultiObjectiveBackward with line 2 done in one backward pass (see the module docstring). The same use:
    backward(losses, logps) per micro-batch, then finish(); G holds the same rows, up to float rounding.

    Forward hooks on the covered modules keep each one's input and hook its output, on forward passes under autograd
    (the training forward; the reference's and sampling's run without). The output hooks act only inside backward()."""

    def __init__(self, model, params, weights, method="raco", c=0.4, names=None):
        super().__init__(params, weights, method, c, names)
        self.model, self.checked = model, False
        self.index = {id(p): k for k, p in enumerate(self.params)}
        self.modules = [(m, kind_of(m)) for m in model.modules() if kind_of(m) is not None
                        and any(id(p) in self.index for p in m.parameters(recurse=False))]
        self.roots, self.pending, self.inputs, self.active, self.scales, self.views = [], 0, None, False, None, None
        self.handles = [model.register_forward_pre_hook(self._start, with_kwargs=True)]
        self.handles += [m.register_forward_hook(self._capture) for m in model.modules()
                         if isinstance(m, torch.nn.Embedding) or kind_of(m) is not None]

    def _start(self, model, args, kwargs):
        """A new forward pass of the whole model: what the last one left is dropped."""
        if torch.is_grad_enabled():
            self.roots, self.pending = [], 0
            self.inputs = (kwargs.get("input_ids", args[0] if args else None), kwargs.get("attention_mask"))

    def _capture(self, module, inputs, output):
        """During a forward pass under autograd: an embedding's output becomes a root of the one backward pass (a leaf
        that requires grad where the embedding is frozen); a covered module's output gets a hook that turns its
        gradient into the m objectives' gradients of the module's parameters."""
        if not torch.is_grad_enabled():
            return None
        if isinstance(module, torch.nn.Embedding):
            if not output.requires_grad:
                output = output.detach().requires_grad_()
            self.roots.append(output)
        kind = kind_of(module)
        if kind is not None and any(id(p) in self.index for p in module.parameters(recurse=False)):
            x = inputs[0]
            self.pending += 1
            output.register_hook(lambda gy: self._weight_gradients(module, kind, x, gy))
        return output

    def backward(self, losses, logps):
        if len(losses) != len(self.weights):
            raise ValueError(f"got {len(losses)} losses for {len(self.weights)} weights")
        if self.G is None:
            self.G = gradient_rows(self.params, len(self.weights))
            self.views = [flat_views(row, self.params) for row in self.G]
        if not self.checked:
            check_rows_independent(self.model, *self.inputs)
            self.checked = True
        self.scales = objective_cotangents(losses, logps)  # (m, R): c_ir
        self.active, expected = True, self.pending
        try:  # one pass: the gradients of the roots only, so autograd computes no weight gradient itself
            torch.autograd.grad(logps, self.roots, grad_outputs=torch.ones_like(logps))
        finally:
            self.active = False
        if self.pending != 0:
            raise NotShareable(f"--backward shared: {self.pending} of {expected} covered layers were not reached by "
                               "the backward pass from the embeddings; use --backward per_objective")
        self.roots, self.scales = [], None
        self.count += 1

    def _weight_gradients(self, module, kind, x, gy):
        """Each objective's gradient of the module's trainable parameters, added into its row of G."""
        if not self.active:  # a backward pass of some other kind (DPO-LW's weighted loss): nothing to do here
            return
        self.pending -= 1
        rows = len(self.scales[0])
        if x.shape[0] != rows or gy.shape[0] != rows:
            raise NotShareable(f"--backward shared: a {type(module).__name__}'s input has {x.shape[0]} rows where the "
                               f"batch has {rows}: it mixes the rows; use --backward per_objective")
        if kind == "norm":
            return self._norm_gradients(module, x, gy)
        weight, bias = module.weight, getattr(module, "bias", None)
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

    def _norm_gradients(self, module, x, gy):
        """The norm's parameters' gradients from its own backward on the saved input, one per objective."""
        own = {name: p for name, p in module.named_parameters(recurse=False) if id(p) in self.index}
        leaves = {name: p.detach().requires_grad_() for name, p in own.items()}
        with torch.enable_grad():
            y = torch.func.functional_call(module, leaves, (x.detach(),))
            for i, scale in enumerate(self.scales):
                row_scale = scale.to(gy.dtype).view(len(scale), *([1] * (gy.dim() - 1)))
                grads = torch.autograd.grad(y, list(leaves.values()), gy * row_scale,
                                            retain_graph=i < len(self.scales) - 1)
                for (name, param), g in zip(own.items(), grads):
                    self.views[i][self.index[id(param)]].add_(g)
