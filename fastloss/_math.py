"""Scalar building blocks for the kernels: vectorizable exp and log, a vectorizable max, and
the loads and stores that let one kernel body serve float16, bfloat16, float32 and float64.

Numba here has no SVML, so ``math.exp`` in a loop stays a scalar libm call (0.6 G/s). The exp
and log below are polynomials over bit manipulations that LLVM turns into AVX-512 code
(9-14 G exp/s per core, <= 1.05 ulp); see ../shared/reference/kernel-notes.md section 1.

Storage types and compute types. Kernels receive float32/float64 arrays as they are, float16
arrays as a ``uint16`` view and bfloat16 arrays as an ``int16`` view (Numba cannot type either
half type). ``load`` widens one stored element to its compute type (float32 for the 16-bit
types) in registers, and ``store`` narrows a computed value to an output array's storage type,
so no array is ever upcast as a whole.

Every function here is generic over float32/float64 through ``overload``: a kernel calls
``exp_sum(v)`` and gets the float32 or the float64 polynomial from the type of ``v``. Constants
are typed per precision, because a Python float constant would promote float32 arithmetic to
float64 and halve the vector width.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._config import FASTMATH, VECTOR_WIDTH, jit

_INLINE = dict(fastmath=set(FASTMATH), jit_options=dict(fastmath=set(FASTMATH)))

# ---------------------------------------------------------------------------------------------
# LLVM intrinsics


def _llvm_float(numba_type):
    return ir.FloatType() if numba_type == types.float32 else ir.DoubleType()


@intrinsic
def rint(typingctx, x):
    """Round to nearest even; ``math.floor`` would cost a float -> int64 -> float round trip."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.rint", [args[0].type])
        return builder.call(fn, args)

    return x(x), codegen


@intrinsic
def fmax(typingctx, a, b):
    """max(a, b) that vectorizes as a reduction (builtin ``max`` does not: 30x slower).

    The call carries nnan: a NaN operand gives either operand, so callers never rely on it to
    propagate NaN (the exp-sum that follows does that).
    """
    if a != b or a not in (types.float32, types.float64):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fnty = ir.FunctionType(ty, [ty, ty])
        name = f"llvm.maxnum.{ty.intrinsic_name}"
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)
        return builder.call(fn, args, fastmath=("nnan", "nsz"))

    return a(a, b), codegen


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorize the calling function with VECTOR_WIDTH-bit registers.

    LLVM's tuning for many AVX-512 CPUs prefers 256-bit vectors; the exp polynomial is
    compute-bound and runs about 1.5x faster with 512-bit ones on this machine. Setting the
    function attribute affects only the function that calls this (every kernel and every
    helper with a hot loop does, first thing), never Numba's global target options.
    """

    def codegen(context, builder, signature, args):
        # llvmlite validates attribute names against a fixed list; this one is a string
        # attribute LLVM reads per function.
        set.add(builder.function.attributes, f'"prefer-vector-width"="{VECTOR_WIDTH}"')
        return context.get_dummy_value()

    return types.none(), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding, in scalar and vector code alike (llvm.fma)."""
    if not (a == b == c and a in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def radd(typingctx, acc, v):
    """acc + v for a reduction: the one operation that carries "reassoc".

    That flag is what lets LLVM vectorize a sum (one partial sum per lane). fastloss gives it
    to reduction steps only, never to whole functions: a reassociable expression may be
    rearranged differently in the serial and the parallel twin, or in a loop's vector body
    and its scalar remainder, and then round differently for the same element.
    """
    if not (acc == v and acc in (types.float32, types.float64)):
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1], flags=("reassoc", "nsz"))

    return acc(acc, v), codegen


def _exact_binop(opname):
    def impl(typingctx, a, b):
        if not (a == b and a in (types.float32, types.float64)):
            return None

        def codegen(context, builder, signature, args):
            # Carrying a flag ("nsz") keeps Numba's fastmath pass from adding "reassoc".
            return getattr(builder, opname)(args[0], args[1], flags=("nsz",))

        return a(a, b), codegen

    return intrinsic(impl)


add_exact = _exact_binop("fadd")
sub_exact = _exact_binop("fsub")
mul_exact = _exact_binop("fmul")
add_exact.__doc__ = "a + b that fastmath may not reassociate with its neighbours."
sub_exact.__doc__ = "a - b that fastmath may not reassociate with its neighbours."
mul_exact.__doc__ = "a * b that fastmath may not reassociate with its neighbours."


