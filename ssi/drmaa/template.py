"""DRMAA job templates: the attributes ssi supports, their formats, and the JobSubmit
a template becomes (one per index for bulk jobs).

    drmaa_set_attribute(jt, name, value) ─▶ JobTemplate.set ─ format checked here
    drmaa_run_job / run_bulk_jobs ─▶ JobTemplate.submission(ctx, index) ─▶ m.JobSubmit

Placeholders: $drmaa_hd_ph$ (the user's home), $drmaa_wd_ph$ (the job's working
directory, in the three paths) and $drmaa_incr_ph$ (a bulk job's index) are expanded
wherever they appear.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ssi.drmaa.errors import DrmaaError, Errno
from ssi.proto import messages as m

__all__ = [
    "SCALAR_ATTRIBUTES",
    "VECTOR_ATTRIBUTES",
    "JobTemplate",
    "SubmitContext",
    "parse_duration",
    "parse_start_time",
]

PH_INCR = "$drmaa_incr_ph$"
PH_HD = "$drmaa_hd_ph$"
PH_WD = "$drmaa_wd_ph$"
ACTIVE, HOLD = "drmaa_active", "drmaa_hold"

# Every scalar attribute ssi supports (mandatory ones and the optional ones it can
# honour), in the order drmaa_get_attribute_names() lists them.
SCALAR_ATTRIBUTES = (
    "drmaa_remote_command",
    "drmaa_js_state",
    "drmaa_wd",
    "drmaa_job_category",
    "drmaa_native_specification",
    "drmaa_block_email",
    "drmaa_start_time",
    "drmaa_job_name",
    "drmaa_input_path",
    "drmaa_output_path",
    "drmaa_error_path",
    "drmaa_join_files",
    "drmaa_wct_hlimit",
    "drmaa_duration_hlimit",
)
VECTOR_ATTRIBUTES = ("drmaa_v_argv", "drmaa_v_env", "drmaa_v_email")
# Optional attributes of the standard that ssi cannot honour: refused by name.
UNSUPPORTED = (
    "drmaa_transfer_files",
    "drmaa_deadline_time",
    "drmaa_wct_slimit",
    "drmaa_duration_slimit",
)
DEFAULTS = {"drmaa_js_state": ACTIVE, "drmaa_join_files": "n", "drmaa_block_email": "0"}

_DURATION = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+)$")
_START = re.compile(
    r"^(?:(?:(?:(\d{2})?(\d{2})/)?(\d{1,2})/)?(\d{1,2})\s+)?"  # [[[[CC]YY/]MM/]DD]
    r"(\d{1,2}):(\d{2})(?::(\d{2}))?"  # hh:mm[:ss]
    r"(?:\s*([+-])(\d{1,2}):(\d{2}))?$"  # [{-|+}UU:uu]
)


def parse_duration(text: str) -> int:
    """Seconds of a DRMAA time amount `[[h:]m:]s`: "90", "1:30", "2:00:00"."""
    found = _DURATION.match(text.strip())
    if not found:
        raise DrmaaError(
            Errno.INVALID_ATTRIBUTE_FORMAT,
            f"{text!r} is not a time amount [[h:]m:]s (e.g. 90, 1:30, 2:00:00)",
        )
    h, mi, s = (int(x) if x else 0 for x in found.groups())
    return h * 3600 + mi * 60 + s


def parse_start_time(text: str, now: dt.datetime | None = None) -> float:
    """Unix time of a DRMAA start time `[[[[CC]YY/]MM/]DD] hh:mm[:ss] [{-|+}UU:uu]`;
    omitted date parts are today's, no offset means local time."""
    found = _START.match(text.strip())
    if not found:
        raise DrmaaError(
            Errno.INVALID_ATTRIBUTE_FORMAT,
            f"{text!r} is not a start time [[[[CC]YY/]MM/]DD] hh:mm[:ss] "
            "[{-|+}UU:uu] (e.g. 2031/12/24 18:00 +01:00)",
        )
    cc, yy, mo, dd, hh, mi, ss, sign, uh, um = found.groups()
    if sign:
        offset = dt.timedelta(hours=int(uh), minutes=int(um))
        tz: dt.tzinfo = dt.timezone(offset if sign == "+" else -offset)
    else:
        tz = dt.datetime.now().astimezone().tzinfo or dt.UTC
    now = (now or dt.datetime.now(tz)).astimezone(tz)
    year = now.year
    if yy:
        year = int(cc) * 100 + int(yy) if cc else now.year // 100 * 100 + int(yy)
    try:
        when = dt.datetime(
            year,
            int(mo) if mo else now.month,
            int(dd) if dd else now.day,
            int(hh),
            int(mi),
            int(ss) if ss else 0,
            tzinfo=tz,
        )
    except ValueError as e:
        raise DrmaaError(
            Errno.INVALID_ATTRIBUTE_VALUE, f"start time {text!r}: {e}"
        ) from None
    return when.timestamp()


