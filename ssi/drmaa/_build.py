"""Builds libdrmaa.so.1: the DRMAA 1.0 C binding, implemented in Python through cffi's
embedding mode.

    drmaa_run_job(...)            public C function (generated below, exported)
      └─ ssi_ready()              once: start Python (fixed home and sys.path), else
      │                           DRMAA_ERRNO_DRMS_INIT_FAILED with the reason
      └─ ssi_py_run_job(...)      ffi.embedding_api: @ffi.def_extern in _embed.py
           └─ ssi.drmaa.session   the semantics, in plain Python

Python paths are recorded at build time (`PythonLayout.current()`: the building
interpreter's home, its stdlib directories and its environment's site-packages), so
that the interpreter a C program starts through us ignores PATH, PYTHONPATH and
PYTHONHOME; the library's RUNPATH names the libpython it was linked with, and the
start refuses any other copy of libpython the process may have loaded instead.
Packagers override the recorded paths with SSI_DRMAA_PYTHON_HOME and SSI_DRMAA_SITE_DIRS
(os.pathsep-separated).

This file is imported by path from setup.py (no package imports: the build
environment has only setuptools and cffi) and by the tests (`build(dir, layout)`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
HEADER = HERE / "drmaa.h"
SONAME = "libdrmaa.so.1"
LINKNAME = "libdrmaa.so"
MODULE = "_ssi_drmaa"
BUILD_ID_MARK = "SSI_DRMAA_BUILD_ID="

# Every function of the DRMAA 1.0 C binding, as drmaa.h declares it: (return type,
# name, parameters). drmaa_strerror is plain C (it must work with no Python at all);
# every other one is a C wrapper around a Python implementation named ssi_py_<name>.
_DECL = re.compile(r"^(int|void|const char \*)\s*(drmaa_\w+)\(([^)]*)\);", re.M)


def _api() -> tuple[tuple[str, str, str], ...]:
    found = _DECL.findall(HEADER.read_text())
    return tuple(
        (ret.strip(), name, " ".join(params.split())) for ret, name, params in found
    )


API = _api()

# drmaa_strerror's texts, by code (the C side has no Python to ask).
ERROR_TEXTS = (
    "success",
    "internal error",
    "could not contact the DRM system (ssid)",
    "authorization failure",
    "invalid argument",
    "no active DRMAA session",
    "out of memory",
    "invalid contact string",
    "the default contact string could not be used",
    "no default contact string selected",
    "the DRM system could not be initialized",
    "a DRMAA session is already active",
    "the DRM system could not be disengaged",
    "invalid attribute format",
    "invalid attribute value",
    "conflicting attribute values",
    "try later",
    "denied by the DRM system",
    "invalid job",
    "the job is not suspended: it cannot be resumed",
    "the job is not running: it cannot be suspended",
    "the job cannot be held",
    "the job is not held: it cannot be released",
    "timed out",
    "no resource usage for the job",
    "no more elements",
)

# Types and the C helpers Python calls; the Python side of each drmaa_* is declared
# through ffi.embedding_api() from API.
CDEF_TYPES = """
struct drmaa_job_template_s { int unused; };
struct drmaa_attr_names_s { int unused; };
struct drmaa_attr_values_s { int unused; };
struct drmaa_job_ids_s { int unused; };
typedef struct drmaa_job_template_s drmaa_job_template_t;
typedef struct drmaa_attr_names_s drmaa_attr_names_t;
typedef struct drmaa_attr_values_s drmaa_attr_values_t;
typedef struct drmaa_job_ids_s drmaa_job_ids_t;

void ssi_set_init_error(const char *message);
void ssi_mark_attached(void);
int ssi_python_owned(void);
const char *ssi_getenv(const char *name);
char **ssi_environ(void);
const char *ssi_build_id(void);
"""

INIT_CODE = """
SITE_DIRS = {site_dirs}
import sys
try:
    import importlib.util
    from {module} import lib as _lib
    if _lib.ssi_python_owned() or importlib.util.find_spec("ssi") is None:
        import site
        for _dir in SITE_DIRS:
            site.addsitedir(_dir)
    from ssi.drmaa import _embed
    _embed.attach()
except BaseException as _e:
    from {module} import lib as _lib
    _why = "cannot load ssi's DRMAA implementation: %s: %s (sys.path: %s)" % (
        type(_e).__name__, _e, sys.path)
    _lib.ssi_set_init_error(_why.encode("utf-8", "replace")[:1000])
