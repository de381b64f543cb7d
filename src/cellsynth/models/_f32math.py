"""``log1p`` and ``1 - exp(-x)`` in float32 that LLVM vectorises inside numba loops.

numba lowers ``math.log1p`` and ``math.expm1`` to calls into the C library, one value at a time:
a loop that calls them is not vectorised (without Intel's SVML, which numba does not ship). These
are branch-free float32 versions (Cephes' ``logf`` polynomial; a degree-7 ``expm1`` after the
usual ``2**n`` range reduction) that compile to AVX2 code, 8 values an instruction, a few
nanoseconds a value on one core. Relative error (``tests/test_draws.py``, over the means and
dispersions counts have): below 3e-7 for ``log1p``, 5e-7 for ``P(x > 0) = 1 - exp(-lam)``, and
``P(x = 0) = exp(-lam)`` as precise as float32's ``lam`` is (``lam`` times 5e-7).

Callers compile with ``error_model="numpy"``: numba's Python error model checks every division for
zero, a branch that stops the vectoriser.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_F = np.float32
_ONE, _HALF, _SQRT2 = _F(1.0), _F(0.5), _F(1.41421356)
# Cephes logf: log(1 + f) = f - f^2 / 2 + f^3 P(f) for f in [sqrt(1/2) - 1, sqrt(2) - 1]
_L0, _L1, _L2 = _F(7.0376836292e-2), _F(-1.1514610310e-1), _F(1.1676998740e-1)
_L3, _L4, _L5 = _F(-1.2420140846e-1), _F(1.4249322787e-1), _F(-1.6668057665e-1)
_L6, _L7, _L8 = _F(2.0000714765e-1), _F(-2.4999993993e-1), _F(3.3333331174e-1)
_LN2_HI, _LN2_LO, _LOG2E = _F(0.693359375), _F(-2.12194440e-4), _F(1.44269504088896341)
# expm1(r) = r + r^2 (1/2 + r/6 + ... + r^5/5040) for |r| <= log(2) / 2: truncation below 2e-8
_E2, _E3, _E4 = _F(1 / 2), _F(1 / 6), _F(1 / 24)
_E5, _E6, _E7 = _F(1 / 120), _F(1 / 720), _F(1 / 5040)
_X_MAX = _F(80.0)  # 1 - exp(-80) is 1 in float32; 2 ** -116 is still a normal float32
_BIAS, _SHIFT = np.int32(127), np.int32(23)
_MANTISSA, _EXP_BITS, _ONE_BITS = np.int32(0x7FFFFF), np.int32(0xFF), np.int32(0x3F800000)


@intrinsic
def _bits(typingctx, x):
    """The bits of a float32 as an int32 (a bitcast, free in a vector register)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _from_bits(typingctx, b):
    """The float32 whose bits are the int32 ``b``."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(inline="always", error_model="numpy")
def log1p32(r):
    """``log(1 + r)`` for a float32 ``r >= 0`` (``1 + r`` rounded, then corrected by
    ``(r - ((1 + r) - 1)) / (1 + r)``, so small ``r`` keep their precision)."""
    x = _ONE + r
    b = _bits(x)
    e = ((b >> _SHIFT) & _EXP_BITS) - _BIAS
    m = _from_bits((b & _MANTISSA) | _ONE_BITS)  # x = m 2^e, m in [1, 2)
    big = m > _SQRT2
    m = _F(m * _HALF) if big else m  # m in [sqrt(1/2), sqrt(2))
    ef = _F(e + np.int32(big))
    f = m - _ONE
    z = f * f
    y = _L0
    y = y * f + _L1
    y = y * f + _L2
    y = y * f + _L3
    y = y * f + _L4
    y = y * f + _L5
    y = y * f + _L6
    y = y * f + _L7
    y = y * f + _L8
    y = y * f * z + _LN2_LO * ef - _HALF * z
    return (f + y + _LN2_HI * ef) + (r - (x - _ONE)) / x


@njit(inline="always", error_model="numpy")
def nonzero_or_zero32(x):
    """``1 - exp(-x)`` for a float32 ``x >= 0`` where that is at most 1/2, else ``-exp(-x)``.

    With ``x = theta log1p(mu / theta)``: an NB count's probability to be non-zero, or (negated,
    where it is the smaller one) to be zero; each to float32's relative precision, as ``1 - p``
    would not keep it for ``p`` near one.
    """
    v = -min(x, _X_MAX)
    n = _F(np.int32(v * _LOG2E - _HALF))  # round(v / log 2) for v <= 0
    r = (v - n * _LN2_HI) - n * _LN2_LO  # |r| <= log(2) / 2
    em1 = r + r * r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7)))))
    scale = _from_bits((np.int32(n) + _BIAS) << _SHIFT)  # 2^n
    nonzero = (_ONE - scale) - scale * em1  # -(2^n (1 + expm1(r)) - 1)
    return nonzero if nonzero <= _HALF else -(scale + scale * em1)
