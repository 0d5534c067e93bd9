"""Finds probes, filters and policies through entry points, and refuses misfits.

One discovery path for built-ins and third parties alike: the `ssi.probes`,
`ssi.filters` and `ssi.policies` entry-point groups of every installed distribution.
As in Slurm's plugin loader, a plugin states its API version and the loader refuses a
mismatch, saying which plugin, which package, which versions and what to do:

    ssi.policies plugin 'fancy' (fancy_policy:Fancy, from fancy-policy 0.3) was built
    for scheduler API 2, but this ssi provides API 1: refusing to load it. Install a
    release of fancy-policy built for API 1, or an ssi that provides API 2.

A plugin that fails to import or to check is listed with its error by discover() and
never breaks the others.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass

from schedulers.api import API_VERSION, GROUP_POLICIES, GROUPS, summary

REQUIRED = {
    GROUP_POLICIES: (
        "place",
        "rebalance",
        "on_node_event",
        "configure",
        "start",
        "stop",
    ),
    "ssi.filters": ("feed", "configure"),
    "ssi.probes": (),  # sample (node probes) or sample_job (job probes): checked below
}


class PluginError(LookupError):
    """A plugin that cannot be used: missing, broken, or of the wrong kind."""


class PluginVersionError(PluginError):
    """A plugin built for another version of the scheduler API."""


@dataclass(frozen=True, slots=True)
class PluginInfo:
    group: str
    name: str
    target: str  # "module:attr"
    dist: str  # "name version", or "" when unknown
    summary: str = ""
    api_version: int | None = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _dist_of(ep: md.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ""
    return f"{dist.metadata['Name']} {dist.version}"


def _describe(ep: md.EntryPoint) -> str:
    dist = _dist_of(ep)
    return f"{ep.value}, from {dist}" if dist else ep.value


def check_plugin(obj: object, group: str, name: str, origin: str = "") -> None:
    """Raises PluginError / PluginVersionError unless obj is a usable plugin."""
    where = f"{group} plugin {name!r}" + (f" ({origin})" if origin else "")
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}; known: {', '.join(GROUPS)}")
    if not isinstance(obj, type):
        raise PluginError(f"{where} is not a class but {type(obj).__name__}")
    version = getattr(obj, "api_version", None)
    if not isinstance(version, int):
        raise PluginVersionError(
            f"{where} does not state api_version (an int class attribute); this ssi"
            f" provides scheduler API {API_VERSION}: refusing to load it"
        )
    if version != API_VERSION:
        dist = origin.split(", from ", 1)[1] if ", from " in origin else "the plugin"
        dist_name = dist.rsplit(" ", 1)[0] if dist != "the plugin" else dist
        raise PluginVersionError(
            f"{where} was built for scheduler API {version}, but this ssi provides API"
            f" {API_VERSION}: refusing to load it. Install a release of {dist_name}"
            f" built for API {API_VERSION}, or an ssi that provides API {version}."
        )
    declared = getattr(obj, "name", None)
    if declared != name:
        raise PluginError(
            f"{where} declares name {declared!r}: the entry point and the class must"
            " agree"
        )
    missing = [m for m in REQUIRED[group] if not callable(getattr(obj, m, None))]
    if group == "ssi.probes" and not (
        callable(getattr(obj, "sample", None))
        or callable(getattr(obj, "sample_job", None))
    ):
        missing.append("sample or sample_job")
    if missing:
        raise PluginError(f"{where} lacks {', '.join(missing)}")


def _entry_points(group: str) -> list[md.EntryPoint]:
    eps = sorted(md.entry_points(group=group), key=lambda e: (e.name, _dist_of(e)))
    seen: set[str] = set()
    out = []
    for (
        ep
    ) in eps:  # the same distribution can be visible twice (e.g. editable + egg-info)
        key = f"{ep.name}={ep.value}"
        if key not in seen:
            seen.add(key)
            out.append(ep)
    return out


def discover(group: str) -> dict[str, PluginInfo]:
    """Every plugin of a group, loaded and checked; errors are kept, not raised."""
    found: dict[str, PluginInfo] = {}
    for ep in _entry_points(group):
        origin = _describe(ep)
        if ep.name in found:
            prev = found[ep.name]
            found[ep.name] = PluginInfo(
                group,
                ep.name,
                prev.target,
                prev.dist,
                prev.summary,
                prev.api_version,
                f"name claimed twice: by {prev.target} and by {origin}",
            )
            continue
        try:
            obj = ep.load()
            check_plugin(obj, group, ep.name, origin)
            found[ep.name] = PluginInfo(
                group, ep.name, ep.value, _dist_of(ep), summary(obj), obj.api_version
            )
        except Exception as e:  # a broken plugin is reported, never fatal
            version = None
            if not isinstance(e, ImportError):
                try:
                    version = getattr(ep.load(), "api_version", None)
                except Exception:
                    version = None
            found[ep.name] = PluginInfo(
                group,
                ep.name,
                ep.value,
                _dist_of(ep),
                "",
                version if isinstance(version, int) else None,
                f"{type(e).__name__}: {e}",
            )
    return found


def load(group: str, name: str) -> type:
    """The plugin class registered as `name` in `group`, checked."""
    matches = [ep for ep in _entry_points(group) if ep.name == name]
    if not matches:
        known = ", ".join(sorted({ep.name for ep in _entry_points(group)})) or "none"
        raise PluginError(f"no {group} plugin named {name!r}; installed: {known}")
    targets = {ep.value for ep in matches}
    if len(targets) > 1:
        raise PluginError(
            f"{group} plugin {name!r} is claimed by several packages: "
            + "; ".join(_describe(ep) for ep in matches)
        )
    ep = matches[0]
    origin = _describe(ep)
    try:
        obj = ep.load()
    except Exception as e:
        raise PluginError(
            f"{group} plugin {name!r} ({origin}) failed to import:"
            f" {type(e).__name__}: {e}"
        ) from e
    check_plugin(obj, group, name, origin)
    assert isinstance(obj, type)
    return obj


def instantiate(group: str, name: str, **params: object) -> object:
    """A configured instance of a plugin (configure() validates the params)."""
    cls = load(group, name)
    inst = cls()
    if params:
        configure = getattr(inst, "configure", None)
        if configure is None:
            raise PluginError(f"{group} plugin {name!r} takes no parameters")
        configure(**params)
    return inst
