"""The tokenizer service, declared once (torch-free: the CLI, the gateway and the chart read it)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.common.model import TensorSpec
from services.common.settings import ServiceSettings
from services.common.spec import ModelSpec, ServiceSpec, TypedSpec

MODEL_NAME = "tokenizer"
PLATFORM = "huggingface_tokenizers"
INPUTS = (TensorSpec("TEXT", "BYTES", (-1,)), TensorSpec("TEXT_PAIR", "BYTES", (-1,), optional=True))
OUTPUTS = tuple(TensorSpec(name, "INT64", (-1, -1)) for name in ("INPUT_IDS", "ATTENTION_MASK", "TOKEN_TYPE_IDS"))
MAKE = "maas models export-tokenizer"


class TokenizerSettings(ServiceSettings):
    """The tokenizer service, and the limits on the text it takes in one request."""

    model_config = SettingsConfigDict(env_prefix="MAAS_TOKENIZER_")
    port: int = Field(50052, ge=0, le=65535)
    max_texts: int = Field(1024, gt=0, description="Texts per request; more is RESOURCE_EXHAUSTED.")
    max_text_bytes: int = Field(100_000, gt=0, description="UTF-8 bytes per text; more is RESOURCE_EXHAUSTED.")
    max_request_bytes: int = Field(
        1 << 20, gt=0, description="UTF-8 bytes of all texts (and pairs) per request; more is RESOURCE_EXHAUSTED."
    )
    max_request_tokens: int = Field(
        1024 * 512,
        gt=0,
        description="Token ids per Detokenize request (what the largest Tokenize answer holds); more is "
        "RESOURCE_EXHAUSTED.",
    )
    default_max_length: int = Field(256, ge=2, le=512, description="Tokens per sequence when a request names none.")


SPEC = ServiceSpec(
    name="tokenizer",
    settings=TokenizerSettings,
    models=(ModelSpec(MODEL_NAME, "services.tokenizer.model:WordPieceTokenizer", make=MAKE),),
    typed=TypedSpec(
        "maas.tokenizer.v1.tokenizer_pb2",
        "TokenizerService",
        "services.tokenizer.servicer:TokenizerServicer",
        {"Tokenize": MODEL_NAME, "Detokenize": MODEL_NAME},
    ),
    group=0,
)
