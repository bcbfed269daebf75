"""Model checkpoints: safetensors bytes of the weights plus the config needed to rebuild them.

The model config is a plain JSON-able dict (a Metaflow artifact): the :class:`ModelConfig`
fields, ``n_items``, the metadata ``cardinalities`` and ``acoustic_dim``. Item metadata is not
stored (it belongs to the dataset); :func:`load_retriever` checks that the metadata it is given
fits the stored shapes. The config is also written into the safetensors header, so a checkpoint
file is self-describing.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from recmodel.core.config import ModelConfig
from recmodel.core.dataset import ItemFeatures
from recmodel.retriever.model import Retriever

CONFIG_KEY = "model_config"  # safetensors metadata key holding the JSON model config
# Settings added after checkpoints were first written, with the value that rebuilds an older
# checkpoint's model (a checkpoint without ``profile_size`` has no long-term profile).
ABSENT_IN_OLD_CHECKPOINTS = {"profile_size": 0, "profile_history": 1_000}


class CheckpointError(ValueError):
    """A checkpoint does not fit the model config or the item metadata it is loaded with."""


def model_config_dict(cfg: ModelConfig, item_features: ItemFeatures) -> dict[str, Any]:
    """Everything needed to rebuild a :class:`Retriever` from a checkpoint."""
    return {
        **dataclasses.asdict(cfg),
        "n_items": item_features.n_items,
        "cardinalities": dict(item_features.cardinalities),
        "acoustic_dim": int(item_features.acoustic.shape[1]),
    }


def state_bytes(model: torch.nn.Module, model_config: dict[str, Any] | None = None) -> bytes:
    """Safetensors bytes of ``model.state_dict()`` (copied to the CPU)."""
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    metadata = None if model_config is None else {CONFIG_KEY: json.dumps(model_config)}
    return st_save(state, metadata=metadata)


def load_state(checkpoint: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, on the CPU."""
    return st_load(checkpoint)


def load_retriever(
    checkpoint: bytes, model_config: dict[str, Any], item_features: ItemFeatures
) -> Retriever:
    """Rebuild a :class:`Retriever` (on the CPU, in eval mode) from a checkpoint.

    Raises:
        CheckpointError: when ``item_features`` does not match the stored catalog size,
            cardinalities or acoustic width, or the weights do not match the config.
    """
    cfg = ModelConfig(
        **{
            f.name: model_config.get(f.name, ABSENT_IN_OLD_CHECKPOINTS.get(f.name))
            for f in dataclasses.fields(ModelConfig)
        }
    )
    _check_features(model_config, item_features)
    model = Retriever(item_features, cfg)
    try:
        model.load_state_dict(load_state(checkpoint), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint does not match its model config: {exc}") from exc
    return model.eval()


def _check_features(model_config: dict[str, Any], item_features: ItemFeatures) -> None:
    found = {
        "n_items": item_features.n_items,
        "cardinalities": dict(item_features.cardinalities),
        "acoustic_dim": int(item_features.acoustic.shape[1]),
    }
    for key, value in found.items():
        if model_config[key] != value:
            raise CheckpointError(
                f"item metadata has {key}={value} but the checkpoint was "
                f"trained with {key}={model_config[key]}"
            )
