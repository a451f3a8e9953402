"""Model loading: GGUF files, Hugging Face safetensors directories, named models, tokenizers."""

from memjax.io.errors import ModelFileError
from memjax.io.gguf_loader import load_gguf
from memjax.io.layout import param_shapes
from memjax.io.registry import KNOWN_MODELS, find_model, load_checkpoint
from memjax.io.safetensors_loader import load_hf_dir, read_safetensors
from memjax.io.tokenizer import Tokenizer

__all__ = [
    "KNOWN_MODELS", "ModelFileError", "Tokenizer", "find_model", "load_checkpoint", "load_gguf",
    "load_hf_dir", "param_shapes", "read_safetensors",
]
