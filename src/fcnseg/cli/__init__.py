"""The `fcnseg` command line: one module per subcommand (its options in `add`, its action in
`run`); `--help` is the manual."""

from __future__ import annotations

import sys
import traceback

from ..feed import ChecksDone
from ..memory import keep_freed_memory
from ..threads import limit_threads
from . import (
    bench,
    compare,
    convert,
    demo,
    export,
    heatmap,
    hha,
    models,
    predict,
    report,
    serve,
    train,
)
from . import eval as eval_
from .common import _Parser, fast_model

__all__ = ["SUBCOMMANDS", "fast_model", "main"]

# in the order `fcnseg --help` lists them
SUBCOMMANDS = (models, convert, demo, heatmap, train, eval_, bench, compare, predict, hha, export,
               serve, report)  # fmt: skip


def _parser() -> _Parser:
    p = _Parser(prog="fcnseg", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.argv = argv
    limit_threads()  # no more torch threads than the CPUs this process may use
    keep_freed_memory()  # large tensors reuse freed memory, not fresh pages (fcnseg.memory)
    ok = False
    try:
        code = args.func(args)
        ok = code == 0
        return code
    except ChecksDone:  # --nproc's check run: the checks passed, the workers may start
        from .launch import checks_passed

        checks_passed()
        return 0
    except KeyboardInterrupt as e:  # training saves a checkpoint first and says so
        from .launch import keep_worker_message

        if not keep_worker_message(str(e) or "interrupted", 130):  # --nproc: said once
            print(f"\n{e or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, RuntimeError, OSError, KeyError, ImportError) as e:
        if isinstance(e, OSError) and e.strerror:  # without the "[Errno N]" prefix
            named = e.filename and str(e.filename) in e.strerror
            message = e.strerror + (f": '{e.filename}'" if e.filename and not named else "")
        else:
            message = str(e)
        return _fail(message, args.debug)
    except Exception as e:  # a bug of ours: still no bare traceback without --debug
        return _fail(f"internal error ({type(e).__name__}: {e}); rerun with --debug and "
                     f"report it", args.debug)  # fmt: skip
    finally:
        _close_process_group(ok)


def _close_process_group(ok: bool) -> None:
    """Under torchrun: leave the process group together before exit. A rank that exited while
    another still had gloo's connections open aborted it now and then ("terminate called
    without an active exception"): after a success every rank waits for the others first."""
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _fail(message: str, debug: bool) -> int:
    from .launch import keep_worker_message

    if debug:
        traceback.print_exc()
    if keep_worker_message(message, 1):  # a --nproc worker: the launcher says it, once
        return 1
    print(f"error: {message}" + ("" if debug else "  (--debug shows the traceback)"),
          file=sys.stderr)  # fmt: skip
    return 1
