"""A NumPy layer or network as a torch function, so that torch's gradcheck checks its hand-written backward.

``function(arrays, forward, vjp)``: ``arrays`` the NumPy arrays the code computes with (its inputs and
parameters, by name), changed in place to each point torch asks about; ``forward()`` the code's output there;
``vjp(gout)`` the code's own gradients of ``Σ gout · output`` by name. Returns (the function to pass to
gradcheck, the float64 tensors to check it at). Needs torch; imported only where torch is.
"""
from __future__ import annotations

import numpy as np
import torch


def function(arrays: dict, forward, vjp):
    names = list(arrays)

    def load(tensors):
        for n, t in zip(names, tensors):
            arrays[n][...] = t.detach().numpy()

    class Code(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *tensors):
            ctx.save_for_backward(*tensors)
            load(tensors)
            return torch.as_tensor(np.asarray(forward(), dtype=np.float64))

        @staticmethod
        def backward(ctx, gout):
            load(ctx.saved_tensors)  # gradcheck runs forward at other points in between
            grads = vjp(gout.detach().numpy().astype(np.float64))
            return tuple(torch.as_tensor(np.array(grads[n], dtype=np.float64)) for n in names)

    args = tuple(torch.tensor(np.array(arrays[n], dtype=np.float64), requires_grad=True) for n in names)
    return Code.apply, args