def log_prob(v, m, log_s):
    """(v - m) - log_s: the log-softmax of v in a row with max m and log-sum log_s.

    The subtraction order matters: with reassociation LLVM hoists m + log_s out of the loop,
    which rounds log_s away when |m| is large (1e8 in float32).
    """


@overload(log_prob, **_INLINE)
def _log_prob(v, m, log_s):
    if v == m == log_s and v in (types.float32, types.float64):
        return lambda v, m, log_s: sub_exact(v - m, log_s)
    return None


def _bitcast(src, dst):
    """Reinterpret bits. Integer sources of any width are first cut or extended to the
    destination's width (Numba widens int32 arithmetic to int64)."""

    def impl(typingctx, x):
        if isinstance(src, types.Integer):
            if not isinstance(x, types.Integer):
                return None
        elif x != src:
            return None

        def codegen(context, builder, signature, args):
            value = args[0]
            dst_llvm = context.get_value_type(dst)
            if isinstance(src, types.Integer):
                int_type = ir.IntType(dst.bitwidth)
                if x.bitwidth > dst.bitwidth:
                    value = builder.trunc(value, int_type)
                elif x.bitwidth < dst.bitwidth:
                    value = builder.sext(value, int_type)
            return builder.bitcast(value, dst_llvm)

        return dst(x), codegen

    return intrinsic(impl)


float32_from_bits = _bitcast(types.int32, types.float32)
bits_from_float32 = _bitcast(types.float32, types.int32)
float64_from_bits = _bitcast(types.int64, types.float64)
bits_from_float64 = _bitcast(types.float64, types.int64)


