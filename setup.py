"""Build steps pyproject.toml cannot declare: the kernel_shim cffi module (API mode) and
the job init, a small C program every job runs as its PID 1."""

import os
import shlex
import subprocess
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SRC = Path("ssi/jobs/init.c")
INIT_BIN = Path("ssi/jobs/bin/ssi-init")


class BuildExtWithInit(build_ext):
    """build_ext that also compiles the job init next to the package."""

    def run(self) -> None:
        super().run()
        targets = [Path(self.build_lib) / INIT_BIN]
        if self.inplace or self.editable_mode:
            targets.append(INIT_BIN)
        cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = ["-O2", "-Wall", "-Werror", "-static"]
            cmd = [*cc, *flags, "-o", str(target), str(INIT_SRC)]
            subprocess.run(cmd, check=True)


setup(
    cffi_modules=["kernel_shim/_build.py:ffi"],
    cmdclass={"build_ext": BuildExtWithInit},
)
