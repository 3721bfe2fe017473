"""ModelEMA: the exponential moving average of a model's weights, on top of the multi-tensor op
in recipe_kernels.ema. Model plumbing only: pairing the EMA's tensors with the model's (and
following the model when its tensors are replaced), the schedule's state, DDP and FSDP2/DTensor
models, state_dict and copy_to.
"""
import copy
import math
from operator import getitem
from typing import Any, Dict, Mapping, Optional

import torch

from recipe_kernels import _backend, _checks
from recipe_kernels.ema import (AVERAGE_SLOT, COPY_SLOT, EMA_DTYPE_CODES, _check_pairs, _dense_layout, _is_dtensor,
                                _local, _warn_low_precision_ema, ema_scheduled_update_op)

BUFFER_MODES = ("average", "copy", "ignore")
NUM_UPDATES_KEY = "_ema_num_updates"


# Bumped whenever any module registers a parameter, buffer or submodule (attribute assignment,
# register_*, load_state_dict(assign=True), ...), through torch's global registration hooks
# (installed by the first ModelEMA; they only count): ModelEMA then makes its pairs anew. Tensors
# replaced without a registration (model.to() makes new buffers) are followed because every
# update reads each tensor from its module; re-allocated ones (.data = ...) by the op's layout key.
_REGISTRATIONS = [0]
_HOOKS_INSTALLED = [False]


def _count_registration(module, name, value):
    _REGISTRATIONS[0] += 1


def _install_registration_hooks():
    if not _HOOKS_INSTALLED[0]:
        from torch.nn.modules import module as module_module
        module_module.register_module_parameter_registration_hook(_count_registration)
        module_module.register_module_buffer_registration_hook(_count_registration)
        module_module.register_module_module_registration_hook(_count_registration)
        _HOOKS_INSTALLED[0] = True


