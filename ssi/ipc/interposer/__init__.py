"""The LD_PRELOAD interposer (ssi_ipc_preload.c) and how to build it.

    cc -shared -fPIC -O2 -Wall -o ssi_ipc_preload.so ssi_ipc_preload.c -ldl -lpthread

Installed next to this file as `ssi_ipc_preload.so` by the package build (setup.py),
or built anywhere with build_interposer(). A job runs with
LD_PRELOAD=<library_path()> and SSI_IPC_SOCKET=<the preload server's socket>.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

__all__ = ["SOURCE", "LIBRARY", "compile_command", "build_interposer", "library_path"]

SOURCE = Path(__file__).with_name("ssi_ipc_preload.c")
LIBRARY = "ssi_ipc_preload.so"


def compile_command(output: str | os.PathLike[str], cc: str | None = None) -> list[str]:
    """The command that builds the interposer into `output` ($CC, else Python's CC,
    else cc)."""
    compiler = shlex.split(
        cc or os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    )
    return [
        *compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-o",
        str(output),
        str(SOURCE),
        "-ldl",
        "-lpthread",
    ]


def build_interposer(output_dir: str | os.PathLike[str], cc: str | None = None) -> Path:
    """Compile the interposer into `output_dir`; its path. CalledProcessError (with
    the compiler's output) when the compiler fails."""
    out = Path(output_dir) / LIBRARY
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(compile_command(out, cc), check=True, capture_output=True, text=True)
    return out


def library_path() -> Path | None:
    """The installed interposer, if the package build produced it."""
    path = SOURCE.with_name(LIBRARY)
    return path if path.exists() else None
