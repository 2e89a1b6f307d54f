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
from .spec.commands import add_spec_arguments
from .spec.unlearning import UnlearningSpec


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
    from .security.auth import Authenticator, TokenStore
    from .security.tls import ServerTLS

    keys = load_keys(args.public_key)
    if keys.has_secret_key:
        print("error: the aggregator must be given the public context, not the secret one", file=sys.stderr)
        return 2
    if bool(args.tls_cert) != bool(args.tls_key):
        print("error: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    secured = args.client_ca or args.token_file
    if not args.tls_cert and secured:
        print("error: --client-ca and --token-file need --tls-cert/--tls-key (identities travel over TLS only)", file=sys.stderr)
        return 2
    if not args.tls_cert:
        logging.getLogger("fedshield.aggregator").warning(
            "plain HTTP without identities: the silo name in each URL is trusted (tests only; see docs/security.md)")
    if args.tls_cert and not secured:
        print("error: TLS without identities: give --client-ca (mutual TLS) and/or --token-file", file=sys.stderr)
        return 2
    tls = ServerTLS(Path(args.tls_cert), Path(args.tls_key), Path(args.client_ca) if args.client_ca else None) if args.tls_cert else None
    auth = Authenticator(mutual_tls=bool(args.client_ca), tokens=TokenStore.load(args.token_file) if args.token_file else None,
                         federation=args.federation, observers=frozenset(args.observer))
    from .aggregator.store import StateLocked

    try:
        serve(load_config(args.config), keys, args.state_dir, host=args.host, port=args.port, tls=tls, auth=auth)
    except (StateLocked, ValueError) as exc:  # another aggregator on this state, or a config the keys cannot carry
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _credentials_problem(args: argparse.Namespace) -> str | None:
    """Why the silo's --aggregator and credentials do not fit together (None when they do)."""
    if args.aggregator.startswith("https://") and not args.ca:
        return "an https aggregator needs --ca (and --cert/--key, or --token-file)"
    if (args.cert or args.key or args.token_file) and not args.aggregator.startswith("https://"):
        return "credentials are only sent to an https:// aggregator"
    return None


def _client_security(args: argparse.Namespace):
    """The silo's credentials from --ca/--cert/--key or --token-file (None: plain HTTP)."""
    from .security.auth import read_token
    from .wire.client import ClientSecurity

    if args.token_file:
        return ClientSecurity(ca=args.ca, token=read_token(args.token_file))
    if args.cert or args.key or args.ca:
        return ClientSecurity(ca=args.ca, cert=args.cert, key=args.key)
    return None


def _silo(args: argparse.Namespace) -> int:
    from . import metrics
    from .config import load_config
    from .learning.training import leave_distributed
    from .silo_agent.agent import SiloAgent

    config = load_config(args.config)
    spec = next((s for s in config.silos if s.name == args.name), None)
    if spec is None:
        print(f"error: silo {args.name!r} is not in {args.config}", file=sys.stderr)
        return 2
    rank0 = int(os.environ.get("RANK", "0")) == 0  # a multi-rank silo: rank 0 alone exports (and talks to the aggregator)
    if rank0:
        metrics.serve_metrics(spec.metrics_port, metrics.SILO)
    if problem := _credentials_problem(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        agent = SiloAgent(config, args.name, load_keys(args.secret_key), args.workdir, args.aggregator, model_cache=args.model_cache,
                          security=_client_security(args))
    except ValueError as exc:  # e.g. a key set other than privacy.encryption names
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent.run()
    leave_distributed()  # every rank has its orders' end: tear the group down before exit (after a clean run only)
    if rank0 and spec.metrics_port is not None and args.metrics_linger > 0:
        time.sleep(args.metrics_linger)  # let Prometheus scrape the final values before the process ends
    return 0


def _certs(args: argparse.Namespace) -> int:
    from .security.certs import issue_all

    silos = [s for s in args.silo for s in s.split(",") if s]
    if args.config:
        from .config import load_config

        silos += [s for s in load_config(args.config).silo_names if s not in silos]
    print(json.dumps(issue_all(args.out, silos, hosts=args.host or ["127.0.0.1", "localhost"], federation=args.federation), indent=2))
    return 0


def _tokens(args: argparse.Namespace) -> int:
    from .security.auth import create_tokens

    silos = [s for s in args.silo for s in s.split(",") if s]
    path = create_tokens(args.out, silos)
    print(json.dumps({"aggregator": str(path), "silos": {s: str(Path(args.out) / "silos" / f"{s}.token") for s in silos}}))
    return 0


def _run(config, args: argparse.Namespace) -> int:
    from .local.demo import run_local

    report = run_local(config, args.out, security="none" if args.insecure_http else "mtls")
    return 0 if report["rounds"] else 1


def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .local.demo import demo_config

    config = demo_config(args.rounds, llm=args.llm, models_dir=args.models)
    if args.personalise:
        config = config.model_copy(update={"aggregation": config.aggregation.model_copy(update={"personalise": True})})
    return _run(config, args)


def _run_config(args: argparse.Namespace) -> int:
    from .config import load_config

    return _run(load_config(args.config), args)


def _crd(args: argparse.Namespace) -> int:
    from .api.crd import crd_yaml

    sys.stdout.write(crd_yaml(args.kind))
    return 0


def _forget_request(args: argparse.Namespace):
    from .silo_agent.forget import ForgetRequest

    users = [u for part in args.users for u in part.split(",") if u]
    if args.users_file:
        users += [line.strip() for line in Path(args.users_file).read_text().splitlines() if line.strip()]
    if bool(users) == (args.fraction is not None):
        raise SystemExit("error: give the users to forget (--users/--users-file) or --fraction, not both and not neither")
    return ForgetRequest(users=tuple(users) if users else None, fraction=args.fraction,
                         requested_by=args.requested_by, reason=args.reason)


def _unlearn(args: argparse.Namespace) -> int:
    from .spec.commands import spec_from_args
    from .spec.unlearning import UnlearningSpec

    request = _forget_request(args)
    spec = spec_from_args(args, UnlearningSpec)
    if args.run_dir:
        from .local.unlearning import unlearn_local

        if not args.silo:
            print("error: --run-dir needs --silo", file=sys.stderr)
            return 2
        record = unlearn_local(args.run_dir, args.silo, request, spec)
    else:
        from .config import load_config
        from .silo_agent.agent import SiloAgent

        missing = [f"--{n.replace('_', '-')}" for n in ("config", "silo", "secret_key", "workdir", "aggregator") if not getattr(args, n)]
        if missing:
            print(f"error: without --run-dir, give {', '.join(missing)}", file=sys.stderr)
            return 2
        agent = SiloAgent(load_config(args.config), args.silo, load_keys(args.secret_key), args.workdir, args.aggregator,
                          model_cache=args.model_cache, security=_client_security(args))
        found = _unlearn_at_silo(agent, request, spec, args.aggregator, args.approval_timeout_s)
        if found is None:
            return 3
        record = found
    print(record.model_dump_json(indent=2))
    return 0


def _unlearn_at_silo(agent, request, spec, aggregator: str, timeout_s: float):
    """Silo mode: forget and upload; while the upload is pending, say which command other silos must run and wait for
    it to be published (None when it is still pending after ``timeout_s``)."""
    from .silo_agent.approval import approve_command
    from .silo_agent.forget import forget_and_upload, wait_published

    uploaded = forget_and_upload(agent, request, spec)
    if uploaded.receipt.pending:
        needed = agent.config.privacy.unlearning_approvals
        print(f"unlearning {uploaded.version} is pending: {needed} other silo(s) must approve exactly these bytes "
              f"(sha256 {uploaded.receipt.sha256}). Each runs:\n  "
              f"{approve_command(aggregator, uploaded.version, uploaded.receipt.sha256)}", file=sys.stderr, flush=True)
        if timeout_s > 0:
            print(f"waiting up to {timeout_s:g} s for the approvals", file=sys.stderr, flush=True)
    try:
        return wait_published(agent, uploaded.version, timeout_s)
    except TimeoutError as exc:
        print(f"pending: {exc}", file=sys.stderr)
        return None


def _approve(args: argparse.Namespace) -> int:
    from .silo_agent.approval import approve, pending_table
    from .wire.client import AggregatorClient, AggregatorRefused

    if problem := _credentials_problem(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    if args.list == (args.version is not None or args.sha256 is not None):
        print("error: give --list, or --version N --sha256 HEX", file=sys.stderr)
        return 2
    if not args.list and (args.version is None or args.sha256 is None or not args.silo):
        print("error: approving needs --silo, --version and --sha256 (the exact bytes you approve)", file=sys.stderr)
        return 2
    client = AggregatorClient(args.aggregator, retries=3, security=_client_security(args))
    try:
        if args.list:
            print(pending_table(client.pending_unlearnings()))
            return 0
        result = approve(client, args.silo, args.version, args.sha256)
    except AggregatorRefused as exc:
        print(f"error: {exc.code.value}: {exc.detail}", file=sys.stderr)
        return 1
    finally:
        client.close()
    state = "published" if result.published else f"pending ({len(result.approvals)}/{result.needed} approvals)"
    print(f"unlearning {result.version} from silo {result.silo} (sha256 {result.sha256}): {state}")
    return 0


def _dashboard(args: argparse.Namespace) -> int:
    from .dashboard import dashboard_json

    sys.stdout.write(dashboard_json())
    return 0


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from . import metrics
    from .operator import handlers  # noqa: F401  (registers the handlers)

    metrics.serve_metrics(args.metrics_port, metrics.OPERATOR)
    kopf.run(
        standalone=True,  # one replica with a Recreate strategy: no peering objects needed
        clusterwide=not args.namespace,
        namespaces=args.namespace or (),
        liveness_endpoint=f"http://0.0.0.0:{args.health_port}/healthz",
    )
    return 0


def _models_import(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from .learning.models import PACKAGED, import_model

    out = Path(args.out or Path("models") / (args.source if args.source in PACKAGED else Path(args.source).stem))
    start = time.monotonic()
    try:
        path, written = import_model(args.source, out, force=args.force)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": str(path), "written": written, "seconds": round(time.monotonic() - start, 1)}))
    return 0


def _models_list(args: argparse.Namespace) -> int:
    from .learning.models import PACKAGED, packaged_gguf

    rows = []
    for name, model in PACKAGED.items():
        try:
            path, installed = str(packaged_gguf(name)), True
        except FileNotFoundError:
            path, installed = None, False
        rows.append({"name": name, "package": model.distribution, "installed": installed, "gguf": path,
                     "description": model.description})
    print(json.dumps(rows, indent=2))
    return 0


def _data_split(args: argparse.Namespace) -> int:
    from .workloads.base import DataError
    from .workloads.partition import split_dataset

    try:
        manifest = split_dataset(args.source, args.out, args.by, silos=args.silos, alpha=args.alpha, seed=args.seed,
                                 attribute=args.attribute, force=args.force)
    except (FileNotFoundError, FileExistsError, DataError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    empty = [silo for silo, counts in manifest["silos"].items() if not counts["users"]]
    if empty:
        print(f"warning: no users fell to {', '.join(empty)} (raise --alpha or use fewer silos)", file=sys.stderr)
    print(json.dumps(manifest, indent=2))
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

    crd = sub.add_parser("crd", help="print a CRD (generated from the pydantic models): FederatedFinetune by default")
    crd.add_argument("--kind", choices=("finetune", "unlearning", "membership"), default="finetune",
                     help="finetune: FederatedFinetune; unlearning: FederatedUnlearning; membership: FederationMembership")
    crd.set_defaults(func=_crd)

    dash = sub.add_parser("dashboard", help="print the Grafana dashboard JSON (generated from fedshield/dashboard.py)")
    dash.set_defaults(func=_dashboard)

    op = sub.add_parser("operator", help="run the Kubernetes operator (kopf)")
    op.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable); default: all")
    op.add_argument("--health-port", type=int, default=8080)
    op.add_argument("--metrics-port", type=int, default=int(os.environ.get("FEDSHIELD_METRICS_PORT", "0")) or None,
                    help="serve the operator's Prometheus metrics here (env FEDSHIELD_METRICS_PORT; default: off)")
    op.set_defaults(func=_operator)

    models = sub.add_parser("models", help="base models on local disk").add_subparsers(dest="models_command", required=True)
    imp = models.add_parser("import", help="write a packaged model or a GGUF file as a Hugging Face directory (once)")
    imp.add_argument("source", help="a packaged model's name (see `fedshield models list`) or the path of a GGUF file")
    imp.add_argument("--out", default=None, help="directory to write (default: models/<name>); set model.path to it")
    imp.add_argument("--force", action="store_true", help="replace a directory that holds something else")
    imp.set_defaults(func=_models_import)
    models.add_parser("list", help="the models that ship inside Python packages").set_defaults(func=_models_list)

    data = sub.add_parser("data", help="datasets on local disk").add_subparsers(dest="data_command", required=True)
    split = data.add_parser("split", help="partition one MovieLens dataset (100K, 1M or latest) into per-silo folders")
    split.add_argument("source", help="directory holding the dataset's files (u.data..., ratings.dat..., or ratings.csv...)")
    split.add_argument("--out", required=True, help="writes <out>/<silo>/ratings.csv, movies.csv (and users.csv), split.json")
    split.add_argument("--by", choices=("user", "genre", "attribute"), default="user",
                       help="user: hash of the user id; genre: Dirichlet over users' dominant genres; attribute: one silo per value")
    split.add_argument("--silos", default="3", help="a count (silo-1..silo-N) or comma-separated names (not for --by attribute)")
    split.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --by genre (small: more skewed)")
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--attribute", choices=("gender", "age", "occupation"), default="gender", help="for --by attribute")
    split.add_argument("--force", action="store_true", help="replace an earlier split in --out")
    split.set_defaults(func=_data_split)

    demo = sub.add_parser("demo", help="a whole federation on this machine: aggregator + 3 silos, tiny model (or --llm), CPU")
    demo.add_argument("--out", default="fedshield-demo", help="directory for report.json, scores.png, logs and adapters")
    demo.add_argument("--rounds", type=int, default=None)
    demo.add_argument("--llm", action="store_true", help="SmolLM2-135M-Instruct learning a synthetic triage task (instruction "
                                                        "workload) instead of the tiny model's recommendation task")
    demo.add_argument("--models", default="models", help="where --llm imports its model once (models/smollm2-135m-instruct)")
    demo.add_argument("--insecure-http", action="store_true", help="plain HTTP without identities (default: mutual TLS)")
    demo.add_argument("--personalise", action="store_true", help="also build each silo's PPLR personal adapter "
                                                                 "(aggregation.personalise) and report its score")
    demo.set_defaults(func=_demo)

    run = sub.add_parser("run", help="like demo, from a YAML config")
    run.add_argument("config")
    run.add_argument("--out", default="fedshield-run")
    run.add_argument("--insecure-http", action="store_true", help="plain HTTP without identities (default: mutual TLS)")
    run.set_defaults(func=_run_config)

    forget = sub.add_parser("unlearn", help="forget users at one silo (E2URec); every silo gets the new global adapter")
    forget.add_argument("--run-dir", default=None, help="a finished local run (fedshield demo/run): everything happens locally")
    forget.add_argument("--silo", default=None, help="the silo holding the users' records")
    forget.add_argument("--users", action="append", default=[], help="user ids, repeatable or comma-separated")
    forget.add_argument("--users-file", default=None, help="file with one user id per line")
    forget.add_argument("--fraction", type=float, default=None, help="forget a seeded random share of the silo's users (demos)")
    forget.add_argument("--requested-by", required=True, help="who asked (kept in the audit record)")
    forget.add_argument("--reason", default="", help="why (kept in the audit record)")
    add_spec_arguments(forget, UnlearningSpec)  # --alpha, --beta, --steps, ...: names, defaults and help from the spec
    for flag, help_ in (("--config", "federation config (silo mode)"), ("--secret-key", "the silo's secret context (silo mode)"),
                        ("--workdir", "the silo's work directory (silo mode)"), ("--aggregator", "aggregator base URL (silo mode)"),
                        ("--model-cache", "where the tiny demo model is cached"), ("--ca", "CA of the aggregator's certificate"),
                        ("--cert", "this silo's client certificate"), ("--key", "its private key"), ("--token-file", "bearer token file")):
        forget.add_argument(flag, default=None, help=help_)
    forget.add_argument("--approval-timeout-s", type=float, default=86400.0,
                        help="silo mode: how long to wait for other silos to approve the upload (0: print the approve command "
                             "and end with exit code 3 while it is pending)")
    forget.set_defaults(func=_unlearn)

    approve = sub.add_parser("approve", help="a silo approves another silo's pending unlearning (exactly its SHA-256), or lists them")
    approve.add_argument("--aggregator", required=True, help="aggregator base URL")
    approve.add_argument("--silo", default=None, help="this silo's name (the approver; needed to approve)")
    approve.add_argument("--list", action="store_true", help="show pending unlearnings: version, uploader, SHA-256, approvals so far")
    approve.add_argument("--version", type=int, default=None, help="the pending unlearning to approve")
    approve.add_argument("--sha256", default=None, help="SHA-256 of the upload you approve (from --list or the uploader)")
    for flag, help_ in (("--ca", "CA of the aggregator's certificate"), ("--cert", "this silo's client certificate"),
                        ("--key", "its private key"), ("--token-file", "bearer token file")):
        approve.add_argument(flag, default=None, help=help_)
    approve.set_defaults(func=_approve)

    certs = sub.add_parser("certs", help="issue a CA, the aggregator's server certificate and per-silo client certificates")
    certs.add_argument("--out", required=True, help="directory (an existing ca.crt/ca.key there is reused)")
    certs.add_argument("--silo", action="append", default=[], help="silo name(s), repeatable or comma-separated")
    certs.add_argument("--config", default=None, help="also issue for every silo of this federation config")
    certs.add_argument("--host", action="append", default=[],
                       help="aggregator host name or IP for the server certificate (repeatable; default 127.0.0.1, localhost)")
    certs.add_argument("--federation", default=None,
                       help="namespace/name: pin the silo certificates to this federation (URI SAN), for an aggregator run with --federation")
    certs.set_defaults(func=_certs)

    tokens = sub.add_parser("tokens", help="per-silo bearer tokens (the alternative to client certificates)")
    tokens.add_argument("--out", required=True, help="writes tokens.json (hashes, aggregator) and silos/<name>.token")
    tokens.add_argument("--silo", action="append", default=[], required=True, help="silo name(s)")
    tokens.set_defaults(func=_tokens)

    agg = sub.add_parser("aggregator", help="run the aggregator service (public context only)")
    agg.add_argument("--config", required=True)
    agg.add_argument("--public-key", required=True)
    agg.add_argument("--state-dir", required=True)
    agg.add_argument("--host", default="127.0.0.1")
    agg.add_argument("--port", type=int, default=None, help="default: the config's aggregator_port")
    agg.add_argument("--tls-cert", default=None, help="the aggregator's certificate (PEM)")
    agg.add_argument("--tls-key", default=None, help="its private key (PEM)")
    agg.add_argument("--client-ca", default=None, help="CA of silo client certificates: mutual TLS, identity = certificate CN")
    agg.add_argument("--token-file", default=None, help="JSON silo -> 'sha256:<hex>' of its bearer token")
    agg.add_argument("--federation", default=None, help="namespace/name: a silo certificate must also carry this federation's URI SAN")
    agg.add_argument("--observer", action="append", default=[], help="URI SAN of a read-only observer (status and unlearning ledger)")
    agg.set_defaults(func=_aggregator)

    silo = sub.add_parser("silo", help="run one silo agent")
    silo.add_argument("--config", required=True)
    silo.add_argument("--name", required=True)
    silo.add_argument("--secret-key", required=True)
    silo.add_argument("--workdir", required=True)
    silo.add_argument("--aggregator", required=True, help="aggregator base URL")
    silo.add_argument("--model-cache", default=None, help="where the tiny demo model is built and cached")
    silo.add_argument("--ca", default=None, help="CA that signed the aggregator's certificate")
    silo.add_argument("--cert", default=None, help="this silo's client certificate (CN = silo name)")
    silo.add_argument("--key", default=None, help="its private key")
    silo.add_argument("--token-file", default=None, help="file holding this silo's bearer token (instead of --cert/--key)")
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
