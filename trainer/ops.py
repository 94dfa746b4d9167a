"""DeepSpeed's C++ ops that it would otherwise compile in the middle of the first training.

On a CPU accelerator, DeepSpeed's communication backend compiles its shared-memory all-reduce op
(`ShareMemCommBuilder`, csrc/cpu/comm) the first time a process initialises it, whether or not the
run uses it: 40 s on the 2-core box (65 CPU-seconds), during which every training worker waits and
prints nothing. `make env` runs `python -m trainer.ops` once instead; torch keeps the build under
~/.cache/torch_extensions, and a build made for one environment's path is rebuilt for another's.
An accelerator whose builder is absent or incompatible (not Linux) builds nothing.
"""

from __future__ import annotations

import sys

PREBUILT = ("ShareMemCommBuilder",)


def prebuild() -> dict[str, str]:
    """Build (or find built) the ops in PREBUILT that this machine's accelerator uses: {op name: its library}."""
    from deepspeed.accelerator import get_accelerator

    built = {}
    for name in PREBUILT:
        builder = get_accelerator().create_op_builder(name)
        if builder is not None and builder.is_compatible():
            built[builder.absolute_name()] = builder.load(verbose=False).__file__
    return built


def main() -> int:
    built = prebuild()
    print("\n".join(f"deepspeed op {name}: {path}" for name, path in built.items()) or "deepspeed ops: none to build here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