def _check_bool(name: str, value: str, yes: str, no: str) -> None:
    if value not in (yes, no):
        raise DrmaaError(
            Errno.INVALID_ATTRIBUTE_VALUE,
            f"{name} takes {yes!r} or {no!r}, not {value!r}",
        )


def _check_scalar(name: str, value: str) -> None:
    """Format checks that need nothing but the value; the rest waits for submission
    (the native specification is checked against the resource-request language
    then, so that a template stays a plain container until it is used)."""
    if name == "drmaa_js_state":
        if value not in (ACTIVE, HOLD):
            raise DrmaaError(
                Errno.INVALID_ATTRIBUTE_VALUE,
                f"drmaa_js_state takes {ACTIVE!r} or {HOLD!r}, not {value!r}",
            )
    elif name == "drmaa_join_files":
        _check_bool(name, value, "y", "n")
    elif name == "drmaa_block_email":
        _check_bool(name, value, "1", "0")
    elif name in ("drmaa_wct_hlimit", "drmaa_duration_hlimit") and value:
        parse_duration(value)
    elif name == "drmaa_start_time" and value:
        parse_start_time(value)


def _unknown(name: str) -> DrmaaError:
    if name in UNSUPPORTED:
        why = f"{name} is an optional DRMAA attribute ssi does not support"
    elif name in SCALAR_ATTRIBUTES:
        why = f"{name} is a scalar attribute: use drmaa_set_attribute"
    elif name in VECTOR_ATTRIBUTES:
        why = f"{name} is a vector attribute: use drmaa_set_vector_attribute"
    else:
        why = f"unknown attribute {name!r}"
    return DrmaaError(Errno.INVALID_ARGUMENT, why)


@dataclass(frozen=True)
class SubmitContext:
    """What a submission takes from the submitting process."""

    session: str
    cwd: str  # the default working directory
    home: str  # $drmaa_hd_ph$
    environ: Mapping[str, str]  # the job's environment before drmaa_v_env


def split_host(value: str) -> tuple[str, str]:
    """`[hostname]:path` → (hostname, path); a value with no colon before its first
    slash is a bare path."""
    head, sep, tail = value.partition(":")
    if sep and "/" not in head:
        return head, tail
    return "", value


def _expand(text: str, *, index: int | None, home: str, wd: str | None) -> str:
    if index is not None:
        text = text.replace(PH_INCR, str(index))
    text = text.replace(PH_HD, home)
    if wd is not None:
        text = text.replace(PH_WD, wd)
    return text


