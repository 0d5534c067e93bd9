"""Build steps pyproject.toml cannot declare: the kernel_shim cffi module (API mode),
the job init, a small C program every job runs as its PID 1, the cluster IPC
interposer (ssi_ipc_preload.so, LD_PRELOADed by --cluster-ipc jobs), and
libdrmaa.so.1, the DRMAA C library (cffi embedding mode; with drmaa.h and the
libdrmaa.so link beside it in ssi/drmaa/)."""

import importlib.util
import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

INIT_SRC = Path("ssi/jobs/init.c")
INIT_BIN = Path("ssi/jobs/bin/ssi-init")
IPC_PRELOAD_SRC = Path("ssi/ipc/interposer/ssi_ipc_preload.c")
IPC_PRELOAD_LIB = Path("ssi/ipc/interposer/ssi_ipc_preload.so")
DRMAA_BUILD = Path("ssi/drmaa/_build.py")
DRMAA_DIR = Path("ssi/drmaa")


def build_drmaa(targets: list[Path]) -> None:
    """Compiles libdrmaa.so.1 once into the first target, copies it to the others."""
    # By path: the build environment has cffi and setuptools, not ssi's dependencies.
    spec = importlib.util.spec_from_file_location("_ssi_drmaa_build", DRMAA_BUILD)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    try:
        first = mod.build(targets[0])
    except mod.NoSharedPython as e:
        print(f"warning: libdrmaa not built: {e}", file=sys.stderr)
        return
    for target in targets[1:]:
        target.mkdir(parents=True, exist_ok=True)
        for name in (first.name, "drmaa.h"):
            (target / name).write_bytes((first.parent / name).read_bytes())
        (target / first.name).chmod(0o755)
        link = target / "libdrmaa.so"
        link.unlink(missing_ok=True)
        link.symlink_to(first.name)


class BuildExtWithInit(build_ext):
    """build_ext that also compiles the job init and libdrmaa next to the package."""

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
        # the cluster IPC interposer (LD_PRELOAD of `ssi submit --cluster-ipc` jobs)
        preload = [Path(self.build_lib) / IPC_PRELOAD_LIB]
        if self.inplace or self.editable_mode:
            preload.append(IPC_PRELOAD_LIB)
        for target in preload:
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = ["-shared", "-fPIC", "-O2", "-Wall"]
            libs = ["-ldl", "-lpthread"]
            cmd = [*cc, *flags, "-o", str(target), str(IPC_PRELOAD_SRC), *libs]
            subprocess.run(cmd, check=True)
        drmaa = [Path(self.build_lib) / DRMAA_DIR]
        if self.inplace or self.editable_mode:
            drmaa.insert(0, DRMAA_DIR)
        build_drmaa(drmaa)


setup(
    cffi_modules=["kernel_shim/_build.py:ffi"],
    cmdclass={"build_ext": BuildExtWithInit},
)