"""

C_SOURCE = r"""
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "drmaa.h"

struct drmaa_job_template_s {{ int unused; }};
struct drmaa_attr_names_s {{ int unused; }};
struct drmaa_attr_values_s {{ int unused; }};
struct drmaa_job_ids_s {{ int unused; }};

#define SSI_PYTHON_HOME {home}
#define SSI_PYTHON_EXE {executable}
#define SSI_LIBPYTHON {libpython}
static const char *const ssi_search_path[] = {{ {search_path}, NULL }};
static const char ssi_build_mark[] = {build_mark};
static const char *const ssi_error_texts[] = {{ {error_texts} }};

{prototypes}

static pthread_once_t ssi_once = PTHREAD_ONCE_INIT;
static int ssi_ok;                /* Python is up and our functions are attached */
static int ssi_owns_python;       /* we started Python: the host is not Python */
static volatile int ssi_attached; /* set by the init code when _embed is ready */
static char ssi_error[1024];      /* why not, when not */
static __thread int ssi_depth;    /* > 0 while this thread runs one of our calls */
static int ssi_fork_held;
static PyGILState_STATE ssi_fork_gil;

void ssi_set_init_error(const char *message)
{{
    snprintf(ssi_error, sizeof ssi_error, "%s", message);
}}

void ssi_mark_attached(void) {{ ssi_attached = 1; }}
int ssi_python_owned(void) {{ return ssi_owns_python; }}
const char *ssi_getenv(const char *name) {{ return getenv(name); }}
char **ssi_environ(void) {{ return environ; }}
const char *ssi_build_id(void) {{ return ssi_build_mark + sizeof "{mark}" - 1; }}

/* fork() in a C host that has let us start Python: the child gets a usable
   interpreter (the GIL and the thread states are reset as os.fork() does), and the
   at-fork hooks of ssi.drmaa drop the parent's connections and locks. A Python host
   does this itself, and a fork from inside one of our calls is Python's own. */
static void ssi_atfork_prepare(void)
{{
    ssi_fork_held = 0;
    if (!ssi_owns_python || !ssi_ok || ssi_depth > 0)
        return;
    ssi_fork_gil = PyGILState_Ensure();
    PyOS_BeforeFork();
    ssi_fork_held = 1;
}}

static void ssi_atfork_parent(void)
{{
    if (!ssi_fork_held)
        return;
    ssi_fork_held = 0;
    PyOS_AfterFork_Parent();
    PyGILState_Release(ssi_fork_gil);
}}

static void ssi_atfork_child(void)
{{
    if (!ssi_fork_held)
        return;
    ssi_fork_held = 0;
    PyOS_AfterFork_Child();
    PyGILState_Release(ssi_fork_gil);
}}

/* The libpython this process resolved Py_* to must be the one we were built for:
   another copy with the same SONAME (LD_LIBRARY_PATH, LD_PRELOAD, a distribution's
   libpython) would start with the wrong standard library, or crash. */
static int ssi_same_libpython(void)
{{
    Dl_info info;
    char real[PATH_MAX];
    if (!dladdr((void *)&Py_InitializeFromConfig, &info) || !info.dli_fname)
        return 1;
    if (!realpath(info.dli_fname, real))
        return 1;
    if (strcmp(real, SSI_LIBPYTHON) == 0)
        return 1;
    snprintf(ssi_error, sizeof ssi_error,
             "libdrmaa was built for %s but this process uses %s "
             "(LD_LIBRARY_PATH? LD_PRELOAD?): not starting Python",
             SSI_LIBPYTHON, real);
    return 0;
}}

static void ssi_status_error(const char *what, PyStatus st)
{{
    snprintf(ssi_error, sizeof ssi_error, "cannot start Python (home %s): %s: %s%s%s",
             SSI_PYTHON_HOME, what, st.func ? st.func : "", st.func ? ": " : "",
             st.err_msg ? st.err_msg : "failed");
}}

