"""The exported model file: network weights plus everything inference needs to rebuild and use them."""

from __future__ import annotations

import dataclasses
import io
from typing import Any

import torch

from common.config import ConfigError
from common.storage import filesystem, write_bytes_atomic
from model.network import NetworkConfig, SegNet, build_network

FORMAT_VERSION = 1


def save_model(url: str, net: SegNet, teacher: dict[str, Any], prototypes: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> None:
    """Write a plain PyTorch file (local or fsspec URL), atomically.

    teacher: how the CLIP teacher was made (TeacherConfig as a dict), so text prompts at inference
    go through the same text encoder; prototypes: {"names": [...], "known": [C, D], "unknown": [U, D]}.
    """
    payload = {
        "format_version": FORMAT_VERSION,
        "network_config": dataclasses.asdict(net.cfg),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "teacher": teacher,
        "prototypes": prototypes or {},
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    fs, path = filesystem(url)
    write_bytes_atomic(fs, path, buffer.getvalue())


def load_model(url: str, device: str | torch.device = "cpu") -> tuple[SegNet, dict[str, Any]]:
    """The network in eval mode and the file's metadata (teacher, prototypes, extra)."""
    fs, path = filesystem(url)
    if not fs.isfile(path):
        raise ConfigError(f"model file {url} not found")
    with fs.open(path, "rb") as fh:
        try:
            payload = torch.load(io.BytesIO(fh.read()), map_location="cpu", weights_only=False)
        except Exception as e:  # pickle, zip and torch's own errors alike: the file is no model file
            raise ConfigError(f"{url} is not a model file ({type(e).__name__}); trainer.export writes them") from None
    found = payload.get("format_version") if isinstance(payload, dict) else type(payload).__name__
    if found != FORMAT_VERSION:
        raise ConfigError(f"{url} is not a model file of format {FORMAT_VERSION} (got {found!r}); "
                          "export it with trainer.export")
    net = build_network(NetworkConfig(**payload["network_config"]))
    net.load_state_dict(payload["state_dict"])
    return net.to(device).eval(), {k: payload[k] for k in ("teacher", "prototypes", "extra")}
