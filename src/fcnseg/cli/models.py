"""`fcnseg models`: List the models and the registered weights."""

from __future__ import annotations


def add(sub) -> None:
    s = sub.add_parser("models", help=run.__doc__)
    s.set_defaults(func=run)


def run(args) -> int:
    """List the models and the registered weights."""
    from .. import WEIGHTS, list_models

    print("models:", *list_models(), sep="\n  ")
    print("weights:")
    for w in WEIGHTS.values():
        print(f"  {w.name:24s} {w.arch:20s} {w.categories:9s} {w.url}")
    from ..weights.registry import reference_table

    print("reference nets (build_reference(NAME, weights='reference')):")
    print(*(f"  {line}" for line in reference_table()), sep="\n")
    return 0