@dataclass
class JobTemplate:
    scalars: dict[str, str] = field(default_factory=lambda: dict(DEFAULTS))
    vectors: dict[str, list[str]] = field(default_factory=dict)

    def set(self, name: str, value: str) -> None:
        if name not in SCALAR_ATTRIBUTES:
            raise _unknown(name)
        _check_scalar(name, value)
        self.scalars[name] = value

    def get(self, name: str) -> str:
        if name not in SCALAR_ATTRIBUTES:
            raise _unknown(name)
        return self.scalars.get(name, "")

    def set_vector(self, name: str, values: Sequence[str]) -> None:
        if name not in VECTOR_ATTRIBUTES:
            raise _unknown(name)
        if name == "drmaa_v_env":
            for item in values:
                key, sep, _ = item.partition("=")
                if not sep or not key:
                    raise DrmaaError(
                        Errno.INVALID_ATTRIBUTE_FORMAT,
                        f"drmaa_v_env takes NAME=VALUE strings, not {item!r}",
                    )
        self.vectors[name] = list(values)

    def get_vector(self, name: str) -> list[str]:
        if name not in VECTOR_ATTRIBUTES:
            raise _unknown(name)
        return list(self.vectors.get(name, []))

    # --- submission ---------------------------------------------------------------

    def checked(self) -> CheckedTemplate:
        """What does not depend on the index, checked once for a whole bulk job."""
        s = self.scalars
        command = s.get("drmaa_remote_command", "")
        if not command:
            raise DrmaaError(
                Errno.INVALID_ATTRIBUTE_VALUE, "drmaa_remote_command is not set"
            )
        require = s.get("drmaa_native_specification", "").strip()
        if require:
            from schedulers.request import RequestError, parse_request

            try:
                parse_request(require)
            except RequestError as e:
                raise DrmaaError(
                    Errno.INVALID_ATTRIBUTE_VALUE,
                    f"drmaa_native_specification (ssi's resource-request language): "
                    f"{e}",
                ) from None
        limits = [
            parse_duration(s[k])
            for k in ("drmaa_wct_hlimit", "drmaa_duration_hlimit")
            if s.get(k)
        ]
        start = (
            parse_start_time(s["drmaa_start_time"]) if s.get("drmaa_start_time") else 0
        )
        env_over = dict(i.split("=", 1) for i in self.vectors.get("drmaa_v_env", []))
        return CheckedTemplate(
            template=self,
            argv=[command, *self.vectors.get("drmaa_v_argv", [])],
            require=require,
            wall_limit=float(min(limits)) if limits else 0.0,
            start_after=float(start),
            env_over=env_over,
        )


@dataclass(frozen=True)
class CheckedTemplate:
    template: JobTemplate
    argv: list[str]
    require: str
    wall_limit: float
    start_after: float
    env_over: dict[str, str]

    def submission(self, ctx: SubmitContext, index: int | None = None) -> m.JobSubmit:
        """The JobSubmit for one job (`index`: a bulk job's, else None)."""
        s = self.template.scalars
        wd_raw = s.get("drmaa_wd", "")
        if PH_WD in wd_raw:
            raise DrmaaError(
                Errno.INVALID_ATTRIBUTE_VALUE,
                f"drmaa_wd cannot use {PH_WD} (it defines it): {wd_raw!r}",
            )
        wd = _expand(wd_raw, index=index, home=ctx.home, wd=None) or ctx.cwd
        wd = os.path.normpath(os.path.join(ctx.cwd, wd))

        def path(name: str) -> str:
            value = s.get(name, "")
            if not value:
                return ""
            _, p = split_host(value)  # one system image: every node sees the path
            p = _expand(p, index=index, home=ctx.home, wd=wd)
            if not p:
                raise DrmaaError(Errno.INVALID_ATTRIBUTE_VALUE, f"{name} has no path")
            return os.path.normpath(os.path.join(wd, p))

        stdin, stdout, stderr = (
            path("drmaa_input_path"),
            path("drmaa_output_path"),
            path("drmaa_error_path"),
        )
        name = s.get("drmaa_job_name", "") or os.path.basename(self.argv[0])
        if s.get("drmaa_join_files") == "y":
            if not stdout:  # the default name needs the job id, unknown here
                stdout = os.path.join(wd, f"{name}.o{os.getpid()}-{_seq()}")
            stderr = stdout
        env = dict(ctx.environ)
        env.update(self.env_over)
        if index is not None:
            env["SSI_TASK_ID"] = str(index)
        argv = self.argv
        if self.start_after:
            argv = _start_later(self.start_after, argv)
        return m.JobSubmit(
            argv=argv,
            name=name,
            cwd=wd,
            env=env,
            stdin=stdin or "/dev/null",
            stdout=stdout,
            stderr=stderr,
            require=self.require,
            hold=s.get("drmaa_js_state") == HOLD,
            wall_limit=self.wall_limit,
            session=ctx.session,
        )


_counter = itertools.count(1)


def _seq() -> int:
    return next(_counter)  # atomic under the GIL: threads submit at once


def _start_later(when: float, argv: list[str]) -> list[str]:
    """argv run no earlier than `when` (unix time): the job waits in a shell that
    then becomes the command (until ssid itself holds jobs back to a start time)."""
    script = (
        f'now=$(date +%s); if [ "$now" -lt {int(when)} ]; then '
        f'sleep $(({int(when)} - now)); fi; exec "$@"'
    )
    return ["/bin/sh", "-c", script, "drmaa-start-time", *argv]