static int ssi_start_python(void)
{{
    PyStatus st;
    PyPreConfig pre;
    PyConfig cfg;

    if (!ssi_same_libpython())
        return 0;
    PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1;  /* paths and stdio in UTF-8 whatever the caller's locale */
    st = Py_PreInitialize(&pre);
    if (PyStatus_Exception(st)) {{
        ssi_status_error("pre-initialization", st);
        return 0;
    }}
    /* Isolated: PYTHONHOME, PYTHONPATH, PATH, the user site and the current
       directory play no part. No signal handlers: the host keeps its own. */
    PyConfig_InitIsolatedConfig(&cfg);
    cfg.install_signal_handlers = 0;
    cfg.site_import = 0;
    cfg.write_bytecode = 0;
    cfg.parse_argv = 0;
    cfg.module_search_paths_set = 1;
    st = PyConfig_SetBytesString(&cfg, &cfg.home, SSI_PYTHON_HOME);
    if (!PyStatus_Exception(st))
        st = PyConfig_SetBytesString(&cfg, &cfg.program_name, SSI_PYTHON_EXE);
    if (!PyStatus_Exception(st))
        st = PyConfig_SetBytesString(&cfg, &cfg.executable, SSI_PYTHON_EXE);
    for (int i = 0; ssi_search_path[i] && !PyStatus_Exception(st); i++) {{
        wchar_t *w = Py_DecodeLocale(ssi_search_path[i], NULL);
        if (!w) {{
            st = PyStatus_NoMemory();
            break;
        }}
        st = PyWideStringList_Append(&cfg.module_search_paths, w);
        PyMem_RawFree(w);
    }}
    if (PyStatus_Exception(st)) {{
        ssi_status_error("configuration", st);
        PyConfig_Clear(&cfg);
        return 0;
    }}
    st = Py_InitializeFromConfig(&cfg);
    PyConfig_Clear(&cfg);
    if (PyStatus_Exception(st)) {{
        ssi_status_error("initialization", st);
        return 0;
    }}
    ssi_owns_python = 1;
    PyEval_SaveThread();  /* every call takes the GIL for itself */
    pthread_atfork(ssi_atfork_prepare, ssi_atfork_parent, ssi_atfork_child);
    return 1;
}}

static void ssi_start(void)
{{
    if (!Py_IsInitialized() && !ssi_start_python())
        return;
    if (cffi_start_python() != 0) {{
        if (!ssi_error[0])
            snprintf(ssi_error, sizeof ssi_error,
                     "the Python side of libdrmaa failed to load (cffi's report is "
                     "on stderr)");
        return;
    }}
    if (!ssi_attached) {{
        if (!ssi_error[0])
            snprintf(ssi_error, sizeof ssi_error,
                     "the Python side of libdrmaa did not attach its functions");
        return;
    }}
    ssi_ok = 1;
}}

static int ssi_ready(char *diag, size_t diag_len)
{{
    pthread_once(&ssi_once, ssi_start);
    if (ssi_ok)
        return 1;
    if (diag && diag_len)
        snprintf(diag, diag_len, "%s", ssi_error);
    return 0;
}}

/* Around each call into Python: SIGPIPE is blocked in this thread, and one that the
   call raised (a write to an ssid that went away) is consumed, so that a C host
   that does not ignore SIGPIPE is not killed by it. */
struct ssi_call {{
    sigset_t old;
    int pipe_was_pending;
}};

static void ssi_enter(struct ssi_call *c)
{{
    sigset_t pipe, pending;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, &c->old);
    sigpending(&pending);
    c->pipe_was_pending = sigismember(&pending, SIGPIPE);
    ssi_depth++;
}}

static void ssi_leave(struct ssi_call *c)
{{
    sigset_t pipe, pending;
    ssi_depth--;
    sigpending(&pending);
    if (!c->pipe_was_pending && sigismember(&pending, SIGPIPE)) {{
        struct timespec zero = {{0, 0}};
        sigemptyset(&pipe);
        sigaddset(&pipe, SIGPIPE);
        sigtimedwait(&pipe, NULL, &zero);
    }}
    pthread_sigmask(SIG_SETMASK, &c->old, NULL);
}}

const char *drmaa_strerror(int drmaa_errno)
{{
    int n = (int)(sizeof ssi_error_texts / sizeof ssi_error_texts[0]);
    if (drmaa_errno < 0 || drmaa_errno >= n)
        return "unknown DRMAA error code";
    return ssi_error_texts[drmaa_errno];
}}

