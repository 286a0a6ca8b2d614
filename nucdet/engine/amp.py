"""Mixed-precision training on the CPU: bf16 autocast, no grad scaler.

detectron2's ``AMPTrainer`` is written for CUDA (``torch.cuda.amp.autocast`` and a
``GradScaler``; its ``run_step`` asserts CUDA). On the CPU, autocast runs convolutions and
matrix products in bf16, which keeps fp32's exponent range: gradients do not underflow, so
no loss scaling is needed. Fast only on CPUs with bf16 units (``amx_bf16`` /
``avx512_bf16``); elsewhere torch emulates bf16 and it is slower than fp32. This module
stops at the training step; the trainer picks it (``nucdet.engine.trainer``).
"""

from __future__ import annotations

import time

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["CPUAMPTrainer"]


class CPUAMPTrainer(SimpleTrainer):
    """``SimpleTrainer`` with the forward pass (and the losses) under
    ``torch.autocast("cpu", dtype=precision)``; backward and the optimizer step as usual
    (the parameters and their gradients stay fp32)."""

    def __init__(
        self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16, **kwargs
    ):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.precision = precision

    def run_step(self):
        """``SimpleTrainer.run_step`` with the forward under autocast (detectron2's
        ``AMPTrainer.run_step`` without the grad scaler)."""
        assert self.model.training, "[CPUAMPTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast("cpu", dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        # The sum of the losses in fp32 whatever dtypes autocast gave the terms.
        losses.float().backward()

        self.after_backward()

        if self.async_write_metrics:
            self.concurrent_executor.submit(
                self._write_metrics, loss_dict, data_time, iter=self.iter
            )
        else:
            self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
