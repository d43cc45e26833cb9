"""`fcnseg models`: every net by name in one table, and the registered weights."""

from __future__ import annotations

_COLUMNS = ("name", "family", "trunk", "head", "classes", "inputs", "outputs", "same layers as")


def add(sub) -> None:
    s = sub.add_parser("models", help=run.__doc__, description=run.__doc__)
    s.add_argument("--weights", action="store_true", help="also each net's published files")
    s.set_defaults(func=run)


def _table(rows: list[dict[str, str]], columns: tuple[str, ...]) -> list[str]:
    widths = [max(len(c), *(len(r[c]) for r in rows)) for c in columns]
    lines = [[c for c in columns], *([r[c] for c in columns] for r in rows)]
    return ["  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]  # fmt: skip


def run(args) -> int:
    """List every net fcnseg builds (its architectures and the release's 15 nets, each a
    `build_model` / `--model` name) and the registered weights."""
    from ..models.registry import model_table
    from ..weights import WEIGHTS

    rows = model_table()
    columns = (*_COLUMNS, "weights") if args.weights else _COLUMNS
    print(*_table(rows, columns), sep="\n")
    print("\nweights (weights=NAME; a release net's own file: weights='reference'):")
    for w in WEIGHTS.values():
        print(f"  {w.name:24s} {w.arch:22s} {w.categories:13s} {w.url}")
    return 0
