"""The numba kernel behind ``rest.deploy.infer.sparse_conv2d`` (imported only when a sparse layer runs).

Hand-written because no installed library runs an unstructured-sparse convolution faster
than a dense one at these densities on CPU (``torch.sparse.mm``, COO and scipy's CSR
product were measured slower; benchmarks/README.md).
"""

import numpy as np
from numba import njit, prange


@njit(parallel=True, fastmath={"contract"}, cache=True)
def sparse_conv_chwn(x, indptr, channel, tap_h, tap_w, values, bias, out, stride_h, stride_w, pad_h, pad_w):
    """out[o, p, q, :] = bias[o] + sum over nonzeros (o, c, i, j) of w * x[c, p*sh - ph + i, q*sw - pw + j, :].

    x is C x H x W x N and out O x Ho x Wo x N, both C-contiguous float32 (batch innermost),
    so the innermost loop is one multiply-add over the batch. Output rows p (and, for
    maps of fewer than 8 rows, blocks of output channels) are split between threads; an
    output position's accumulator (N floats) stays in L1 while the
    nonzeros of each output channel are summed into it, in index order (deterministic).
    fastmath allows only fused multiply-adds (more accurate, never reordered sums).
    """
    _, h, w, n = x.shape
    o_count, ho, wo, _ = out.shape
    blocks = min(o_count, (8 + ho - 1) // ho)  # at least 8 tasks, so small maps (1x1, 2x2) use every thread too
    per_block = (o_count + blocks - 1) // blocks
    for task in prange(ho * blocks):
        p = task // blocks
        o_start = (task % blocks) * per_block
        acc = np.empty(n, np.float32)
        for q in range(wo):
            for o in range(o_start, min(o_start + per_block, o_count)):
                b = bias[o]
                for k in range(n):
                    acc[k] = b
                for j in range(indptr[o], indptr[o + 1]):
                    r = p * stride_h - pad_h + tap_h[j]
                    s = q * stride_w - pad_w + tap_w[j]
                    if r < 0 or r >= h or s < 0 or s >= w:
                        continue  # a tap on the zero padding
                    v = values[j]
                    src = x[channel[j], r, s]
                    for k in range(n):
                        acc[k] += v * src[k]
                out[o, p, q, :] = acc
