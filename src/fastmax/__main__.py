"""``python -m fastmax``: check fastmax against SciPy here, then time it.

The speed table gives, per op, dtype and shape class: fastmax's time, the
ratio to the copy floor measured in the same run (1.0 is the memory-bandwidth
limit), GB/s, and speed-ups over SciPy, NumPy and PyTorch (when installed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Op:
    """One timed operation.  ``inputs(x)`` builds its arguments from the data;
    ``fastmax_out(args, axis, out)`` is the call timed against the floor (with
    ``out=``, or in place); the others are allocating calls of each library."""

    name: str
    floor: str  # "copy": reads and writes one array; "read": only reads it
    floor_factor: float  # arrays moved relative to the floor (the VJP reads two: 1.5)
    inputs: Callable
    fastmax: Callable
    fastmax_out: Callable | None
    scipy: Callable | None
    numpy: Callable | None
    torch: Callable | None

    def out_array(self, x: np.ndarray, args, axis: int) -> np.ndarray:
        """The ``out=`` array of :attr:`fastmax_out`: ``x``'s shape, or the
        reduction's (logsumexp)."""
        return np.empty_like(x if self.floor == "copy" else self.fastmax(*args, axis=axis))


def _numpy_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _numpy_log_softmax(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _numpy_logsumexp(x, axis):
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def _numpy_hardmax(x, axis):
    out = np.zeros_like(x)
    np.put_along_axis(out, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)
    return out


def _vjp_inputs(x, axis):
    import fastmax

    y = fastmax.softmax(x, axis=axis)
    return y, np.random.default_rng(1).standard_normal(x.shape).astype(x.dtype)


def _xent_inputs(x, axis):
    n_classes = x.shape[axis]
    batch = x.shape[: axis % x.ndim] + x.shape[axis % x.ndim + 1 :]
    return x, np.random.default_rng(2).integers(0, n_classes, size=batch)


def _torch_class_dim_1(t, axis):
    """PyTorch wants classes on dim 1: (N, C) for the 2-D benchmark shapes."""
    return t if axis in (-1, 1) else t.T


def _torch_xent_fused(torch):
    def run(x, t, axis):
        x = x.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(_torch_class_dim_1(x, axis), t).backward()
        return x.grad

    return run


def operations(torch=None) -> dict[str, Op]:
    import scipy.special as sp

    import fastmax

    tf = None if torch is None else torch.nn.functional
    single = lambda x, axis: (x,)  # noqa: E731

    def torch_op(fn):
        return None if torch is None else fn

    return {
        "softmax": Op(
            "softmax",
            "copy",
            1.0,
            single,
            fastmax.softmax,
            lambda a, axis, out: fastmax.softmax(*a, axis=axis, out=out),
            sp.softmax,
            _numpy_softmax,
            torch_op(lambda t, axis: tf.softmax(t, dim=axis)),
        ),
        "log_softmax": Op(
            "log_softmax",
            "copy",
            1.0,
            single,
            fastmax.log_softmax,
            lambda a, axis, out: fastmax.log_softmax(*a, axis=axis, out=out),
            sp.log_softmax,
            _numpy_log_softmax,
            torch_op(lambda t, axis: tf.log_softmax(t, dim=axis)),
        ),
        "logsumexp": Op(
            "logsumexp",
            "read",
            1.0,
            single,
            fastmax.logsumexp,
            lambda a, axis, out: fastmax.logsumexp(*a, axis=axis, out=out),
            sp.logsumexp,
            _numpy_logsumexp,
            torch_op(lambda t, axis: torch.logsumexp(t, dim=axis)),
        ),
        "hardmax": Op(
            "hardmax",
            "copy",
            1.0,
            single,
            fastmax.hardmax,
            lambda a, axis, out: fastmax.hardmax(a[0], axis=axis, out=a[0]),  # in place
            None,
            _numpy_hardmax,
            torch_op(
                lambda t, axis: torch.zeros_like(t).scatter_(
                    axis, t.argmax(dim=axis, keepdim=True), 1.0
                )
            ),
        ),
        "softmax_vjp": Op(
            "softmax_vjp",
            "copy",
            1.5,
            _vjp_inputs,
            fastmax.softmax_vjp,
            lambda a, axis, out: fastmax.softmax_vjp(*a, axis=axis, out=out),
            None,
            lambda y, g, axis: y * (g - np.sum(y * g, axis=axis, keepdims=True)),
            torch_op(lambda y, g, axis: torch._softmax_backward_data(g, y, axis, y.dtype)),
        ),
        "xent": Op(
            "xent",
            "read",
            1.0,
            _xent_inputs,
            lambda x, t, axis: fastmax.softmax_cross_entropy(x, t, axis=axis),
            None,
            None,
            None,
            torch_op(lambda x, t, axis: tf.cross_entropy(_torch_class_dim_1(x, axis), t)),
        ),
        "xent_fused": Op(
            "xent_fused",
            "copy",
            1.0,
            _xent_inputs,
            lambda x, t, axis: fastmax.softmax_cross_entropy_with_grad(x, t, axis=axis),
            lambda a, axis, out: fastmax.softmax_cross_entropy_with_grad(
                a[0], a[1], axis=axis, out=a[0]
            ),  # in place over the logits
            None,
            None,
            torch_op(_torch_xent_fused(torch)) if torch is not None else None,
        ),
    }


def _import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def self_check(ops: dict[str, Op]) -> list[str]:
    """Compare every op with SciPy on random and edge-value inputs; return failures."""
    rng = np.random.default_rng(0)
    failures = []
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        for shape, axis in (
            ((17, 33), -1),
            ((5, 3000), 0),
            ((2, 3, 70_000), (0, 2)),
            ((200_000,), -1),
        ):
            x = (rng.standard_normal(shape) * 5).astype(dtype)
            x.flat[3] = np.nan
            x.flat[x.size // 2] = -np.inf
            for op in ops.values():
                if op.scipy is None:
                    continue
                got = np.asarray(op.fastmax(x, axis=axis), np.float64)
                with np.errstate(all="ignore"):
                    want = np.asarray(op.scipy(x.astype(np.float64), axis=axis), np.float64)
                if not np.allclose(got, want, rtol=rtol, atol=rtol * 50, equal_nan=True):
                    failures.append(f"{op.name} {np.dtype(dtype).name} shape={shape} axis={axis}")
    return failures


@dataclass
class Row:
    op: str
    dtype: str
    shape_class: str
    shape: list
    axis: int
    fastmax_ms: float  # with out= when the op has a full-size output
    fastmax_alloc_ms: float  # allocating its output, as the other libraries do
    floor_ms: float
    floor_ratio: float
    gb_per_s: float
    scipy_ms: float | None
    numpy_ms: float | None
    torch_ms: float | None


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty() and os.environ.get("CI"):
        return
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40.40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


def _measure(
    op: Op, x: np.ndarray, axis: int, shape_class: str, floor, repeat: int, baselines: bool, torch
) -> Row:
    """Time one op on one array: fastmax (with ``out=`` and allocating) and the others."""
    from . import _bench

    args = op.inputs(x, axis)

    def timed(fn, n=repeat):
        with np.errstate(all="ignore"):
            _bench.warm_up(fn)  # compile, and page in the memory it allocates
            return _bench.median_time(fn, n)

    # The floor writes into an existing array, so the floor ratio times fastmax
    # with ``out=`` (or in place); speed-ups compare allocating calls with
    # allocating calls (a fresh output costs page faults).
    def alloc_call():
        return op.fastmax(*args, axis=axis)

    fm_call = alloc_call  # ops without an out= form (the CE forward) are timed once
    if op.fastmax_out is not None:
        out = op.out_array(x, args, axis)

        def fm_call():
            return op.fastmax_out(args, axis, out)

    # The floor ratio comes from rounds that time fastmax and then the floor,
    # alternately (see _bench.paired_time): bandwidth drifts during a run.
    with np.errstate(all="ignore"):
        _bench.warm_up(fm_call)
        paired = _bench.paired_time(fm_call, floor[op.floor], repeat)
    t_fm = paired.time
    t_th = None
    if op.torch is not None and torch is not None:
        # PyTorch and fastmax's allocating call in alternating rounds, as for
        # the floor ratio: timed one after the other, the two medians came
        # from different seconds of a machine whose speed drifts (64 x 100
        # float32 softmax_vjp: 0.6x to 1.0x PyTorch in six runs that way,
        # 0.91x to 0.97x in three in alternation).
        targs = [torch.from_numpy(a) for a in args]

        def torch_call():
            return op.torch(*targs, axis)

        with np.errstate(all="ignore"):
            _bench.warm_up(alloc_call)
            _bench.warm_up(torch_call)
            versus = _bench.paired_time(alloc_call, [torch_call], repeat, settle=True)
        t_alloc, t_th = versus.time, versus.floor
    else:
        t_alloc = t_fm if fm_call is alloc_call else timed(alloc_call)
    floor_t = paired.floor * op.floor_factor
    nbytes = x.nbytes * (2 if op.floor == "copy" else 1) * op.floor_factor
    small_enough = baselines and x.nbytes <= 600 * 2**20
    few = max(3, repeat // 3)
    t_sp = timed(lambda: op.scipy(*args, axis=axis), few) if small_enough and op.scipy else None
    t_np = timed(lambda: op.numpy(*args, axis=axis), few) if small_enough and op.numpy else None

    def ms(t):
        return None if t is None else t * 1e3

    return Row(
        op=op.name,
        dtype=x.dtype.name,
        shape_class=shape_class,
        shape=list(x.shape),
        axis=axis,
        fastmax_ms=t_fm * 1e3,
        fastmax_alloc_ms=t_alloc * 1e3,
        floor_ms=floor_t * 1e3,
        floor_ratio=paired.ratio / op.floor_factor,
        gb_per_s=_bench.gigabytes_per_second(nbytes, t_fm),
        scipy_ms=ms(t_sp),
        numpy_ms=ms(t_np),
        torch_ms=ms(t_th),
    )


def run_speed(ops, shapes, dtypes, repeat, baselines, torch) -> list[Row]:
    from . import _bench

    rows = []
    total = len(shapes) * len(dtypes) * len(ops)
    done = 0
    for cls, (shape, axis) in shapes.items():
        for dtype in dtypes:
            x = _bench.input_array(shape, dtype)
            floor, _dst = _bench.floor_fns(x)
            for op in ops.values():
                _progress(done, total, f"{op.name} {np.dtype(dtype).name} {cls}")
                rows.append(_measure(op, x, axis, cls, floor, repeat, baselines, torch))
                done += 1
            del x, floor, _dst
    _progress(total, total, "done")
    return rows


def _speedup(base, t):
    return "—" if base is None else f"{base / t:.1f}×"


def format_table(rows: list[Row]) -> str:
    head = (
        "| op | dtype | shape | ms (out=) | × floor | GB/s | ms (allocating) "
        "| vs SciPy | vs NumPy | vs PyTorch |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        shape = "×".join(str(n) for n in r.shape) + ("" if r.axis == -1 else f" (axis {r.axis})")
        lines.append(
            f"| {r.op} | {r.dtype} | {r.shape_class} {shape} | {r.fastmax_ms:.3f} "
            f"| {r.floor_ratio:.2f} | {r.gb_per_s:.1f} | {r.fastmax_alloc_ms:.3f} "
            f"| {_speedup(r.scipy_ms, r.fastmax_alloc_ms)} "
            f"| {_speedup(r.numpy_ms, r.fastmax_alloc_ms)} "
            f"| {_speedup(r.torch_ms, r.fastmax_alloc_ms)} |"
        )
    return "\n".join(lines)


def info() -> dict:
    """Versions, threading layer, threads, cache location and CPU features."""
    import llvmlite
    import numba
    import scipy
    from llvmlite import binding

    import fastmax

    torch = _import_torch()
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        from . import _bench

        _bench.parallel_read(np.zeros(4))
        layer = numba.threading_layer()
    features = [
        f[1:] for f in binding.get_host_cpu_features().flatten().split(",") if f.startswith("+")
    ]
    return {
        "fastmax": fastmax.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "numba": numba.__version__,
        "llvmlite": llvmlite.__version__,
        "torch": None if torch is None else torch.__version__,
        "threading_layer": layer,
        "threads": numba.get_num_threads(),
        "cache_dir": numba.config.CACHE_DIR or "(next to the package sources, else the user cache)",
        "cpu": binding.get_host_cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_features": sorted(f for f in features if f.startswith(("avx", "fma", "sse4", "f16c"))),
        "numba_cpu_features_override": numba.config.CPU_FEATURES is not None,
    }


def plot(rows: list[Row], path: str) -> None:
    """Heatmaps (op × shape class, one per dtype) of the ratio to the floor and
    of the speed-up over PyTorch (or SciPy when PyTorch was not timed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    ops = list(dict.fromkeys(r.op for r in rows))
    shapes = list(dict.fromkeys(r.shape_class for r in rows))
    dtypes = list(dict.fromkeys(r.dtype for r in rows))
    base = "torch" if any(r.torch_ms for r in rows) else "scipy"
    panels = [
        (
            "time / floor (1 = memory-bandwidth limit; lower is better)",
            "RdYlGn_r",
            lambda r: r.floor_ratio,
            LogNorm(0.5, 20),
        ),
        (
            f"speed-up over {'PyTorch' if base == 'torch' else 'SciPy'} (higher is better)",
            "RdYlGn",
            lambda r: (getattr(r, f"{base}_ms") or np.nan) / r.fastmax_alloc_ms,
            LogNorm(0.2, 20),
        ),
    ]
    fig, axes = plt.subplots(
        len(panels),
        len(dtypes),
        squeeze=False,
        figsize=(1.1 * len(shapes) * len(dtypes) + 2, 0.45 * len(ops) * 2 + 2.5),
    )
    for row, (title, cmap, value, norm) in enumerate(panels):
        for col, dtype in enumerate(dtypes):
            grid = np.full((len(ops), len(shapes)), np.nan)
            for r in rows:
                if r.dtype == dtype:
                    grid[ops.index(r.op), shapes.index(r.shape_class)] = value(r)
            ax = axes[row, col]
            ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
            for i in range(len(ops)):
                for j in range(len(shapes)):
                    if np.isfinite(grid[i, j]):
                        ax.text(j, i, f"{grid[i, j]:.2g}", ha="center", va="center", fontsize=7)
            ax.set_xticks(range(len(shapes)), shapes, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(ops)), ops, fontsize=8)
            ax.set_title(f"{dtype}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastmax",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ops", default="all", help="comma-separated ops (default: all)")
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated shape classes "
        "(tall, classic, vocab, wide, row, axis0, incache, small)",
    )
    parser.add_argument("--dtypes", default="float32,float64", help="comma-separated dtypes")
    parser.add_argument(
        "--threads", type=int, default=None, help="Numba threads (default: all cores)"
    )
    parser.add_argument(
        "--full", action="store_true", help="the full-size shapes of PERF.md (needs ~2 GiB)"
    )
    parser.add_argument("--repeat", type=int, default=7, help="timings per measurement (median)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the SciPy/NumPy timings")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--json", metavar="PATH", help="write machine-readable results")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG chart (needs matplotlib)")
    parser.add_argument(
        "--info", action="store_true", help="print versions and machine facts, then exit"
    )
    parser.add_argument(
        "--skip-check", action="store_true", help="skip the self-check against SciPy"
    )
    args = parser.parse_args(argv)

    import numba

    if args.threads:
        numba.set_num_threads(args.threads)
    if args.info:
        print(json.dumps(info(), indent=2))
        return 0

    torch = None if args.no_torch else _import_torch()
    if torch is not None:
        torch.set_num_threads(numba.get_num_threads())
    ops = operations(torch)
    if args.ops != "all":
        unknown = set(args.ops.split(",")) - set(ops)
        if unknown:
            parser.error(f"unknown ops {sorted(unknown)}; choose from {sorted(ops)}")
        ops = {k: v for k, v in ops.items() if k in args.ops.split(",")}
    from . import _bench

    shapes = _bench.SHAPES_FULL if args.full else _bench.SHAPES_DEFAULT
    if args.shapes:
        unknown = set(args.shapes.split(",")) - set(shapes)
        if unknown:
            parser.error(f"unknown shapes {sorted(unknown)}; choose from {sorted(shapes)}")
        shapes = {k: v for k, v in shapes.items() if k in args.shapes.split(",")}
    dtypes = [np.dtype(d) for d in args.dtypes.split(",")]

    if not args.skip_check:
        print("Self-check against SciPy ...", flush=True)
        failures = self_check(ops)
        if failures:
            print("FAILED:\n  " + "\n  ".join(failures))
            return 1
        checked = sum(op.scipy is not None for op in ops.values())
        print(
            f"  ok: {checked} ops × 2 dtypes × 4 shapes/axes agree with SciPy "
            "(NaN and -inf included)"
        )

    print(
        f"Timing on {numba.get_num_threads()} threads (ratios from one run; see PERF.md) ...",
        flush=True,
    )
    rows = run_speed(ops, shapes, dtypes, args.repeat, not args.no_baselines, torch)
    print(format_table(rows))
    print(
        "\n× floor: time with out= (hardmax: in place; xent: the loss, no out=) over the copy\n"
        "floor, the read floor (logsumexp, xent) or 1.5 copy floors (softmax_vjp: two inputs):\n"
        "the median over rounds that time fastmax and then the floor on the same array,\n"
        "alternately; 1.0 is the memory-bandwidth limit. Speed-ups compare allocating calls.\n"
        "PyTorch: F.softmax,\n"
        "F.log_softmax, torch.logsumexp, zeros_like().scatter_(argmax), _softmax_backward_data,\n"
        "F.cross_entropy (xent) and F.cross_entropy(...).backward() (xent_fused: fastmax's\n"
        "fused loss+gradient, in place over the logits for the floor ratio)."
    )
    facts = info()
    print(
        f"\n{facts['cpu']} ({facts['cpu_count']} CPUs), Python {facts['python']}, "
        f"NumPy {facts['numpy']}, "
        f"SciPy {facts['scipy']}, Numba {facts['numba']}, "
        f"PyTorch {facts['torch'] or 'not installed'}, "
        f"threading layer {facts['threading_layer']}"
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"info": facts, "results": [asdict(r) for r in rows]}, fh, indent=2)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
