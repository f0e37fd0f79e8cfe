"""``nn.SyncBatchNorm``: batch normalisation whose statistics are taken over the global batch.

In a data-parallel training step each rank sums ``x`` and ``x * x`` per channel and counts
its values; one ``all_reduce`` (sum) of the three gives the global mean and (biased)
variance, with which ``sync_batch_norm`` normalises. The backward is the gradient of these
IR nodes (autodiff): the ``all_reduce`` transposes to an ``all_reduce`` of the statistics'
gradients, which is what PyTorch's SyncBatchNorm backward reduces. Ranks may hold batches
of different sizes (the counts are reduced too). Run by one process (no communicator) it
is batch norm over that process's batch; in eval mode, and eagerly, it is ``BatchNorm``.

The variance is ``E[x^2] - E[x]^2`` (one pass, one collective), which loses precision
when a channel's mean is large against its spread; PyTorch reduces per-rank means and
variances instead.
"""

from __future__ import annotations

from typing import Any

from convforge.errors import ConvforgeError
from convforge.frontend import trace
from convforge.frontend.nn import _BatchNorm


class SyncBatchNorm(_BatchNorm):
    """Batch norm over [N, C, ...] input with statistics all-reduced over the ranks
    (``torch.nn.SyncBatchNorm``'s signature; ``process_group`` must be None: every rank)."""

    _ranks = (2, 3, 4)

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        if process_group is not None:
            raise ConvforgeError("SyncBatchNorm: only process_group=None (all ranks) is supported")

    def forward(self, x: Any) -> Any:
        tracer = trace.active()
        if not self.training or tracer is None:
            return super().forward(x)
        rank = len(x.shape)
        if rank not in self._ranks:
            raise ConvforgeError(
                f"{tracer.where()}: expected input of rank 2, 3 or 4, got rank {rank} (shape {list(x.shape)})"
            )
        c = self.num_features
        dims = (0, *range(2, rank))
        call = tracer.call
        total = call(
            "concat",
            [
                call("reduce_sum", [x], {"dims": dims}),
                call("reduce_sum", [x * x], {"dims": dims}),
                call("channel_count", [x], {}),
            ],
            {"dim": 0},
        )
        total = call("all_reduce", [total], {"reduce": "sum"})
        count = call("slice", [total], {"dim": 0, "start": 2 * c, "stop": 2 * c + 1})
        mean = call("slice", [total], {"dim": 0, "start": 0, "stop": c}) / count
        var = call("slice", [total], {"dim": 0, "start": c, "stop": 2 * c}) / count - mean * mean
        y, new_mean, new_var = call(
            "sync_batch_norm",
            [x, self.weight, self.bias, mean, var, self.running_mean, self.running_var, count],
            {"eps": self.eps, "momentum": self.momentum},
            ("input", "weight", "bias", "mean", "var", "running_mean", "running_var", "count"),
        )
        # outputs of the normalising node itself: dead-code elimination keeps them
        for buf, new in ((self.running_mean, new_mean), (self.running_var, new_var)):
            key = tracer.names.get(id(buf))
            if key is not None:
                tracer.state_updates[key] = new.value
        return y
