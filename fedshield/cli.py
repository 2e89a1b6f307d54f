"""The ``fedshield`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .crypto.keys import PUBLIC_FILE, SECRET_FILE, create_keys, write_key_pair
from .crypto.params import CkksParams


def _keys_create(args: argparse.Namespace) -> int:
    out = Path(args.out)
    existing = [p for p in (out / SECRET_FILE, out / PUBLIC_FILE) if p.exists()]
    if existing and not args.force:
        print(f"error: {existing[0]} exists; pass --force to replace the key set", file=sys.stderr)
        return 2
    try:
        params = CkksParams(poly_degree=args.poly_degree, scale_bits=args.scale_bits)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = create_keys(params)
    secret, public = write_key_pair(keys, out)
    print(json.dumps({"fingerprint": keys.fingerprint, "secret": str(secret), "public": str(public)}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedshield", description="Federated LoRA fine-tuning under CKKS.")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="CKKS key sets").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help=f"write {SECRET_FILE} (silos) and {PUBLIC_FILE} (aggregator)")
    create.add_argument("--out", required=True, help="directory to write the key files into")
    create.add_argument("--poly-degree", type=int, default=CkksParams().poly_degree)
    create.add_argument("--scale-bits", type=int, default=CkksParams().scale_bits)
    create.add_argument("--force", action="store_true", help="replace an existing key set")
    create.set_defaults(func=_keys_create)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
