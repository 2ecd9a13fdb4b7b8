"""The gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018, arXiv 1812.06162), measured
online from the gradients a training step computes anyway.

Sigma is the covariance of one sample's gradient and G the full-data gradient. A gradient averaged over b
samples has E|g_b|^2 = |G|^2 + tr(Sigma)/b, so two batch sizes b_small < b_big give unbiased estimates
(the paper's Appendix A):

    |G|^2     ~ (b_big |g_big|^2 - b_small |g_small|^2) / (b_big - b_small)
    tr(Sigma) ~ (|g_small|^2 - |g_big|^2) / (1/b_small - 1/b_big)

Here the small gradients are the step's units and the big one their weighted sum, the step's gradient:
  - one process: the micro-batches of exact accumulation (each one's gradient is the difference of the
    accumulated .grad before and after its backward; a copy of .grad is kept between them),
  - several ranks (DDP): each rank's own gradient, read by a communication hook just before the all-reduce.
With units of b_i samples and weights w_i (sum 1), E|g_i|^2 averaged over the units is |G|^2 + tr(Sigma) mean(1/b_i)
and E|sum w_i g_i|^2 = |G|^2 + tr(Sigma) sum(w_i^2 / b_i), which define b_small and b_big (b and n*b for n equal
units of b). A step with one unit measures nothing.

Per step, the two estimates are added to exponential moving averages (decay NOISE_EMA_DECAY, bias-corrected),
and the ratio is taken of the averages, as the paper recommends: each step's estimates are noisy and the ratio of
noisy numbers is biased. Everything stays on the device: the host reads the averages with the training loss.

The gradient is the loss's (weight decay is added by the optimizer, after); with BatchNorm each unit's
gradient is that of the network computed on its micro-batch (or ghost batches), and the units of a step are
drawn without replacement from the data, which these formulas neglect (a factor 1 - B/N).
"""
import torch

NOISE_EMA_DECAY = 0.98  # per step: ~50 steps of memory


def _squared_norm(tensors):
    """sum |t|^2 over tensors, as a float64 0-d tensor on their device (no host sync)."""
    return torch.stack(torch._foreach_norm(tensors)).double().square().sum()


class NoiseScale:
    """Measures B_simple over the steps of a run. `params`: the model's parameters (whose .grad it reads);
    `ddp_net`: the DistributedDataParallel net of a multi-rank run (the ranks are the units), else None
    (the micro-batches are)."""

    def __init__(self, params, ddp_net=None, decay=NOISE_EMA_DECAY):
        self.params = [p for p in params if p.requires_grad]
        self.decay = decay
        self.multi_rank = ddp_net is not None
        self.averages = None  # [tr(Sigma), |G|^2], float64 on the device, created at the first measured step
        self.count = 0        # steps measured (for the bias correction)
        self._units = []      # (size, weight) of this step's units
        self._small_sum = None
        self._previous = None
        if self.multi_rank:
            ddp_net.register_comm_hook(self, _measuring_allreduce)

    # ---------------------------------------------------------------- the step

    def start_step(self, micro_batches):
        """Before the step's backward passes; micro_batches: [(images, labels, weight)] of this rank."""
        self._small_sum = None
        if self.multi_rank:  # one unit per rank: this rank's whole share
            self._units = [(sum(len(y) for _, y, _ in micro_batches),
                            sum(w * w / len(y) for _, y, w in micro_batches))]
        else:
            self._units = [(len(y), w) for _, y, w in micro_batches]

    def after_backward(self, index):
        """After micro-batch `index`'s backward: its gradient is what it added to .grad."""
        if self.multi_rank or len(self._units) < 2:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        weight = self._units[index][1]
        if index == 0:
            if self._previous is None or len(self._previous) != len(grads):
                self._previous = [torch.empty_like(g) for g in grads]
            squared = _squared_norm(grads)
        else:
            torch._foreach_sub_(self._previous, grads)  # -(weight * this micro-batch's gradient)
            squared = _squared_norm(self._previous)
        self._add_small(squared / weight ** 2)
        if index < len(self._units) - 1:
            torch._foreach_copy_(self._previous, grads)

    def _add_small(self, squared):
        self._small_sum = squared if self._small_sum is None else self._small_sum + squared

    def end_step(self, world_size=1):
        """After the step's last backward (and the all-reduce), before the optimizer step."""
        if self.multi_rank:
            (size, sum_w2_over_b), = self._units
            b_small, b_big, units = 1 / sum_w2_over_b, world_size / sum_w2_over_b, 1
            if world_size < 2 or self._small_sum is None:
                return
        else:
            units = len(self._units)
            if units < 2:
                return
            b_small = units / sum(1 / size for size, _ in self._units)
            b_big = 1 / sum(w * w / size for size, w in self._units)
        big = _squared_norm([p.grad for p in self.params if p.grad is not None])
        small = self._small_sum / units
        trace = (small - big) / (1 / b_small - 1 / b_big)
        grad_sq = (b_big * big - b_small * small) / (b_big - b_small)
        estimate = torch.stack([trace, grad_sq])
        if self.averages is None:
            self.averages = torch.zeros_like(estimate)
        self.averages.mul_(self.decay).add_(estimate, alpha=1 - self.decay)
        self.count += 1

    # ---------------------------------------------------------------- reading, saving

    def readout(self, device):
        """The averages to read with the loss (zeros before the first measurement): a float64 tensor of 2."""
        return self.averages if self.averages is not None else torch.zeros(2, dtype=torch.float64, device=device)

    def row(self, read, world_size=1):
        """The log row's values from `readout` as read (summed over the ranks): noise_scale (B_simple),
        noise_trace (tr Sigma), noise_grad_sq (|G|^2); {} before the first measured step. noise_scale is None
        while the |G|^2 average is not positive (early, or when the noise swamps the gradient)."""
        if not self.count:
            return {}
        correction = world_size * (1 - self.decay ** self.count)
        trace, grad_sq = (v / correction for v in read)
        return {"noise_scale": trace / grad_sq if grad_sq > 0 else None, "noise_trace": trace,
                "noise_grad_sq": grad_sq}

    def state_dict(self):
        return {"averages": self.averages, "count": self.count}

    def load_state_dict(self, state):
        self.averages, self.count = state["averages"], state["count"]


def _measuring_allreduce(state, bucket):
    """DDP's default all-reduce (average over ranks), after adding this rank's |bucket|^2 to the step's sum:
    the bucket holds this rank's own gradient until the all-reduce (with a hook, DDP does not pre-divide)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
    buffer = bucket.buffer()
    state._add_small(torch.linalg.vector_norm(buffer, dtype=torch.float64).square())
    return default_hooks.allreduce_hook(None, bucket)
