"""The command line of every FedShield process, built in one place from the spec.

The operator's Deployments and Jobs, the local runner (`fedshield demo` / `run`) and the
unlearning Job all call these; `fedshield`'s parser reads the same flags, and the flags of
a spec model (``spec_flags``) are the ones ``add_spec_arguments`` defines, with the spec's
defaults and descriptions.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .base import Spec
from .unlearning import UnlearningSpec

PROGRAM: tuple[str, ...] = ("fedshield",)
S = TypeVar("S", bound=Spec)


@dataclass(frozen=True)
class ClientCredentials:
    """How a silo proves itself to an https aggregator: CA plus client certificate, or CA plus bearer token (none: plain HTTP)."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    token_file: str | None = None

    def flags(self) -> list[str]:
        return _flags(("--ca", self.ca), ("--cert", self.cert), ("--key", self.key), ("--token-file", self.token_file))


@dataclass(frozen=True)
class ServerCredentials:
    """The aggregator's certificate and who it admits: client certificates under ``client_ca`` and/or bearer tokens."""

    tls_cert: str | None = None
    tls_key: str | None = None
    client_ca: str | None = None
    token_file: str | None = None
    federation: str | None = None  # namespace/name a silo certificate must also carry
    observers: tuple[str, ...] = ()  # URI SANs of read-only observers

    def flags(self) -> list[str]:
        return _flags(("--tls-cert", self.tls_cert), ("--tls-key", self.tls_key), ("--client-ca", self.client_ca),
                      ("--token-file", self.token_file), ("--federation", self.federation),
                      *(("--observer", o) for o in self.observers))


def _flags(*pairs: tuple[str, str | None]) -> list[str]:
    return [part for flag, value in pairs if value is not None for part in (flag, value)]


def aggregator_command(config: str, public_key: str, state_dir: str, server: ServerCredentials = ServerCredentials(), *,
                       host: str | None = None, port: int | None = None, program: Sequence[str] = PROGRAM) -> list[str]:
    """`fedshield aggregator`: the config file, the public context, the state directory, how it listens."""
    return [*program, "aggregator", "--config", config, "--public-key", public_key, "--state-dir", state_dir,
            *_flags(("--host", host), ("--port", None if port is None else str(port))), *server.flags()]


def silo_command(config: str, name: str, secret_key: str, workdir: str, aggregator: str, client: ClientCredentials = ClientCredentials(),
                 *, model_cache: str | None = None, program: Sequence[str] = PROGRAM) -> list[str]:
    """`fedshield silo` (also what an "apply" Job runs: a silo agent restarted on its state)."""
    return [*program, "silo", "--config", config, "--name", name, "--secret-key", secret_key, "--workdir", workdir,
            "--aggregator", aggregator, *_flags(("--model-cache", model_cache)), *client.flags()]


def torchrun_program(python: str, module: str, nproc_per_node: int | str, *, master_port: int | str, max_restarts: int = 0,
                     nnodes: int | str = 1, node_rank: str | None = None, master_addr: str | None = None) -> tuple[str, ...]:
    """The ``program`` of a silo that runs as several ranks: ``python -m torch.distributed.run`` starting ``python -m
    module`` ``nproc_per_node`` times on each of ``nnodes`` nodes, restarting the node's group up to ``max_restarts``
    times when one rank fails (values may be ``$(VAR)`` references a pod's environment fills in)."""
    return (python, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node),
            *_flags(("--node-rank", node_rank), ("--master-addr", master_addr)),
            "--max-restarts", str(max_restarts), "--master-port", str(master_port), "-m", module)


def unlearn_command(config: str, silo: str, secret_key: str, workdir: str, aggregator: str, spec: UnlearningSpec, *,
                    users_file: str, requested_by: str, reason: str = "", client: ClientCredentials = ClientCredentials(),
                    model_cache: str | None = None, program: Sequence[str] = PROGRAM) -> list[str]:
    """`fedshield unlearn` in silo mode: forget the users listed in ``users_file`` with the settings of ``spec``."""
    return [*program, "unlearn", "--config", config, "--silo", silo, "--secret-key", secret_key, "--workdir", workdir,
            "--aggregator", aggregator, *_flags(("--model-cache", model_cache)), *client.flags(),
            "--users-file", users_file, "--requested-by", requested_by, "--reason", reason, *spec_flags(spec, UnlearningSpec)]


# --- a spec model <-> command-line flags ------------------------------------------------------

def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _is_sequence(model: type[Spec], field: str) -> bool:
    return "tuple" in str(model.model_fields[field].annotation)


def spec_flags(spec: Spec, model: type[Spec] | None = None) -> list[str]:
    """Flags for every field of ``model`` (default: the spec's class) that is set (None: left to the spec's default)."""
    model = model or type(spec)
    out: list[str] = []
    for field in model.model_fields:
        value = getattr(spec, field)
        if value is None:
            continue
        out += [flag_name(field), ",".join(value) if _is_sequence(model, field) else repr(value) if isinstance(value, float) else str(value)]
    return out


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


def add_spec_arguments(parser: argparse.ArgumentParser, model: type[Spec]) -> None:
    """One flag per field of ``model``: its type, its description and (shown, never repeated as an argparse default) its default."""
    for field, info in model.model_fields.items():
        kind: Any = _comma_list if _is_sequence(model, field) else type(info.default) if info.default is not None else str
        parser.add_argument(flag_name(field), dest=f"spec_{field}", type=kind, default=None,
                            help=f"{info.description} (default: {info.default})")


def spec_from_args(args: argparse.Namespace, model: type[S]) -> S:
    """The spec the flags of ``add_spec_arguments`` give (unset flags: the spec's defaults)."""
    given = {field: getattr(args, f"spec_{field}") for field in model.model_fields if getattr(args, f"spec_{field}", None) is not None}
    return model.model_validate(given)
