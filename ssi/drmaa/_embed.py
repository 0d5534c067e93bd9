"""The Python side of libdrmaa's C functions: one @ffi.def_extern per drmaa_*,
imported by the library's embedding init code (never by anything else).

    C: drmaa_wait(...) ─▶ ssi_py_wait(...) here: C arguments → Python values
         ─▶ session.current().wait(...) ─▶ results written to the caller's buffers
         DrmaaError → its code, its message in error_diagnosis
         any other exception → DRMAA_ERRNO_INTERNAL_ERROR, "internal error: ..."

Opaque handles (job templates, string vectors) are small cffi allocations kept
alive in registries keyed by address: a pointer we did not hand out, or one already
released, is recognized without being dereferenced (DRMAA_ERRNO_INVALID_ARGUMENT).
Buffers may be NULL or short: what does not fit is cut, always NUL-terminated.
"""

from __future__ import annotations

import _thread
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from _ssi_drmaa import ffi, lib  # type: ignore[import-not-found]

from ssi.drmaa import session as s
from ssi.drmaa import status
from ssi.drmaa.errors import DrmaaError, Errno
from ssi.drmaa.template import SCALAR_ATTRIBUTES, VECTOR_ATTRIBUTES, JobTemplate

INTERNAL = int(Errno.INTERNAL_ERROR)
CData = Any  # a cffi pointer
F = TypeVar("F", bound=Callable[..., Any])


def _extern(error: int | None) -> Callable[[F], F]:
    """ffi.def_extern, typed: attaches the function to its ssi_py_* C declaration;
    `error` is what C gets if it raises anyway."""
    if error is None:
        return cast(Callable[[F], F], ffi.def_extern())
    return cast(Callable[[F], F], ffi.def_extern(error=error))


@dataclass
class _Vector:
    kind: str  # "drmaa_attr_names_t", "drmaa_attr_values_t", "drmaa_job_ids_t"
    items: list[bytes]
    pos: int = 0


_lock = threading.Lock()
_templates: dict[int, tuple[CData, JobTemplate]] = {}
_vectors: dict[int, tuple[CData, _Vector]] = {}


def _key(ptr: CData) -> int:
    return int(ffi.cast("uintptr_t", ptr))


def _put(buf: CData, size: int, text: str | bytes) -> None:
    """text into a caller's buffer of `size` bytes, cut to fit, NUL-terminated."""
    if buf == ffi.NULL or size <= 0:
        return
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    data = data[: size - 1]
    ffi.memmove(buf, data + b"\0", len(data) + 1)


def _text(ptr: CData, what: str) -> str | None:
    if ptr == ffi.NULL:
        return None
    try:
        return str(ffi.string(ptr).decode("utf-8"))
    except UnicodeDecodeError:
        raise DrmaaError(Errno.INVALID_ARGUMENT, f"{what} is not UTF-8") from None


def _required(ptr: CData, what: str) -> str:
    value = _text(ptr, what)
    if value is None:
        raise DrmaaError(Errno.INVALID_ARGUMENT, f"{what} is NULL")
    return value


def _out(ptr: CData, what: str) -> CData:
    if ptr == ffi.NULL:
        raise DrmaaError(Errno.INVALID_ARGUMENT, f"{what} is NULL")
    return ptr


def _environ() -> dict[str, str]:
    """The process's environment as the C side sees it now (a C host may have
    changed it since Python started)."""
    out: dict[str, str] = {}
    env = lib.ssi_environ()
    if env == ffi.NULL:
        return out
    i = 0
    while env[i] != ffi.NULL:
        raw = ffi.string(env[i])
        i += 1
        try:
            item = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # not representable in a job's environment: left out
        key, sep, value = item.partition("=")
        if sep and key:
            out[key] = value
    return out


def _guarded(diag: CData, diag_len: int, fn: Callable[[], None]) -> int:
    """Runs fn; 0, or the DRMAA code of what went wrong with its message in diag."""
    try:
        fn()
        return 0
    except DrmaaError as e:
        _put(diag, diag_len, e.message)
        return int(e.code)
    except KeyboardInterrupt:
        if not lib.ssi_python_owned():
            _thread.interrupt_main()  # the Python host sees its Ctrl-C on return
        _put(diag, diag_len, "interrupted")
        return INTERNAL
    except BaseException as e:  # noqa: BLE001 - nothing may cross into C
        _put(diag, diag_len, f"internal error: {type(e).__name__}: {e}")
        return INTERNAL


def _plain(fn: Callable[[], int]) -> int:
    """For the functions without a diagnosis buffer."""
    try:
        return fn()
    except DrmaaError as e:
        return int(e.code)
    except BaseException:  # noqa: BLE001 - nothing may cross into C
        return INTERNAL


def _template(ptr: CData) -> JobTemplate:
    found = _templates.get(_key(ptr)) if ptr != ffi.NULL else None
    if found is None:
        raise DrmaaError(
            Errno.INVALID_ARGUMENT, "not a job template of drmaa_allocate_job_template"
        )
    return found[1]


