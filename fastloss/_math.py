"""Scalar building blocks for the kernels: vectorizable exp and log, a vectorizable max, and
the loads and stores that let one kernel body serve float16, bfloat16, float32 and float64.

Numba here has no SVML, so ``math.exp`` in a loop stays a scalar libm call (0.6 G/s). The exp
and log below are polynomials over bit manipulations that LLVM turns into AVX-512 code
(9-14 G exp/s per core on Zen 5, about 3 on the 2-core Xeon of the benchmarks; <= 1 ulp);
see ../shared/reference/kernel-notes.md section 1.

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

from ._config import FASTMATH, VECTOR_WIDTH, inline, jit

_INLINE = dict(fastmath=set(FASTMATH), jit_options=dict(fastmath=set(FASTMATH)))

# Block length of the kernels' loops over a row: B = 256-512 keeps the block in L1 while the
# hardware prefetcher streams the next one; 1024+ loses 15-35 % at large C (kernel-notes.md
# section 2).
BLOCK = 512

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
def choose(typingctx, cond, a, b):
    """``a if cond else b`` as one select, both operands evaluated.

    Numba lowers a conditional expression to branches; LLVM flattens them again only when
    neither arm loads memory or converts, and otherwise leaves the whole loop scalar.
    """
    if not (a == b and isinstance(cond, types.Boolean)):
        return None

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return a(cond, a, b), codegen


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


def compute_empty(like, rows, n):
    """An uninitialized (rows, n) array in the compute type of array ``like``."""


@overload(compute_empty, **_INLINE)
def _compute_empty(like, rows, n):
    compute = _COMPUTE_NP[_STORAGE_TO_COMPUTE[like.dtype]]
    return lambda like, rows, n: np.empty((rows, n), compute)


# ---------------------------------------------------------------------------------------------
# Sums in an order the code fixes
#
# No operation in fastloss carries "reassoc", which would let LLVM vectorize a plain running
# sum by regrouping it: how it regroups depends on the function the sum ends up in, and a
# helper's code is optimized once in its own library and again in every caller it is linked
# into. A kernel compiled in this process and the same kernel loaded from Numba's cache (or
# its serial and parallel twins) then ran different copies and rounded differently. Instead,
# a sum keeps LANE_BITS / bits explicit running sums (64 in float32, 32 in float64: four
# 512-bit registers), sum l taking terms l, l + L, l + 2L, ..., combined by a fixed tree:
# the same vector code LLVM would have made, with every bit fixed by the source.

LANE_BITS = 2048


@intrinsic
def lanes(typingctx, zero):
    """A stack array of zeroed running sums of ``zero``'s type (float32 or float64): LANE_BITS
    / bits of them. Its storage is the calling function's stack frame, so it must not
    outlive the call."""
    if zero not in (types.float32, types.float64):
        return None
    compute = zero
    count = LANE_BITS // compute.bitwidth
    array_type = types.Array(compute, 1, "C")

    def codegen(context, builder, signature, args):
        element = context.get_data_type(compute)
        itemsize = context.get_abi_sizeof(element)
        data = cgutils.alloca_once(
            builder, element, size=context.get_constant(types.intp, count)
        )
        cgutils.memset(builder, data, context.get_constant(types.intp, count * itemsize), 0)
        array = context.make_array(array_type)(context, builder)
        context.populate_array(
            array,
            data=data,
            shape=[context.get_constant(types.intp, count)],
            strides=[context.get_constant(types.intp, itemsize)],
            itemsize=context.get_constant(types.intp, itemsize),
            meminfo=None,
        )
        return array._getvalue()

    return array_type(zero), codegen


@intrinsic
def lane_total(typingctx, acc):
    """The sum of the running sums of ``lanes``, by a fixed tree: the upper half added to the
    lower half, again and again (one vector shuffle and add per halving)."""
    if not (isinstance(acc, types.Array) and acc.dtype in (types.float32, types.float64)):
        return None
    count = LANE_BITS // acc.dtype.bitwidth

    def codegen(context, builder, signature, args):
        data = context.make_array(acc)(context, builder, args[0]).data
        vector = ir.VectorType(context.get_data_type(acc.dtype), count)
        v = builder.load(builder.bitcast(data, vector.as_pointer()), align=acc.dtype.bitwidth // 8)
        width = count
        while width > 1:
            width //= 2
            mask_type = ir.VectorType(ir.IntType(32), width)
            halves = [
                builder.shuffle_vector(v, v, ir.Constant(mask_type, list(range(lo, lo + width))))
                for lo in (0, width)
            ]
            v = builder.fadd(halves[0], halves[1], flags=("nsz",))
        return builder.extract_element(v, ir.Constant(ir.IntType(32), 0))

    return acc.dtype(acc), codegen


def lane_sum_of(term):
    """``sum(args, n, zero)``: the sum of ``term(args, j)`` for j in [0, n), in the type of
    ``zero`` (0 in a kernel's compute type), in the order ``lanes`` describes; inlined into
    its callers by Numba. (A float, not an array to take the type from: an array argument
    of a Numba-inlined function costs reference counting, 30 ns a call on short rows.)

    ``term`` is a ``jit`` function returning that type, which LLVM inlines into the loop.
    Inlined by Numba instead, it would bind the arrays of ``args`` inside the loop, and the
    reference-count calls that leave there keep LLVM from vectorizing it (3-10x slower).
    ``j`` is unsigned: an array indexed by it needs no check for a negative index, which in
    the predicated last group would turn contiguous loads into gathers.
    """

    @inline
    def lane_sum(args, n, zero):
        acc = lanes(zero)
        count = acc.shape[0]
        full = n - n % count
        for j0 in range(0, full, count):
            # count is a constant: the loop becomes whole-register operations, and the
            # running sums stay in registers across the outer loop.
            for lane in range(count):
                acc[lane] += term(args, np.uint64(j0 + lane))
        if full < n:
            # The last, partial group: every lane, the missing terms masked off (as 0, which
            # adds nothing), so that it vectorizes with masked loads. Summed one term at a
            # time it would be scalar, and lane_total's whole-register loads would then
            # wait on the single-lane stores.
            for lane in range(count):
                value = zero
                if full + lane < n:
                    value = term(args, np.uint64(full + lane))
                acc[lane] += value
        return lane_total(acc)

    return lane_sum


def lane_pair_sum_of(term):
    """As lane_sum_of for a ``term`` returning two values: two sums from one pass."""

    @inline
    def lane_pair_sum(args, n, zero):
        acc_a, acc_b = lanes(zero), lanes(zero)
        count = acc_a.shape[0]
        full = n - n % count
        for j0 in range(0, full, count):
            for lane in range(count):
                a, b = term(args, np.uint64(j0 + lane))
                acc_a[lane] += a
                acc_b[lane] += b
        if full < n:
            for lane in range(count):
                a, b = zero, zero
                if full + lane < n:
                    a, b = term(args, np.uint64(full + lane))
                acc_a[lane] += a
                acc_b[lane] += b
        return lane_total(acc_a), lane_total(acc_b)

    return lane_pair_sum


@jit
def _loaded_term(args, j):
    (values,) = args
    return load(values[j])


# sum(values) of a 1-d array as loaded_sum((values,), n, zero)
loaded_sum = lane_sum_of(_loaded_term)


# ---------------------------------------------------------------------------------------------
# exp

# float32: two-constant Cody-Waite reduction (Cephes) and a degree-6 near-minimax polynomial,
# <= 1.3 ulp in this form (_exp32_parts, used by exp_fine); the Horner form below is <= 1 ulp.
# Below LO the result would be subnormal and k + 127 <= 0.
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


# The exp of the kernels' sums and outputs (x >= LO): k = rint(x log2 e) by the round-to-
# nearest of adding a shifter (1.5 * 2^23, plus the exponent bias, whose low mantissa bits
# then hold k + 127 and shift straight into 2^k's exponent field), and the polynomial in
# Horner form. Against rint, a float -> int conversion and the form 1 + r + r^2 q(r), that
# is four fewer operations per element on the one vector port that runs them all, and
# <= 1 ulp instead of <= 1.3 (tests/test_softmax_family.py checks the bound in both types).
_F32_SHIFTER = np.float32(1.5 * 2**23 + 127)
_F32_HORNER = _F32_Q + (_F32_ONE, _F32_ONE)
_F64_SHIFTER = np.float64(1.5 * 2**52 + 1023)
_F64_HORNER = _F64_Q + (1.0, 1.0)
_F32_NEG_LN2 = (-_F32_LN2_HI, -_F32_LN2_LO)
_F64_NEG_LN2 = (-_F64_LN2_HI, -_F64_LN2_LO)


@jit
def _exp32_core(x):
    # x >= _F32_LO (or NaN, which flows through as NaN), so 2^k is a normal float32.
    shifted = fma(x, _F32_LOG2E, _F32_SHIFTER)
    k = shifted - _F32_SHIFTER
    r = fma(k, _F32_NEG_LN2[0], x)
    r = fma(k, _F32_NEG_LN2[1], r)
    p = _F32_HORNER[0]
    for c in _F32_HORNER[1:]:
        p = fma(p, r, c)
    return p * float32_from_bits(bits_from_float32(shifted) << np.int32(23))


@jit
def _exp64_core(x):
    shifted = fma(x, _F64_LOG2E, _F64_SHIFTER)
    k = shifted - _F64_SHIFTER
    r = fma(k, _F64_NEG_LN2[0], x)
    r = fma(k, _F64_NEG_LN2[1], r)
    p = _F64_HORNER[0]
    for c in _F64_HORNER[1:]:
        p = fma(p, r, c)
    return p * float64_from_bits(bits_from_float64(shifted) << np.int64(52))


def exp_sum(x):
    """exp(x) for x <= 0 inside sums: -inf gives a negligible ~1e-38 (not 0); NaN stays NaN."""


def exp_out(x):
    """exp(x) for x <= 0 whose result is stored: exact 0 below the normal range; NaN stays NaN."""


def exp_normal(x):
    """exp(x) for x whose exp is a normal number (x >= -87.33 in float32, -708.39 in float64)
    or NaN: exp_sum and exp_out without their clamp, for callers that know the range."""


@overload(exp_normal, **_INLINE)
def _exp_normal(x):
    if x == types.float32:
        return lambda x: _exp32_core(x)
    if x == types.float64:
        return lambda x: _exp64_core(x)
    return None


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


# ---------------------------------------------------------------------------------------------
# exp and log on their whole domains (the elementwise losses see arbitrary values)

_F32_HI_ANY = np.float32(89.0)  # exp above log(FLT_MAX) = 88.72 overflows to inf by itself
_F64_HI_ANY = np.float64(710.0)


def exp_any(x):
    """exp(x) for any x: subnormal results down to the smallest, +inf above the range, NaN
    stays NaN (kl_div's log_target)."""


@overload(exp_any, **_INLINE)
def _exp_any(x):
    # The split 2^k = 2^(k>>1) * 2^(k - (k>>1)) of exp_fine also reaches the top of the range:
    # p * 2^k overflows to inf exactly where exp(x) does. Clamping x (NaN passes both
    # comparisons untouched) keeps k a small integer.
    if x == types.float32:

        def impl(x):
            xc = _F32_LO_FINE if x < _F32_LO_FINE else x
            xc = _F32_HI_ANY if xc > _F32_HI_ANY else xc
            y = _exp32_fine(xc)
            return _F32_ZERO if x < _F32_LO_FINE else y

        return impl
    if x == types.float64:

        def impl(x):
            xc = _F64_LO_FINE if x < _F64_LO_FINE else x
            xc = _F64_HI_ANY if xc > _F64_HI_ANY else xc
            y = _exp64_fine(xc)
            return 0.0 if x < _F64_LO_FINE else y

        return impl
    return None


_F32_TINY = np.float32(2.0**-126)  # smallest normal float32
_F32_MAX = np.float32(np.finfo(np.float32).max)
_F32_SCALE = np.float32(2.0**24)  # lifts every float32 subnormal into the normal range
_F32_SCALE_LOG = np.float32(24 * np.log(2.0))
_F64_TINY = np.float64(2.0**-1022)
_F64_MAX = np.float64(np.finfo(np.float64).max)
_F64_SCALE = np.float64(2.0**54)
_F64_SCALE_LOG = np.float64(54 * np.log(2.0))


def log_any(x):
    """log(x) for any x, as libm: subnormals exact, log(0) = -inf, log(inf) = inf, NaN for
    x < 0 or NaN. Branch-free, so it vectorizes."""


@overload(log_any, **_INLINE)
def _log_any(x):
    def make(tiny, huge, scale, scale_log, one, zero, inf, nan):
        def impl(x):
            subnormal = x < tiny
            lifted = x * scale if subnormal else x
            # Out-of-domain values are swapped for 1 so the bit tricks of log_pos stay sane;
            # the selects below give their results.
            regular = lifted >= tiny and lifted <= huge
            r = log_pos(lifted if regular else one) - (scale_log if subnormal else zero)
            r = -inf if x == zero else r
            r = inf if x == inf else r
            return r if x >= zero else nan

        return impl

    if x == types.float32:
        return make(
            _F32_TINY, _F32_MAX, _F32_SCALE, _F32_SCALE_LOG, _F32_ONE, _F32_ZERO,
            np.float32(np.inf), np.float32(np.nan),
        )
    if x == types.float64:
        return make(_F64_TINY, _F64_MAX, _F64_SCALE, _F64_SCALE_LOG, 1.0, 0.0, np.inf, np.nan)
    return None


def log1m_unit(x):
    """log(1 - x) = log1p(-x) for x in [0, 1]; exact near 0 and near 1; log1m_unit(1) = -inf."""


@overload(log1m_unit, **_INLINE)
def _log1m_unit(x):
    # x <= 1/2: log1p(-x) by the series of log1p_unit (|t| = x / (2 - x) <= 1/3 there);
    # x > 1/2: 1 - x is exact (Sterbenz), and log_any takes it down to 0.
    def make(half, one):
        def impl(x):
            small = log1p_unit(-(x if x <= half else half))
            large = log_any(one - (x if x > half else half))
            return small if x <= half else large

        return impl

    if x == types.float32:
        return make(np.float32(0.5), _F32_ONE)
    if x == types.float64:
        return make(0.5, 1.0)
    return None


# ---------------------------------------------------------------------------------------------
# tanh and logit softcapping


# Taylor coefficients of tanh(u) / u in powers of u^2, 2^2n (2^2n - 1) B_2n / (2n)! for
# n = 1..15 (B the Bernoulli numbers; tests/test_ce_extras.py derives them again).
TANH_SERIES = (
    1.0, -0.3333333333333333, 0.13333333333333333, -0.05396825396825397,
    0.021869488536155203, -0.008863235529902197, 0.003592128036572481,
    -0.0014558343870513183, 0.000590027440945586, -0.00023912911424355248,
    9.691537956929451e-05, -3.927832388331683e-05, 1.5918905069328964e-05,
    -6.451689215655431e-06, 2.6147711512907546e-06,
)


# float64, |u| < 0.4: the odd series (each term ~0.065 of the last); above, (1 - e) / (1 + e)
# with e = exp(-2|u|) <= 0.45, where 1 - e has no cancellation.
_TANH_SMALL = 0.4
_TANH64 = tuple(reversed(TANH_SERIES))

# float32: one rational function, tanh(a) = a P(a^2) / Q(a^2) on [0, 9.1] and at most 1, then 1
# (float32's tanh from 9.02 on). Evaluating the series and the exp branch both, then selecting,
# cost twice as much (the softcap pass ran at 1.2 G/s per core, now 2.2). Relative minimax fit
# (linearized least squares with Lawson weights, float64) of degrees 6 / 3 in a^2: fit error
# 8e-9; evaluated in float32, <= 5 ulp (3e-7 absolute, near 1) and 0.43 ulp on average.
_TANH32_SAT = np.float32(9.1)
_TANH32_P = tuple(np.float32(c) for c in (
    -8.221200819722926e-14, 5.1770223524760794e-11, -2.0022120850171632e-08,
    1.1105527846666519e-05, 0.00309936236590147, 0.13079915940761566, 1.0,
))
_TANH32_Q = tuple(np.float32(c) for c in (
    0.0002539415145292878, 0.024476943537592888, 0.4641324281692505, 1.0,
))


def tanh_any(u):
    """tanh(u) for any u (+-1 at +-inf, NaN stays NaN); vectorizes. float64 within 2 ulp,
    float32 within 5 ulp (a rational function: no exp, one division)."""


@overload(tanh_any, **_INLINE)
def _tanh_any(u):
    if u == types.float32:
        one = _F32_ONE

        def impl32(u):
            a = abs(u)
            # NaN fails both comparisons and flows through the polynomials.
            a = _TANH32_SAT if a > _TANH32_SAT else a
            s = a * a
            p = _TANH32_P[0]
            for c in _TANH32_P[1:]:
                p = fma(p, s, c)
            q = _TANH32_Q[0]
            for c in _TANH32_Q[1:]:
                q = fma(q, s, c)
            r = a * p / q
            # The fit passes 1 by an ulp from 8.24 on (and at the clamp): |tanh| <= 1 keeps
            # capped logits <= the cap, and their slopes 1 - tanh^2 >= 0.
            r = one if r > one else r
            return -r if u < 0 else r

        return impl32
    if u == types.float64:

        def impl(u):
            a = abs(u)
            a2 = a * a
            q = _TANH64[0]
            for c in _TANH64[1:]:
                q = fma(q, a2, c)
            series = a * q
            e = exp_fine(-(a + a))
            large = (1.0 - e) / (1.0 + e)
            r = series if a < _TANH_SMALL else large
            return -r if u < 0 else r

        return impl
    return None


def _no_cap(softcap) -> bool:
    return softcap is None or isinstance(softcap, (types.NoneType, types.Omitted))


def capped(v, softcap):
    """softcap * tanh(v / softcap) (Gemma 2's logit softcapping), or v itself when softcap is
    None: the choice is made when the kernel compiles, so uncapped kernels carry no cost."""


@overload(capped, **_INLINE)
def _capped(v, softcap):
    if _no_cap(softcap):
        return lambda v, softcap: v
    cast = _COMPUTE_NP.get(v)

    def impl(v, softcap):
        # x * (1/c) rather than x / c: a division per element costs more than the rounding
        # difference (<= 1 ulp of x / c) matters.
        c = cast(softcap)
        return c * tanh_any(v * (cast(1.0) / c))

    return impl


# float32 logits within the cap (|x| <= c, so |x / c| <= 1): tanh(u) = u P(u^2) with P of
# degree 6: no division, no clamp, about half the operations of tanh_any. Relative minimax fit
# (Lawson weights, float64) on u in [0, 1]: fit error 5e-8; evaluated in float32 as
# x P((x / c)^2) it is within 2.3 ulp of c tanh(x / c), closer than capped (5.1 ulp), and never
# beyond c (tests/test_ce_extras.py). Highest power first, for Horner.
_TANH32_WITHIN_P = tuple(np.float32(c) for c in reversed((
    0.9999999502194369, -0.33332839095350963, 0.13325203669049593, -0.0534570179787019,
    0.020289965347210406, -0.006203370527706335, 0.0010410210719711823,
)))


def capped_within(v, softcap):
    """capped(v, softcap) for |v| <= softcap, cheaper in float32; in float64, capped itself.
    Outside that bound it is not tanh: callers go through cap_into, which checks."""


@overload(capped_within, **_INLINE)
def _capped_within(v, softcap):
    if v == types.float32:

        def impl32(v, softcap):
            u = v * (_F32_ONE / np.float32(softcap))
            s = u * u
            p = _TANH32_WITHIN_P[0]
            for c in _TANH32_WITHIN_P[1:]:
                p = fma(p, s, c)
            return v * p

        return impl32
    if v == types.float64:
        return lambda v, softcap: capped(v, softcap)
    return None


def cheap_within_cap(like):
    """Whether capped_within is cheaper than capped for arrays like ``like`` (compute type):
    True in float32, False in float64 (where they are the same); a constant LLVM folds."""


@overload(cheap_within_cap, **_INLINE)
def _cheap_within_cap(like):
    cheap = like.dtype == types.float32
    return lambda like: cheap


@jit
def _cap_within_into(src, dst, softcap):
    """dst[j] = capped_within(src[j]); -> the largest (src[j] / softcap)^2 (NaN skipped)."""
    wide_vectors()
    inverse = const(dst, 1.0) / const(dst, softcap)
    largest = const(dst, 0.0)  # capped_within computes (x / c)^2 too: one more max
    for j in range(src.shape[0]):
        u = load(src[j])
        dst[j] = capped_within(u, softcap)
        w = u * inverse
        largest = fmax(largest, w * w)  # a NaN is skipped: capped_within keeps it NaN
    return largest


@jit
def _cap_each_into(src, dst, softcap):
    wide_vectors()
    for j in range(src.shape[0]):
        dst[j] = capped(load(src[j]), softcap)


@jit
def cap_into(src, dst, softcap):
    """dst[j] = capped(src[j]) over 1-d views of one length (dst in the compute type; callers
    pass segments of BLOCK, so every kernel caps a row's logits to the same bits).

    In float32 every element takes capped_within when all of them lie within the cap, as
    logits mostly do (one pass: the check rides along), and capped otherwise (a second pass).
    """
    if cheap_within_cap(dst) and _cap_within_into(src, dst, softcap) <= const(dst, 1.0):
        return
    _cap_each_into(src, dst, softcap)


@jit
def cap_tile_into(x, o, p0, n, dst, softcap):
    """cap_into for positions p0 .. p0+n of slab o of an (O, C, I) array into dst (C, n),
    the choice made once for the whole tile."""
    channels = x.shape[1]
    if cheap_within_cap(dst):
        largest = const(dst, 0.0)
        for c in range(channels):
            largest = fmax(largest, _cap_within_into(x[o, c, p0 : p0 + n], dst[c], softcap))
        if largest <= const(dst, 1.0):
            return
    for c in range(channels):
        _cap_each_into(x[o, c, p0 : p0 + n], dst[c], softcap)


def cap_slope(v, softcap):
    """d capped(x) / dx at the capped value v = c tanh(x / c): 1 - (v/c)^2; 1 when softcap is
    None."""


@overload(cap_slope, **_INLINE)
def _cap_slope(v, softcap):
    cast = _COMPUTE_NP.get(v)
    if _no_cap(softcap):
        return lambda v, softcap: cast(1.0)

    def impl(v, softcap):
        one = cast(1.0)
        u = v * (one / cast(softcap))
        return fma(-u, u, one)  # rounded once: no cancellation as |u| nears 1

    return impl


def capped_row(x, r, softcap):
    """(source, row) to read row r of x from: (x, r) itself when softcap is None, else a
    (1, C) copy of the row, capped once per element in the compute type, and row 0.

    Every later pass over the row (max, sums, gradient) then reads the copy from cache
    instead of evaluating tanh again; the gradient may overwrite x (in-place use).
    """


@overload(capped_row, **_INLINE)
def _capped_row(x, r, softcap):
    if _no_cap(softcap):
        return lambda x, r, softcap: (x, r)
    compute = _COMPUTE_NP[_STORAGE_TO_COMPUTE[x.dtype]]

    def impl(x, r, softcap):
        row = x[r]
        classes = row.shape[0]
        buffer = np.empty((1, classes), compute)
        copy = buffer[0]
        for b0 in range(0, classes, BLOCK):
            b1 = min(b0 + BLOCK, classes)
            cap_into(row[b0:b1], copy[b0:b1], softcap)
        return buffer, 0

    return impl


def capped_tile(x, o, p0, n, softcap):
    """capped_row for positions p0 .. p0+n of slab o of an (O, C, I) array: (x, o, p0), or a
    (1, C, n) capped copy with (0, 0)."""


@overload(capped_tile, **_INLINE)
def _capped_tile(x, o, p0, n, softcap):
    if _no_cap(softcap):
        return lambda x, o, p0, n, softcap: (x, o, p0)
    compute = _COMPUTE_NP[_STORAGE_TO_COMPUTE[x.dtype]]

    def impl(x, o, p0, n, softcap):
        channels = x.shape[1]
        buffer = np.empty((1, channels, n), compute)
        cap_tile_into(x, o, p0, n, buffer[0], softcap)
        return buffer, 0, 0

    return impl