@intrinsic
def _half_to_float(typingctx, x):
    if x != types.uint16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def _float_to_half(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(x), codegen


@intrinsic
def _bfloat_to_float(typingctx, x):
    if x != types.int16:
        return None

    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(x), codegen


@intrinsic
def _float_to_bfloat(typingctx, x):
    """float32 -> bfloat16 bits, rounding to nearest even; NaN stays a quiet NaN."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        lsb = builder.and_(builder.lshr(bits, ir.Constant(i32, 16)), ir.Constant(i32, 1))
        rounded = builder.add(bits, builder.add(ir.Constant(i32, 0x7FFF), lsb))
        top = builder.trunc(builder.lshr(rounded, ir.Constant(i32, 16)), ir.IntType(16))
        is_nan = builder.fcmp_unordered("uno", args[0], args[0])
        return builder.select(is_nan, ir.Constant(ir.IntType(16), 0x7FC0), top)

    return types.int16(x), codegen


# ---------------------------------------------------------------------------------------------
# Loads, stores and typed constants

_STORAGE_TO_COMPUTE = {
    types.float32: types.float32,
    types.float64: types.float64,
    types.uint16: types.float32,  # float16 bits
    types.int16: types.float32,  # bfloat16 bits
}

_COMPUTE_NP = {types.float32: np.float32, types.float64: np.float64}


def load(v):
    """Widen one stored element to its compute type."""


def store(v, like):
    """Narrow compute value ``v`` to the storage type of array ``like``."""


def const(like, value):
    """``value`` in the compute type of array ``like`` (a typed constant for kernels)."""


@overload(load, **_INLINE)
def _load(v):
    if v == types.uint16:
        return lambda v: _half_to_float(v)
    if v == types.int16:
        return lambda v: _bfloat_to_float(v)
    if v in (types.float32, types.float64):
        return lambda v: v
    return None


@overload(store, **_INLINE)
def _store(v, like):
    dtype = like.dtype
    if dtype == types.uint16:
        return lambda v, like: _float_to_half(np.float32(v))
    if dtype == types.int16:
        return lambda v, like: _float_to_bfloat(np.float32(v))
    if dtype == types.float32:
        return lambda v, like: np.float32(v)
    if dtype == types.float64:
        return lambda v, like: np.float64(v)
    return None


@overload(const, **_INLINE)
def _const(like, value):
    cast = _COMPUTE_NP[_STORAGE_TO_COMPUTE[like.dtype]]
    return lambda like, value: cast(value)


# ---------------------------------------------------------------------------------------------
# exp

# float32: two-constant Cody-Waite reduction (Cephes) and a degree-6 near-minimax polynomial,
# <= 1.05 ulp over the normal range. Below LO the result would be subnormal and k + 127 <= 0.
_F32_LOG2E = np.float32(1.4426950408889634)
_F32_LN2_HI = np.float32(0.693359375)
_F32_LN2_LO = np.float32(-2.12194440e-4)
_F32_LO = np.float32(-87.33)
_F32_Q = tuple(
    np.float32(c)
    for c in (
        0.001392617611993558,
        0.008363173074513711,
        0.041666554662050534,
        0.1666657702559799,
        0.5,
    )
)
_F32_ONE = np.float32(1.0)
_F32_ZERO = np.float32(0.0)

# float64: fdlibm's ln2 split and a degree-12 polynomial, <= 0.95 ulp.
_F64_LOG2E = np.float64(1.4426950408889634)
_F64_LN2_HI = np.float64(6.93147180369123816490e-01)
_F64_LN2_LO = np.float64(1.90821492927058770002e-10)
_F64_LO = np.float64(-708.39)
_F64_Q = (
    2.0914679376583935e-09,
    2.510520637395701e-08,
    2.7557273661348637e-07,
    2.7557255425746435e-06,
    2.4801587325533363e-05,
    0.00019841269874800493,
    0.0013888888888883752,
    0.008333333333326141,
    0.04166666666666667,
    0.1666666666666667,
    0.5,
)


@jit
def _exp32_parts(x):
    """(p, k) with exp(x) = p * 2^k: Cody-Waite reduction, then the degree-6 polynomial."""
    k = rint(x * _F32_LOG2E)
    r = fma(-k, _F32_LN2_HI, x)
    r = fma(-k, _F32_LN2_LO, r)
    q = _F32_Q[0]
    for c in _F32_Q[1:]:
        q = fma(q, r, c)
    return fma(r * r, q, r + _F32_ONE), np.int32(k)


@jit
def _exp64_parts(x):
    k = rint(x * _F64_LOG2E)
    r = fma(-k, _F64_LN2_HI, x)
    r = fma(-k, _F64_LN2_LO, r)
    q = _F64_Q[0]
    for c in _F64_Q[1:]:
        q = fma(q, r, c)
    return fma(r * r, q, r + 1.0), np.int64(k)


@jit
def _exp32_core(x):
    # x >= _F32_LO (or NaN, which flows through as NaN), so 2^k is a normal float32.
    p, k = _exp32_parts(x)
    return p * float32_from_bits((k + np.int32(127)) << np.int32(23))


@jit
def _exp64_core(x):
    p, k = _exp64_parts(x)
    return p * float64_from_bits((k + np.int64(1023)) << np.int64(52))


def exp_sum(x):
    """exp(x) for x <= 0 inside sums: -inf gives a negligible ~1e-38 (not 0); NaN stays NaN."""


def exp_out(x):
    """exp(x) for x <= 0 whose result is stored: exact 0 below the normal range; NaN stays NaN."""


@overload(exp_sum, **_INLINE)
def _exp_sum(x):
    if x == types.float32:

        def impl(x):
            return _exp32_core(_F32_LO if x < _F32_LO else x)

        return impl
    if x == types.float64:

        def impl(x):
            return _exp64_core(_F64_LO if x < _F64_LO else x)

        return impl
    return None


@overload(exp_out, **_INLINE)
def _exp_out(x):
    if x == types.float32:

        def impl(x):
            y = _exp32_core(_F32_LO if x < _F32_LO else x)
            return _F32_ZERO if x < _F32_LO else y

        return impl
    if x == types.float64:

        def impl(x):
            y = _exp64_core(_F64_LO if x < _F64_LO else x)
            return 0.0 if x < _F64_LO else y

        return impl
    return None


# Gradual underflow: 2^k applied as 2^(k>>1) * 2^(k - (k>>1)), both factors normal, so results
# down to the smallest subnormal are right (sigmoid and logsigmoid return subnormals as torch).
_F32_LO_FINE = np.float32(-103.972)  # exp below this is under half the smallest subnormal
_F64_LO_FINE = np.float64(-745.1)


@jit
def _exp32_fine(x):
    p, k = _exp32_parts(x)
    half = k >> np.int32(1)
    low = float32_from_bits((half + np.int32(127)) << np.int32(23))
    high = float32_from_bits((k - half + np.int32(127)) << np.int32(23))
    return (p * low) * high


@jit
def _exp64_fine(x):
    p, k = _exp64_parts(x)
    half = k >> np.int64(1)
    low = float64_from_bits((half + np.int64(1023)) << np.int64(52))
    high = float64_from_bits((k - half + np.int64(1023)) << np.int64(52))
    return (p * low) * high


def exp_fine(x):
    """exp(x) for x <= 0 with gradual underflow to subnormals; -inf gives 0, NaN stays NaN."""


@overload(exp_fine, **_INLINE)
def _exp_fine(x):
    if x == types.float32:

        def impl(x):
            y = _exp32_fine(_F32_LO_FINE if x < _F32_LO_FINE else x)
            return _F32_ZERO if x < _F32_LO_FINE else y

        return impl
    if x == types.float64:

        def impl(x):
            y = _exp64_fine(_F64_LO_FINE if x < _F64_LO_FINE else x)
            return 0.0 if x < _F64_LO_FINE else y

        return impl
    return None


def exp_overflows(x):
    """True where exp(-x) overflows the type of x: torch's sigmoid is exactly 0 there."""


@overload(exp_overflows, **_INLINE)
def _exp_overflows(x):
    if x == types.float32:
        limit32 = np.float32(-88.72284)  # -log(FLT_MAX)
        return lambda x: x < limit32
    if x == types.float64:
        return lambda x: x < -709.782712893384  # -log(DBL_MAX)
    return None


# ---------------------------------------------------------------------------------------------
# log

# log(s) for finite s > 0: s = 2^e * f with f in [sqrt(1/2), sqrt(2)), and
# log f = 2 atanh(t) = 2 (t + t^3/3 + t^5/5 + ...), t = (f - 1) / (f + 1), |t| <= 0.1716.
# float32 needs terms to t^11, float64 to t^23 (t^2 <= 0.0295).
_F32_LN2 = np.float32(0.6931471805599453)
_F32_SQRT_HALF_BITS = np.int32(0x3F3504F3)  # bits of sqrt(1/2)
_F32_TWO = np.float32(2.0)
_F32_ATANH = tuple(np.float32(1.0 / (2 * i + 1)) for i in range(5, 0, -1))
_F64_LN2 = np.float64(0.6931471805599453)
_F64_SQRT_HALF_BITS = np.int64(0x3FE6A09E667F3BCD)
_F64_ATANH = tuple(1.0 / (2 * i + 1) for i in range(11, 0, -1))


def log_pos(s):
    """log(s) for finite s > 0 in the normal range; vectorizes (libm log does not)."""


@overload(log_pos, **_INLINE)
def _log_pos(s):
    if s == types.float32:

        def impl(s):
            bits = bits_from_float32(s)
            e = (bits - _F32_SQRT_HALF_BITS) >> np.int32(23)
            f = float32_from_bits(bits - (e << np.int32(23)))
            t = (f - _F32_ONE) / (f + _F32_ONE)
            t2 = t * t
            q = _F32_ATANH[0]
            for c in _F32_ATANH[1:]:
                q = fma(q, t2, c)
            return np.float32(e) * _F32_LN2 + _F32_TWO * t * (_F32_ONE + t2 * q)

        return impl
    if s == types.float64:

        def impl(s):
            bits = bits_from_float64(s)
            e = (bits - _F64_SQRT_HALF_BITS) >> np.int64(52)
            f = float64_from_bits(bits - (e << np.int64(52)))
            t = (f - 1.0) / (f + 1.0)
            t2 = t * t
            q = _F64_ATANH[0]
            for c in _F64_ATANH[1:]:
                q = fma(q, t2, c)
            return np.float64(e) * _F64_LN2 + 2.0 * t * (1.0 + t2 * q)

        return impl
    return None


def log1p_unit(e):
    """log(1 + e) for e in [0, 1], accurate for tiny e (used by logsigmoid and BCE)."""


@overload(log1p_unit, **_INLINE)
def _log1p_unit(e):
    # 2 atanh(t) with t = e / (2 + e) in [0, 1/3]: float32 needs t^17, float64 t^35.
    if e == types.float32:
        coeffs = tuple(np.float32(1.0 / (2 * i + 1)) for i in range(8, 0, -1))

        def impl(e):
            t = e / (_F32_TWO + e)
            t2 = t * t
            q = coeffs[0]
            for c in coeffs[1:]:
                q = fma(q, t2, c)
            return _F32_TWO * t * (_F32_ONE + t2 * q)

        return impl
    if e == types.float64:
        coeffs = tuple(1.0 / (2 * i + 1) for i in range(17, 0, -1))

        def impl(e):
            t = e / (2.0 + e)
            t2 = t * t
            q = coeffs[0]
            for c in coeffs[1:]:
                q = fma(q, t2, c)
            return 2.0 * t * (1.0 + t2 * q)

        return impl
    return None