def _new_vector(kind: str, items: list[str]) -> CData:
    ptr = ffi.new(f"{kind} *")
    with _lock:
        _vectors[_key(ptr)] = (ptr, _Vector(kind, [i.encode("utf-8") for i in items]))
    return ptr


def _vector(ptr: CData, kind: str) -> _Vector:
    found = _vectors.get(_key(ptr)) if ptr != ffi.NULL else None
    if found is None or found[1].kind != kind:
        raise DrmaaError(Errno.INVALID_ARGUMENT, f"not a live {kind}")
    return found[1]


# --- string vectors ----------------------------------------------------------------


def _next(values: CData, kind: str, value: CData, value_len: int) -> int:
    def go() -> int:
        v = _vector(values, kind)
        if v.pos >= len(v.items):
            return int(Errno.NO_MORE_ELEMENTS)
        _put(value, value_len, v.items[v.pos])
        v.pos += 1
        return 0

    return _plain(go)


def _count(values: CData, kind: str, size: CData) -> int:
    def go() -> int:
        v = _vector(values, kind)
        _out(size, "size")[0] = len(v.items)
        return 0

    return _plain(go)


def _release(values: CData, kind: str) -> None:
    with _lock:
        key = _key(values)
        found = _vectors.get(key)
        if found is not None and found[1].kind == kind:
            del _vectors[key]


@_extern(INTERNAL)
def ssi_py_get_next_attr_name(values: CData, value: CData, value_len: int) -> int:
    return _next(values, "drmaa_attr_names_t", value, value_len)


@_extern(INTERNAL)
def ssi_py_get_next_attr_value(values: CData, value: CData, value_len: int) -> int:
    return _next(values, "drmaa_attr_values_t", value, value_len)


@_extern(INTERNAL)
def ssi_py_get_next_job_id(values: CData, value: CData, value_len: int) -> int:
    return _next(values, "drmaa_job_ids_t", value, value_len)


@_extern(INTERNAL)
def ssi_py_get_num_attr_names(values: CData, size: CData) -> int:
    return _count(values, "drmaa_attr_names_t", size)


@_extern(INTERNAL)
def ssi_py_get_num_attr_values(values: CData, size: CData) -> int:
    return _count(values, "drmaa_attr_values_t", size)


@_extern(INTERNAL)
def ssi_py_get_num_job_ids(values: CData, size: CData) -> int:
    return _count(values, "drmaa_job_ids_t", size)


@_extern(None)
def ssi_py_release_attr_names(values: CData) -> None:
    _release(values, "drmaa_attr_names_t")


@_extern(None)
def ssi_py_release_attr_values(values: CData) -> None:
    _release(values, "drmaa_attr_values_t")


@_extern(None)
def ssi_py_release_job_ids(values: CData) -> None:
    _release(values, "drmaa_job_ids_t")


# --- session -------------------------------------------------------------------------


