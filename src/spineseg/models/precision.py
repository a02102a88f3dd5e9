"""Which reduced precision this machine computes natively (pure torch, reads no files).

Shared by inference (``PredictConfig.precision="auto"``) and training (``TrainConfig.precision``):
bfloat16 pays only where the CPU has the instructions; elsewhere oneDNN emulates it, slower than
float32.
"""

from __future__ import annotations

import torch


def native_cpu_bfloat16() -> bool:
    """Whether this CPU runs bfloat16 convolutions in hardware (AVX-512 BF16 or AMX tiles).

    torch exposes the CPUID checks only as private helpers; a torch without them counts as no
    native support.
    """
    checks = [getattr(torch.cpu, name, None)
              for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:
        return False
