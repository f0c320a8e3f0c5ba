"""How the command line reaches a server: TLS files and an API key, the same options on every command."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from services.common.auth import AUTHORIZATION_KEY
from services.common.server import host_port
from services.common.tls import ClientTls, TlsFilesError
from services.gateway.spec import GatewaySettings

API_KEY_ENV = "MAAS_API_KEY"


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add `--tls-ca`, `--tls-cert`, `--tls-key` and `--api-key` to a command."""
    parser.add_argument("--tls-ca", type=Path, help="PEM CA to verify the server with; dials with TLS")
    parser.add_argument("--tls-cert", type=Path, help="PEM client certificate to present (mTLS), with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    parser.add_argument("--api-key", help=f"API key sent as a bearer token (default: ${API_KEY_ENV})")


def client_tls(args: argparse.Namespace) -> ClientTls:
    """The TLS files the options name (none: plaintext).

    Raises:
        SystemExit: a certificate without its key, or a key without its certificate (status 2).
    """
    try:
        return ClientTls(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsFilesError as exc:
        sys.stderr.write(f"maas: {exc}\n")
        raise SystemExit(2) from None


def metadata(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    """The call metadata the options ask for: the API key (`--api-key`, else `$MAAS_API_KEY`), if any."""
    key = args.api_key or os.environ.get(API_KEY_ENV)
    return ((AUTHORIZATION_KEY, f"Bearer {key}"),) if key else ()


def gateway_address(args: argparse.Namespace) -> str:
    """`--address`, else the gateway's own settings (`MAAS_GATEWAY_HOST:MAAS_GATEWAY_PORT`)."""
    if args.address:
        return args.address
    settings = GatewaySettings()
    return host_port(settings.host, settings.port)