@_extern(INTERNAL)
def ssi_py_init(contact: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        s.init(_text(contact, "contact"), _environ())

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_exit(diag: CData, diag_len: int) -> int:
    return _guarded(diag, diag_len, s.exit_session)


# --- job templates -------------------------------------------------------------------


@_extern(INTERNAL)
def ssi_py_allocate_job_template(jt: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        out = _out(jt, "jt")
        s.current()
        ptr = ffi.new("drmaa_job_template_t *")
        with _lock:
            _templates[_key(ptr)] = (ptr, JobTemplate())
        out[0] = ptr

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_delete_job_template(jt: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        _template(jt)
        with _lock:
            _templates.pop(_key(jt), None)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_set_attribute(
    jt: CData, name: CData, value: CData, diag: CData, diag_len: int
) -> int:
    return _guarded(
        diag,
        diag_len,
        lambda: _template(jt).set(_required(name, "name"), _text(value, "value") or ""),
    )


@_extern(INTERNAL)
def ssi_py_get_attribute(
    jt: CData, name: CData, value: CData, value_len: int, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        got = _template(jt).get(_required(name, "name"))
        _put(value, value_len, got)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_set_vector_attribute(
    jt: CData, name: CData, value: CData, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        tpl = _template(jt)
        attr = _required(name, "name")
        items: list[str] = []
        if value != ffi.NULL:
            i = 0
            while value[i] != ffi.NULL:
                items.append(_required(value[i], f"{attr}[{i}]"))
                i += 1
        tpl.set_vector(attr, items)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_get_vector_attribute(
    jt: CData, name: CData, values: CData, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        out = _out(values, "values")
        items = _template(jt).get_vector(_required(name, "name"))
        out[0] = _new_vector("drmaa_attr_values_t", items)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_get_attribute_names(values: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        _out(values, "values")[0] = _new_vector(
            "drmaa_attr_names_t", list(SCALAR_ATTRIBUTES)
        )

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_get_vector_attribute_names(values: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        _out(values, "values")[0] = _new_vector(
            "drmaa_attr_names_t", list(VECTOR_ATTRIBUTES)
        )

    return _guarded(diag, diag_len, go)


# --- jobs ----------------------------------------------------------------------------


@_extern(INTERNAL)
def ssi_py_run_job(
    job_id: CData, job_id_len: int, jt: CData, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        tpl = _template(jt)
        _put(job_id, job_id_len, s.current().run_job(tpl, _environ()))

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_run_bulk_jobs(
    jobids: CData,
    jt: CData,
    start: int,
    end: int,
    incr: int,
    diag: CData,
    diag_len: int,
) -> int:
    def go() -> None:
        out = _out(jobids, "jobids")
        tpl = _template(jt)
        ids = s.current().run_bulk_jobs(tpl, start, end, incr, _environ())
        out[0] = _new_vector("drmaa_job_ids_t", ids)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_control(jobid: CData, action: int, diag: CData, diag_len: int) -> int:
    return _guarded(
        diag, diag_len, lambda: s.current().control(_required(jobid, "job id"), action)
    )


def _timeout(value: int) -> int:
    if value < s.WAIT_FOREVER:
        raise DrmaaError(
            Errno.INVALID_ARGUMENT,
            f"timeout {value}: seconds >= 0, or DRMAA_TIMEOUT_WAIT_FOREVER (-1)",
        )
    return value


@_extern(INTERNAL)
def ssi_py_synchronize(
    job_ids: CData, timeout: int, dispose: int, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        _out(job_ids, "job_ids")
        ids: list[str] = []
        i = 0
        while job_ids[i] != ffi.NULL:
            ids.append(_required(job_ids[i], f"job_ids[{i}]"))
            i += 1
        s.current().synchronize(ids, _timeout(timeout), bool(dispose))

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_wait(
    job_id: CData,
    job_id_out: CData,
    job_id_out_len: int,
    stat: CData,
    timeout: int,
    rusage: CData,
    diag: CData,
    diag_len: int,
) -> int:
    def go() -> None:
        jid = _required(job_id, "job id")
        done, code, usage = s.current().wait(jid, _timeout(timeout))
        _put(job_id_out, job_id_out_len, done)
        if stat != ffi.NULL:
            stat[0] = code
        if rusage != ffi.NULL:
            rusage[0] = _new_vector("drmaa_attr_values_t", usage)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_job_ps(job_id: CData, remote_ps: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        out = _out(remote_ps, "remote_ps")
        out[0] = s.current().job_ps(_required(job_id, "job id"))

    return _guarded(diag, diag_len, go)


# --- stat decoding -------------------------------------------------------------------


def _flag(out: CData, value: int | bool, diag: CData, diag_len: int) -> int:
    def go() -> None:
        _out(out, "result")[0] = int(value)

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_wifexited(exited: CData, stat: int, diag: CData, diag_len: int) -> int:
    return _flag(exited, status.exited(stat), diag, diag_len)


@_extern(INTERNAL)
def ssi_py_wexitstatus(
    exit_status: CData, stat: int, diag: CData, diag_len: int
) -> int:
    return _flag(exit_status, status.exit_status(stat), diag, diag_len)


@_extern(INTERNAL)
def ssi_py_wifsignaled(signaled: CData, stat: int, diag: CData, diag_len: int) -> int:
    return _flag(signaled, status.signaled(stat), diag, diag_len)


@_extern(INTERNAL)
def ssi_py_wtermsig(
    signal: CData, signal_len: int, stat: int, diag: CData, diag_len: int
) -> int:
    def go() -> None:
        _out(signal, "signal")
        number = status.term_signal(stat)
        _put(signal, signal_len, status.signal_name(number) if number else "")

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_wcoredump(core_dumped: CData, stat: int, diag: CData, diag_len: int) -> int:
    return _flag(core_dumped, status.core_dumped(stat), diag, diag_len)


@_extern(INTERNAL)
def ssi_py_wifaborted(aborted: CData, stat: int, diag: CData, diag_len: int) -> int:
    return _flag(aborted, status.aborted(stat), diag, diag_len)


# --- the library ---------------------------------------------------------------------


@_extern(INTERNAL)
def ssi_py_get_contact(
    contact: CData, contact_len: int, diag: CData, diag_len: int
) -> int:
    return _guarded(diag, diag_len, lambda: _put(contact, contact_len, s.contact()))


@_extern(INTERNAL)
def ssi_py_version(major: CData, minor: CData, diag: CData, diag_len: int) -> int:
    def go() -> None:
        _out(major, "major")[0] = 1
        _out(minor, "minor")[0] = 0

    return _guarded(diag, diag_len, go)


@_extern(INTERNAL)
def ssi_py_get_DRM_system(  # noqa: N802 - the C name
    drm_system: CData, drm_system_len: int, diag: CData, diag_len: int
) -> int:
    return _guarded(
        diag, diag_len, lambda: _put(drm_system, drm_system_len, s.DRM_SYSTEM)
    )


@_extern(INTERNAL)
def ssi_py_get_DRMAA_implementation(  # noqa: N802 - the C name
    impl: CData, impl_len: int, diag: CData, diag_len: int
) -> int:
    return _guarded(diag, diag_len, lambda: _put(impl, impl_len, s.IMPLEMENTATION))


def attach() -> None:
    """Tells the C side that every function above is in place."""
    lib.ssi_mark_attached()