{wrappers}
"""


@dataclass(frozen=True)
class PythonLayout:
    """Where the interpreter a C host starts through libdrmaa comes from."""

    home: str  # sys.base_prefix: the standard library's installation
    executable: str  # sys.executable (the environment's python)
    stdlib_path: tuple[str, ...]  # stdlib zip, stdlib, lib-dynload
    site_dirs: tuple[str, ...]  # where ssi and its dependencies are installed
    include: str  # Python.h
    libdir: str  # the directory of libpythonX.Y.so: the library's RUNPATH
    library: str  # "python3.11" (-l)
    libpython: str  # resolved path of the shared libpython linked against

    @classmethod
    def current(cls) -> PythonLayout:
        """The building interpreter's layout (site dirs: its environment's)."""
        if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
            raise NoSharedPython(
                f"{sys.executable} has no shared libpython (built without "
                "--enable-shared): libdrmaa cannot embed it"
            )
        home = os.environ.get("SSI_DRMAA_PYTHON_HOME") or sys.base_prefix
        bases = {os.path.realpath(sys.base_prefix), os.path.realpath(home)}
        stdlib = [
            p
            for p in sys.path
            if p
            and any(os.path.realpath(p).startswith(b + os.sep) for b in bases)
            and "site-packages" not in p
        ]
        if os.environ.get("SSI_DRMAA_SITE_DIRS"):
            site_dirs = os.environ["SSI_DRMAA_SITE_DIRS"].split(os.pathsep)
        else:
            paths = sysconfig.get_paths()
            site_dirs = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
        libdir = str(sysconfig.get_config_var("LIBDIR"))
        soname = str(
            sysconfig.get_config_var("INSTSONAME")
            or sysconfig.get_config_var("LDLIBRARY")
        )
        # the environment's python3 (not whichever alias started the build), so
        # that the recorded layout, hence the build id, does not depend on it
        executable = os.path.join(sys.prefix, "bin", "python3")
        if not os.path.exists(executable):
            executable = sys.executable
        return cls(
            home=home,
            executable=executable,
            stdlib_path=tuple(stdlib),
            site_dirs=tuple(site_dirs),
            include=sysconfig.get_paths()["include"],
            libdir=libdir,
            library="python" + str(sysconfig.get_config_var("LDVERSION")),
            libpython=os.path.realpath(os.path.join(libdir, soname)),
        )

    def but(self, **changes: object) -> PythonLayout:
        return replace(self, **changes)  # type: ignore[arg-type]


class BuildError(Exception):
    pass


class NoSharedPython(BuildError):
    """The interpreter has no libpython to embed (built without --enable-shared)."""


def _c_string(s: str) -> str:
    return json.dumps(s)  # a JSON string literal is a valid C one for our paths


def _param_names(params: str) -> list[str]:
    names = []
    for p in params.split(","):
        p = p.strip().removesuffix("[]")
        names.append(re.findall(r"\w+", p)[-1])
    return names


def _wrapper(ret: str, name: str, params: str) -> str:
    """The exported C function: start Python if needed, then call its Python side."""
    py = "ssi_py_" + name.removeprefix("drmaa_")
    args = ", ".join(_param_names(params))
    diag = "error_diagnosis" in params
    ready = "ssi_ready(error_diagnosis, error_diag_len)" if diag else "ssi_ready(0, 0)"
    lines = [f"{ret} {name}({params})", "{", "    struct ssi_call c;"]
    if ret == "void":
        lines += [f"    if (!{ready})", "        return;", "    ssi_enter(&c);"]
        lines += [f"    {py}({args});", "    ssi_leave(&c);", "}"]
        return "\n".join(lines) + "\n"
    lines += ["    int rc;", f"    if (!{ready})"]
    lines += ["        return DRMAA_ERRNO_DRMS_INIT_FAILED;"]
    if diag:
        lines += ["    if (error_diagnosis && error_diag_len)"]
        lines += ["        error_diagnosis[0] = 0;"]
    lines += ["    ssi_enter(&c);", f"    rc = {py}({args});", "    ssi_leave(&c);"]
    lines += ["    return rc;", "}"]
    return "\n".join(lines) + "\n"


def python_side() -> list[tuple[str, str, str]]:
    """(return type, Python-side name, parameters) of every function implemented in
    Python."""
    return [
        (ret, "ssi_py_" + name.removeprefix("drmaa_"), params)
        for ret, name, params in API
        if name != "drmaa_strerror"
    ]


def build_id(layout: PythonLayout) -> str:
    """What the library's behaviour depends on: this file, the header, the layout."""
    import cffi  # type: ignore[import-untyped]

    h = hashlib.sha256()
    h.update(cffi.__version__.encode())
    h.update(Path(__file__).read_bytes())
    h.update(HEADER.read_bytes())
    h.update(json.dumps(asdict(layout), sort_keys=True).encode())
    return h.hexdigest()[:16]


