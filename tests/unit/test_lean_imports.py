"""The torch-free images stay torch-free: the CLI, the tokenizer and the gateway never import torch."""

from __future__ import annotations

import subprocess

from tests.conftest import PYTHON, REPO_ROOT


def test_cli_tokenizer_and_gateway_import_without_torch():
    code = (
        "import sys, services.cli.main, services.tokenizer.servicer, services.tokenizer.model, services.common.server, "
        "services.gateway.hosting, services.cli.infer; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([PYTHON, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)
