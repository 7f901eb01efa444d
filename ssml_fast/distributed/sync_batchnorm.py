"""SyncBatchNorm that also runs on the CPU (gloo): batch statistics over the global batch of all ranks.

torch.nn.SyncBatchNorm accepts only GPU inputs. This one computes the same statistics with two
differentiable all-reduces (the sum and count, then the centred sum of squares: two passes, so the
variance is not a difference of large numbers), so BN in training mode normalises by the statistics of
the concatenated batch -- exactly what one process sees on it -- on any device. Running statistics are
updated as BatchNorm does (unbiased variance of the global batch). In eval mode, or without an
initialised process group, it is plain BatchNorm. Its state dict is BatchNorm's, so checkpoints load
either way.

`convert_sync_batchnorm(module)` swaps every BatchNorm: torch's SyncBatchNorm for modules on CUDA (its
fused kernels), this class elsewhere. Every rank must run the same forward passes in training mode
(each BN layer is a collective).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .env import is_initialized
from .gather import all_reduce_sum_with_grad


class SyncBatchNorm(_BatchNorm):
    """BatchNorm{1,2,3}d with global-batch statistics under torch.distributed (any device)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and is_initialized() and dist.get_world_size(self.process_group) > 1):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([xc.numel() // xc.shape[1]], dtype=xc.dtype, device=xc.device)
        summed = all_reduce_sum_with_grad(torch.cat([xc.sum(dims), count]), self.process_group)
        n = summed[-1].detach()
        mean = summed[:-1] / n
        centred = xc - mean.view(shape)
        var = all_reduce_sum_with_grad((centred * centred).sum(dims), self.process_group) / n
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """`module` with every BatchNorm replaced by a synchronised one (same parameters and buffers)."""
    if isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        return module
    if isinstance(module, _BatchNorm):
        probe = next(iter(module.buffers()), None) if module.weight is None else module.weight
        on_cuda = probe is not None and probe.is_cuda
        cls = nn.SyncBatchNorm if on_cuda else SyncBatchNorm
        out = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                  process_group=process_group)
        if module.affine:
            with torch.no_grad():
                out.weight, out.bias = module.weight, module.bias  # the same Parameter objects (optimisers keep them)
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
        return _copy_forward_hooks(module, out)
    for name, child in module.named_children():
        new = convert_sync_batchnorm(child, process_group)
        if new is not child:
            module._modules[name] = new
    return module


def _copy_forward_hooks(old: nn.Module, new: nn.Module) -> nn.Module:
    new._forward_hooks.update(old._forward_hooks)
    new._forward_pre_hooks.update(old._forward_pre_hooks)
    return new


def unsynced_batchnorms(module: nn.Module) -> list:
    """BatchNorm modules in training mode whose statistics are per rank (not synchronised)."""
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats
            and not isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm))]


@torch.no_grad()
def average_batchnorm_buffers(module: nn.Module, process_group=None) -> int:
    """Average the running statistics of the per-rank BatchNorm layers over the ranks (one all-reduce).

    Without SyncBatchNorm each rank's BN sees its own rows: the running mean averaged over ranks is the
    running mean of the global batch exactly (equal shards), the running variance misses the
    between-rank spread. Averaging after every step keeps every rank's model identical (EMA teachers
    over BN buffers, sharded evaluation). Returns the number of tensors averaged.
    """
    if not is_initialized() or dist.get_world_size(process_group) == 1:
        return 0
    tensors = [t for m in unsynced_batchnorms(module) for t in (m.running_mean, m.running_var)]
    if not tensors:
        return 0
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=process_group)
    flat /= dist.get_world_size(process_group)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset: offset + t.numel()].view_as(t))
        offset += t.numel()
    return len(tensors)

