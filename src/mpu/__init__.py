"""MPU: privacy-preserving unlearning with multiple perturbed, function-preserving copies.

`from mpu import Server` gives the server-side job (publish copies, aggregate updates);
the client side lives in `mpu.client`. Heavy modules are imported lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["Server", "__version__"]


def __getattr__(name: str):
    if name == "Server":
        from mpu.server.job import Server

        return Server
    raise AttributeError(f"module 'mpu' has no attribute {name!r}")
