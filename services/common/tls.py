"""TLS from PEM files: server credentials that follow their files on disk, and client credentials.

A server's certificate, key and client CA are read again when any of the files changes (a Kubernetes
Secret update swaps them), without a restart: gRPC asks `CertificateFiles.fetch` before every new
connection's handshake, and a changed, consistent set is served from that connection on. Connections
already open keep the certificate they were made with.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

log = logging.getLogger(__name__)


class TlsFilesError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and the problem."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsFilesError(f"{path}: {exc.strerror or exc}") from None


def _check_pair(cert_file: Path, key_file: Path) -> None:
    """Raise TlsFilesError unless the key belongs to the certificate (a half-updated Secret would not)."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFilesError(f"{cert_file} and {key_file} are not a certificate and its key: {exc}") from None


def _check_ca(ca_file: Path) -> None:
    try:
        ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError) as exc:
        raise TlsFilesError(f"{ca_file} is not a PEM CA bundle: {exc}") from None


class CertificateFiles:
    """A server's certificate chain, key and (for mTLS) client CA, re-read when they change on disk."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None = None) -> None:
        """Read and check the files once.

        Args:
            cert_file: PEM certificate chain the server presents.
            key_file: PEM private key of that certificate.
            client_ca_file: PEM CA(s) a client's certificate must chain to; None: no client certificates.

        Raises:
            TlsFilesError: a file is missing, or the key does not match the certificate.
        """
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca_file = client_ca_file
        self._stamp = self._stat()
        self._initial = self._configuration()

    @property
    def paths(self) -> tuple[Path, ...]:
        """The files followed."""
        return (self.cert_file, self.key_file) + ((self.client_ca_file,) if self.client_ca_file else ())

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        stamps = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((0, 0, 0))
            else:
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(stamps)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        _check_pair(self.cert_file, self.key_file)
        ca = None
        if self.client_ca_file is not None:
            _check_ca(self.client_ca_file)
            ca = _read(self.client_ca_file)
        return grpc.ssl_server_certificate_configuration(
            [(_read(self.key_file), _read(self.cert_file))], root_certificates=ca
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate fetcher: the new configuration if the files changed, else None (keep serving
        the current one). A changed set that does not hold together yet (a key from another certificate)
        is logged and skipped; the next connection looks again."""
        stamp = self._stat()
        if stamp == self._stamp:
            return None
        try:
            configuration = self._configuration()
        except TlsFilesError as exc:
            log.warning("certificate files changed but cannot be used yet; keeping the current ones: %s", exc)
            return None
        self._stamp = stamp
        log.info("serving the certificate in %s from now on", self.cert_file)
        return configuration

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files; clients must present a certificate when a client CA is set."""
        return grpc.dynamic_ssl_server_credentials(
            self._initial, self.fetch, require_client_authentication=self.client_ca_file is not None
        )


@dataclass(frozen=True)
class ClientTls:
    """What a client needs to dial a TLS server: the CA to trust, and its own certificate for mTLS."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise TlsFilesError("a client certificate needs its key, and a key its certificate")

    @property
    def enabled(self) -> bool:
        """True when any file is named: the client dials with TLS."""
        return any(path is not None for path in (self.ca_file, self.cert_file))

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now (the system's CAs when no CA file is named).

        Raises:
            TlsFilesError: a file is missing, or the key does not match the certificate.
        """
        if self.cert_file is not None and self.key_file is not None:
            _check_pair(self.cert_file, self.key_file)
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file) if self.ca_file else None,
            private_key=_read(self.key_file) if self.key_file else None,
            certificate_chain=_read(self.cert_file) if self.cert_file else None,
        )

    def stamp(self) -> tuple[tuple[int, int], ...]:
        """The files' modification times and sizes, to notice a rotation."""
        stamps = []
        for path in (self.ca_file, self.cert_file, self.key_file):
            try:
                st = os.stat(path) if path else None
            except OSError:
                st = None
            stamps.append((st.st_mtime_ns, st.st_size) if st else (0, 0))
        return tuple(stamps)


def secure_channel(target: str, tls: ClientTls, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A blocking channel to `target`: TLS when `tls` names files, else plaintext.

    Args:
        target: a gRPC target.
        tls: the client's TLS files.
        options: channel options.
    """
    if tls.enabled:
        return grpc.secure_channel(target, tls.credentials(), options=options)
    return grpc.insecure_channel(target, options=options)


def aio_channel(target: str, tls: ClientTls, options: list[tuple[str, object]] | None = None) -> grpc.aio.Channel:
    """A grpc.aio channel to `target`: TLS when `tls` names files, else plaintext.

    Args:
        target: a gRPC target.
        tls: the client's TLS files.
        options: channel options.
    """
    if tls.enabled:
        return grpc.aio.secure_channel(target, tls.credentials(), options=options)
    return grpc.aio.insecure_channel(target, options=options)
