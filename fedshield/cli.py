"""The ``fedshield`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .crypto.keys import PUBLIC_FILE, SECRET_FILE, create_keys, load_keys, write_key_pair
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


def _aggregator(args: argparse.Namespace) -> int:
    from .aggregator.server import serve
    from .config import load_config

    keys = load_keys(args.public_key)
    if keys.has_secret_key:
        print("error: the aggregator must be given the public context, not the secret one", file=sys.stderr)
        return 2
    serve(load_config(args.config), keys, args.state_dir, host=args.host, port=args.port)
    return 0


def _silo(args: argparse.Namespace) -> int:
    from . import metrics
    from .config import load_config
    from .silo_agent.agent import SiloAgent

    config = load_config(args.config)
    spec = next((s for s in config.silos if s.name == args.name), None)
    if spec is None:
        print(f"error: silo {args.name!r} is not in {args.config}", file=sys.stderr)
        return 2
    metrics.serve_metrics(spec.metrics_port, metrics.SILO)
    agent = SiloAgent(config, args.name, load_keys(args.secret_key), args.workdir, args.aggregator, model_cache=args.model_cache)
    agent.run()
    if spec.metrics_port is not None and args.metrics_linger > 0:
        time.sleep(args.metrics_linger)  # let Prometheus scrape the final values before the process ends
    return 0


def _run(config, args: argparse.Namespace) -> int:
    from .demo import run_local

    report = run_local(config, args.out)
    return 0 if report["rounds"] else 1


def _demo(args: argparse.Namespace) -> int:
    from .config import FederationConfig

    overrides = {"rounds": args.rounds} if args.rounds else {}
    return _run(FederationConfig(**overrides), args)


def _run_config(args: argparse.Namespace) -> int:
    from .config import load_config

    return _run(load_config(args.config), args)


def _crd(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    sys.stdout.write(crd_yaml())
    return 0


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from .operator import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,  # one replica with a Recreate strategy: no peering objects needed
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedshield", description="Federated LoRA fine-tuning under CKKS.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="CKKS key sets").add_subparsers(dest="keys_command", required=True)
    create = keys.add_parser("create", help=f"write {SECRET_FILE} (silos) and {PUBLIC_FILE} (aggregator)")
    create.add_argument("--out", required=True, help="directory to write the key files into")
    create.add_argument("--poly-degree", type=int, default=CkksParams().poly_degree)
    create.add_argument("--scale-bits", type=int, default=CkksParams().scale_bits)
    create.add_argument("--force", action="store_true", help="replace an existing key set")
    create.set_defaults(func=_keys_create)

    crd = sub.add_parser("crd", help="print the FederatedFinetune CRD (generated from the pydantic models)")
    crd.set_defaults(func=_crd)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable); default: all")
    op.add_argument("--health-port", type=int, default=8080)
    op.set_defaults(func=_operator)

    demo = sub.add_parser("demo", help="a whole federation on this machine: aggregator + 3 silos, tiny model, CPU")
    demo.add_argument("--out", default="fedshield-demo", help="directory for report.json, auc.png, logs and adapters")
    demo.add_argument("--rounds", type=int, default=None)
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="like demo, from a YAML config")
    run.add_argument("config")
    run.add_argument("--out", default="fedshield-run")
    run.set_defaults(func=_run_config)

    agg = sub.add_parser("aggregator", help="run the aggregator service (public context only)")
    agg.add_argument("--config", required=True)
    agg.add_argument("--public-key", required=True)
    agg.add_argument("--state-dir", required=True)
    agg.add_argument("--host", default="127.0.0.1")
    agg.add_argument("--port", type=int, default=None)
    agg.set_defaults(func=_aggregator)

    silo = sub.add_parser("silo", help="run one silo agent")
    silo.add_argument("--config", required=True)
    silo.add_argument("--name", required=True)
    silo.add_argument("--secret-key", required=True)
    silo.add_argument("--workdir", required=True)
    silo.add_argument("--aggregator", required=True, help="aggregator base URL")
    silo.add_argument("--model-cache", default=None, help="where the tiny demo model is built and cached")
    silo.add_argument("--metrics-linger", type=float, default=float(os.environ.get("FEDSHIELD_METRICS_LINGER_S", "0")),
                      help="seconds to keep serving /metrics after the last round (env FEDSHIELD_METRICS_LINGER_S)")
    silo.set_defaults(func=_silo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.command in ("aggregator", "silo") else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