def make_ffi(layout: PythonLayout) -> Any:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF_TYPES)
    ffi.embedding_api(
        "\n".join(f"{ret} {name}({params});" for ret, name, params in python_side())
    )
    ffi.embedding_init_code(
        INIT_CODE.format(site_dirs=repr(list(layout.site_dirs)), module=MODULE)
    )
    prototypes = "\n".join(
        f"{ret} {name}({params});" for ret, name, params in python_side()
    )
    wrappers = "\n".join(
        _wrapper(ret, name, params)
        for ret, name, params in API
        if name != "drmaa_strerror"
    )
    ident = build_id(layout)
    source = C_SOURCE.format(
        home=_c_string(layout.home),
        executable=_c_string(layout.executable),
        libpython=_c_string(layout.libpython),
        search_path=", ".join(
            _c_string(p) for p in (*layout.stdlib_path, *layout.site_dirs)
        ),
        build_mark=_c_string(BUILD_ID_MARK + ident),
        mark=BUILD_ID_MARK,
        error_texts=", ".join(_c_string(t) for t in ERROR_TEXTS),
        prototypes=prototypes,
        wrappers=wrappers,
    )
    ffi.set_source(MODULE, source)
    return ffi


VERSION_SCRIPT = "{ global: drmaa_*; local: *; };\n"


def build(
    out_dir: Path | str,
    layout: PythonLayout | None = None,
    *,
    verbose: bool = False,
) -> Path:
    """Compiles libdrmaa.so.1 into out_dir, with drmaa.h and the libdrmaa.so link
    beside it; returns the library's path. The library replaces an older one
    atomically (a running program keeps the one it loaded)."""
    layout = layout or PythonLayout.current()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ffi = make_ffi(layout)
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory(prefix="ssi-drmaa-build-") as tmp:
        c_file = Path(tmp) / f"{MODULE}.c"
        ffi.emit_c_code(str(c_file))
        script = Path(tmp) / "exports.map"
        script.write_text(VERSION_SCRIPT)
        lib_tmp = Path(tmp) / SONAME
        cmd = [
            *cc,
            "-shared",
            "-fPIC",
            "-O2",
            "-pthread",
            "-Wall",
            "-Wno-unused-function",
            f"-I{layout.include}",
            f"-I{HEADER.parent}",
            str(c_file),
            "-o",
            str(lib_tmp),
            f"-Wl,-soname,{SONAME}",
            f"-L{layout.libdir}",
            f"-l{layout.library}",
            f"-Wl,-rpath,{layout.libdir}",
            "-Wl,--enable-new-dtags",  # RUNPATH
            f"-Wl,--version-script={script}",
            "-Wl,-z,nodelete",  # an interpreter cannot be unloaded
            "-Wl,--no-undefined",
            "-ldl",
        ]
        if verbose:
            print(" ".join(shlex.quote(c) for c in cmd), file=sys.stderr)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise BuildError(f"compiling libdrmaa failed:\n{done.stderr}")
        target = out / SONAME
        staged = out / f".{SONAME}.{os.getpid()}"
        staged.write_bytes(lib_tmp.read_bytes())
        staged.chmod(0o755)
        os.replace(staged, target)
    if os.path.realpath(HEADER) != os.path.realpath(out / "drmaa.h"):
        (out / "drmaa.h").write_bytes(HEADER.read_bytes())
    link = out / LINKNAME
    if not (link.is_symlink() and os.readlink(link) == SONAME):
        link_tmp = out / f".{LINKNAME}.{os.getpid()}"
        link_tmp.unlink(missing_ok=True)
        link_tmp.symlink_to(SONAME)
        os.replace(link_tmp, link)
    return target


def built_id(library: Path | str) -> str | None:
    """The build id recorded in a built library, None if none is readable."""
    try:
        data = Path(library).read_bytes()
    except OSError:
        return None
    found = re.search(re.escape(BUILD_ID_MARK.encode()) + rb"([0-9a-f]{16})", data)
    return found.group(1).decode() if found else None


def ensure_built(out_dir: Path | str = HERE) -> Path:
    """The library in out_dir, rebuilt first if missing or built from other sources
    or for another interpreter layout."""
    layout = PythonLayout.current()
    target = Path(out_dir) / SONAME
    if built_id(target) != build_id(layout):
        build(out_dir, layout)
    return target


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build libdrmaa.so.1")
    ap.add_argument("out_dir", nargs="?", default=str(HERE))
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    print(build(a.out_dir, verbose=a.verbose))
