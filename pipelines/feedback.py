"""`make feedback`: what users taught back through POST /feedback: list, export, delete.

    python -m pipelines.feedback                          rows per label, and how often the
                                                          model was right by the users' word
    python -m pipelines.feedback --export DIR             images, 28x28 digits, manifest.jsonl
    python -m pipelines.feedback --delete SHA256 [...]    delete those images' rows
    python -m pipelines.feedback --delete-all --yes       delete every row
    python -m pipelines.feedback paths.feedback_url=URL   another store (or CONVLENS_FEEDBACK_URL)

The store is `paths.feedback_url` (conf/paths/default.yaml): CONVLENS_FEEDBACK_URL, else the
SQLite file the service writes in the BentoML home.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from convlens import UserError
from convlens.cli import Parser, add_overrides, run_cli
from convlens.config import compose
from convlens.feedback import LABELS, FeedbackStore

SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def sha256_arg(text: str) -> str:
    if not SHA256.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"expected a sha256 (64 hex digits), got {text!r}")
    return text.strip().lower()


def show_counts(store: FeedbackStore) -> None:
    counts = store.counts()
    right, predicted = store.agreement()
    print("label  rows")
    for label in LABELS:
        print(f"{label:>5}  {counts.get(label, 0):,}")
    total = sum(counts.values())
    print(f"total  {total:,}")
    if predicted:
        print(f"the model was right on {right:,} of {predicted:,} ({right / predicted:.1%})")


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m pipelines.feedback", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--export", metavar="DIR", type=Path, help="write every row under DIR")
    what.add_argument(
        "--delete", metavar="SHA256", type=sha256_arg, nargs="+", help="delete these rows"
    )
    what.add_argument("--delete-all", action="store_true", help="delete every row (with --yes)")
    parser.add_argument("--yes", action="store_true", help="confirm --delete-all")
    add_overrides(parser)
    args = parser.parse_args(argv)
    if args.delete_all and not args.yes:
        raise UserError("--delete-all deletes every feedback row: add --yes to confirm")

    store = FeedbackStore(str(compose(args.overrides).paths.feedback_url))
    print(f"feedback   {store.url_shown}")
    if args.export:
        from convlens.feedback_export import export

        done = export(store, args.export)
        print(f"exported   {done.rows:,} rows to {done.folder} (manifest: {done.manifest.name})")
    elif args.delete:
        missing = [sha for sha in args.delete if not store.delete(sha)]
        print(f"deleted    {len(args.delete) - len(missing):,} rows")
        if missing:
            raise UserError(f"no feedback row for {', '.join(missing)}")
    elif args.delete_all:
        print(f"deleted    {store.delete_all():,} rows (all)")
    else:
        show_counts(store)
    return 0


if __name__ == "__main__":
    run_cli(main)