def _unwrap(model):
    """The module inside DistributedDataParallel (each rank holds a replicated copy)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _fsdp_module_class():
    try:
        from torch.distributed.fsdp import FSDPModule
        return FSDPModule
    except ImportError:
        return None


def _copy_module(model):
    """copy.deepcopy(model); for FSDP2 (fully_shard) models, which refuse deepcopy, a copy of the
    module tree as plain modules whose parameters and buffers are clones (DTensors stay DTensors
    with their placements) and which carry no hooks or FSDP state."""
    fsdp_module = _fsdp_module_class()
    if fsdp_module is None or not any(isinstance(m, fsdp_module) for m in model.modules()):
        return copy.deepcopy(model)
    copies = {}

    def copy_tensor(tensor):
        if tensor is None:
            return None
        if id(tensor) not in copies:  # tied weights stay tied
            clone = tensor.detach().clone()
            copies[id(tensor)] = torch.nn.Parameter(clone, False) if isinstance(tensor, torch.nn.Parameter) else clone
        return copies[id(tensor)]

    def copy_tree(module):
        if id(module) in copies:
            return copies[id(module)]
        cls = type(module)
        if isinstance(module, fsdp_module):  # fully_shard made a class FSDP<Original>(FSDPModule, Original)
            cls = next(base for base in cls.__mro__[1:] if not issubclass(base, fsdp_module))
        new = copies[id(module)] = cls.__new__(cls)
        state = {k: v for k, v in module.__dict__.items() if not k.startswith("__composable_api_state_key")}
        for key, value in state.items():
            if key.endswith("_hooks") or key.endswith("_hooks_with_kwargs") or key.endswith("_hooks_always_called"):
                state[key] = type(value)()
        state["_parameters"] = {k: copy_tensor(v) for k, v in module._parameters.items()}
        state["_buffers"] = {k: copy_tensor(v) for k, v in module._buffers.items()}
        state["_modules"] = {k: None if v is None else copy_tree(v) for k, v in module._modules.items()}
        new.__dict__.update(state)
        return new

    return copy_tree(model)


def _persistent_buffers(module):
    """named_buffers() without the non-persistent ones, which state_dict() leaves out: ModelEMA
    neither averages, copies nor saves those (as timm's ModelEmaV3, which walks state_dict())."""
    non_persistent = {f"{prefix}.{name}" if prefix else name
                      for prefix, submodule in module.named_modules() for name in submodule._non_persistent_buffers_set}
    return {name: buffer for name, buffer in module.named_buffers() if name not in non_persistent}


def _owner_dicts(module, names, kind):
    """For each dotted name, the dict that holds the tensor (its module's `kind`: _parameters or
    _buffers) and the tensor's own name in it."""
    dicts, keys = [], []
    for name in names:
        owner, _, key = name.rpartition(".")
        dicts.append(getattr(module.get_submodule(owner), kind))
        keys.append(key)
    return dicts, keys


class _Pairs:
    """The (ema, model) tensor pairs of one model and their decay slots, made once per model structure.

    It keeps where each tensor lives (its module's _parameters or _buffers dict and its name), not
    the tensor: tensors() reads them anew on every update, so a tensor replaced in its module
    (model.to() makes new buffers) is followed without any hook on Module._apply. It refills the
    same two lists every time, so the op finds its table through their memo (recipe_kernels.ema's
    _ListsMemo), which compares every tensor's layout, never trusting the lists' contents.
    """

    def __init__(self, ema_module, model, buffer_mode):
        self.model = model
        self.generation = _REGISTRATIONS[0]
        ema_params, model_params = dict(ema_module.named_parameters()), dict(model.named_parameters())
        if ema_params.keys() != model_params.keys():
            raise ValueError("the model's parameters do not match the EMA's: "
                             f"missing {sorted(ema_params.keys() - model_params.keys())[:5]}, "
                             f"unexpected {sorted(model_params.keys() - ema_params.keys())[:5]}")
        names, self.slots = list(ema_params), [AVERAGE_SLOT] * len(ema_params)
        ema_tensors, model_tensors = list(ema_params.values()), [model_params[name] for name in names]
        ema_dicts, ema_keys = _owner_dicts(ema_module, names, "_parameters")
        model_dicts, model_keys = _owner_dicts(model, names, "_parameters")
        if buffer_mode != "ignore":
            ema_buffers, model_buffers = _persistent_buffers(ema_module), _persistent_buffers(model)
            if ema_buffers.keys() != model_buffers.keys():
                raise ValueError("the model's buffers do not match the EMA's: "
                                 f"{sorted(ema_buffers.keys() ^ model_buffers.keys())[:5]}")
            for name, e in ema_buffers.items():
                floating = e.dtype in EMA_DTYPE_CODES
                average = buffer_mode == "average" and (e.is_floating_point() or e.is_complex())
                p = model_buffers[name]
                if not floating and e.dtype != p.dtype:
                    raise ValueError(f"buffer {name}: the EMA holds {e.dtype} but the model {p.dtype}")
                ema_tensors.append(e)
                model_tensors.append(p)
                self.slots.append(AVERAGE_SLOT if average else COPY_SLOT)
            buffer_names = list(ema_buffers)
            names += buffer_names
            for dicts, keys, module in ((ema_dicts, ema_keys, ema_module), (model_dicts, model_keys, model)):
                buffer_dicts, buffer_keys = _owner_dicts(module, buffer_names, "_buffers")
                dicts += buffer_dicts
                keys += buffer_keys
        for name, e, p, slot in zip(names, ema_tensors, model_tensors, self.slots):
            if e.dtype not in EMA_DTYPE_CODES and (slot == AVERAGE_SLOT and (e.is_floating_point() or e.is_complex())
                                                    or e.dtype != p.dtype):  # else a byte copy: same dtype
                raise ValueError(f"{name}: the EMA cannot follow a model tensor of {p.dtype} with one of {e.dtype}; "
                                 "it averages float32, float16, bfloat16 and float64 tensors and copies others "
                                 "(integer parameters and buffers, buffers='copy') between equal dtypes")
        self.has_dtensors = any(_is_dtensor(t) for t in ema_tensors + model_tensors)
        self._check(ema_tensors, model_tensors)
        self._where = (ema_dicts, ema_keys, model_dicts, model_keys)
        self._ema, self._params = [], []

    def _check(self, ema_tensors, model_tensors):
        floating = [i for i, e in enumerate(ema_tensors) if e.dtype in EMA_DTYPE_CODES]
        _check_pairs([ema_tensors[i] for i in floating], [model_tensors[i] for i in floating])
        for e, p in zip(ema_tensors, model_tensors):
            e, p = _local(e), _local(p)
            if e.shape != p.shape or e.device != p.device:
                raise ValueError(f"an EMA tensor {tuple(e.shape)} on {e.device} pairs with a model tensor "
                                 f"{tuple(p.shape)} on {p.device}")
            if e.stride() != p.stride() or not _dense_layout(e):
                raise ValueError("the model's memory layout changed (e.g. channels_last) after the EMA was "
                                 "made; make the EMA from the model in its final layout")

    def tensors(self):
        """The (ema, model) tensors the kernel sees, read from their modules now (local shards of
        DTensors, detached); None when one is gone from its module (del without a registration)."""
        ema_dicts, ema_keys, model_dicts, model_keys = self._where
        try:  # each list is refilled only once all its tensors are found
            self._ema[:] = map(getitem, ema_dicts, ema_keys)
            self._params[:] = map(getitem, model_dicts, model_keys)
        except KeyError:
            return None
        if self.has_dtensors:
            self._ema[:] = [_local(e).detach() for e in self._ema]
            self._params[:] = [_local(p).detach() for p in self._params]
        return self._ema, self._params


class ModelEMA:
    """An exponential moving average of a model's weights, updated in one kernel launch.

    `.module` is a deep copy of the model (cast to ema_dtype if given, in eval mode, without
    grads) that holds the averaged weights and is ready to evaluate. Each `.update(model)`
    counts t = 1, 2, ... on the device and, without a host sync:

    - skips the update when update_every > 1 and t % update_every != 0;
    - else copies the parameters when t <= update_after_step;
    - else blends EMA <- lerp(EMA, param, 1 - d) = d*EMA + (1-d)*param with d = decay, or with warmup
      d = min(decay, max(min_decay, 1 - (1 + s/warmup_gamma)^(-warmup_power))), s = t - update_after_step.

    buffers: "average" averages floating buffers like parameters and copies integer ones (timm's
    default), "copy" copies them all, "ignore" leaves them alone. Non-persistent buffers (left out
    of state_dict()) are always left alone, as in timm: .module keeps the values it was made with.
    The schedule, the parameters and the buffers go in one kernel launch (the "torch" backend runs
    torch ops).
    Under DistributedDataParallel pass the model or its .module (each rank averages its replica);
    with DTensor/FSDP2 parameters each rank averages its local shards, without communication.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.9999, *, warmup: bool = False,
                 warmup_gamma: float = 1.0, warmup_power: float = 2 / 3, min_decay: float = 0.0,
                 update_after_step: int = 0, update_every: int = 1, ema_dtype: Optional[torch.dtype] = None,
                 buffers: str = "average", backend: Optional[str] = None):
        self.decay = _checks.probability(decay, "decay")
        self.min_decay = _checks.probability(min_decay, "min_decay")
        for name, value in (("warmup_gamma", warmup_gamma), ("warmup_power", warmup_power)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name, value, least in (("update_after_step", update_after_step, 0), ("update_every", update_every, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if buffers not in BUFFER_MODES:
            raise ValueError(f"buffers must be one of {BUFFER_MODES}, got {buffers!r}")
        if ema_dtype is not None and ema_dtype not in EMA_DTYPE_CODES:
            raise ValueError("ema_dtype must be a floating dtype (float32, float16, bfloat16, float64), "
                             f"got {ema_dtype}")
        self.warmup, self.warmup_gamma, self.warmup_power = bool(warmup), float(warmup_gamma), float(warmup_power)
        self.update_after_step, self.update_every, self.buffers = update_after_step, update_every, buffers

        model = _unwrap(model)
        self.module = _copy_module(model)
        if ema_dtype is not None:
            self.module.to(ema_dtype)  # floating parameters and buffers only
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
            parameter.grad = None
        first = next(iter(self.module.parameters()), None)
        first = next(iter(self.module.buffers()), None) if first is None else first
        device = _local(first).device if first is not None else torch.device("cpu")
        self.backend = _backend.resolve("ema", device, backend)
        self.num_updates = torch.zeros((), dtype=torch.int64, device=device)
        self._decays = torch.zeros(2, dtype=torch.float64, device=device)  # [average, copy] of the last update
        self._programs_done = torch.zeros((), dtype=torch.int32, device=device)  # the kernels' count, 0 between updates
        low_precision = (torch.bfloat16, torch.float16)
        if 0.999 <= self.decay < 1.0 and any(p.dtype in low_precision for p in self.module.parameters()):
            _warn_low_precision_ema(self.decay)
        _install_registration_hooks()
        self._pairs = None

    def _pairs_for(self, model):
        """The pairs of `model` and their tensors now; made anew after a registration anywhere, for
        another model, or when a tensor is gone from its module (which raises if the model no longer
        matches the EMA)."""
        pairs = self._pairs
        if pairs is None or pairs.model is not model or pairs.generation != _REGISTRATIONS[0]:
            pairs = self._pairs = _Pairs(self.module, model, self.buffers)
        tensors = pairs.tensors()
        if tensors is None:
            pairs = self._pairs = _Pairs(self.module, model, self.buffers)
            tensors = pairs.tensors()
        return pairs, tensors

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """One update from `model`'s current weights: one launch, no host sync."""
        pairs, (ema, params) = self._pairs_for(_unwrap(model))
        ema_scheduled_update_op(ema, params, pairs.slots, self.num_updates, self._programs_done, self._decays,
                                self.decay, self.warmup, self.warmup_gamma, self.warmup_power, self.min_decay,
                                self.update_after_step, self.update_every, self.backend)

    def state_dict(self) -> Dict[str, Any]:
        """The averaged weights keyed as in model.state_dict() (DTensors stay DTensors), plus the counter."""
        state = self.module.state_dict()
        state[NUM_UPDATES_KEY] = self.num_updates
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> None:
        """Loads weights and the update counter in place; updates then continue bit for bit."""
        state = dict(state_dict)
        if NUM_UPDATES_KEY not in state:
            raise ValueError(f"state_dict has no {NUM_UPDATES_KEY!r}: it was not made by ModelEMA.state_dict()")
        num_updates = state.pop(NUM_UPDATES_KEY)
        result = self.module.load_state_dict(state, strict=strict)
        with torch.no_grad():
            self.num_updates.copy_(num_updates)
        return result

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Writes the EMA weights (and persistent buffers, unless buffers="ignore") into `model`, cast to
        its dtypes."""
        model = _unwrap(model)
        targets = dict(model.named_parameters())
        if self.buffers != "ignore":
            targets.update(_persistent_buffers(model))
        sources = dict(self.module.named_parameters())
        sources.update(_persistent_buffers(self.module))
        if not targets.keys() <= sources.keys():
            raise ValueError("the model has tensors that the EMA does not: "
                             f"{sorted(targets.keys() - sources.keys())[:5]}")
        for name, target in targets.items():
            target.copy_(sources[name])
