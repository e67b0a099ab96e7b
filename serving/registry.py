"""The server's capabilities, registered in one place.

A capability is one module that ends with `register(Capability(...))`: its model deployment, the
builder arguments that switch it on (each is also a flag of `python -m serving`, which
`bert4ray serve` forwards), and its routes. Everything else is derived from the registry:
`AppArgs`, `build_app` and `scaling.per_deployment` (serving/app.py), the ingress' handles and
routes (serving/ingress.py), the flags (serving/__main__.py) and their checks before Ray starts
(serving/checks.py). Adding a capability is adding its module.

The built-in capabilities are the modules in BUILTIN, in the order in which /v1/models lists
them. More come from the modules named in the environment variable BERT4RAY_CAPABILITIES
(comma-separated, e.g. `BERT4RAY_CAPABILITIES=mypackage.summarizer`), imported after the built-in
ones. Such a module must be importable where the app is built and where its replicas run;
`python -m serving` carries the variable into the application's runtime_env.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PLUGINS_ENV = "BERT4RAY_CAPABILITIES"
BUILTIN = tuple(f"serving.capabilities.{name}" for name in ("retriever", "generator", "chat", "attributor", "parser"))


@dataclass(frozen=True)
class AppArg:
    """A string argument of the application builder: a field of AppArgs (`name`) and the flag
    `--name-with-dashes` of `python -m serving` and `bert4ray serve`. Unset by default."""
    name: str
    help: str
    check: Callable[[str, dict], str] | None = None
    """Checks a given value before Ray starts (raising serving.checks.InputError) and returns it as
    the replicas take it; it sees the arguments checked before it. None: a model directory or
    URI (a local one must exist and is made absolute)."""
    requires: str | None = None
    """Another argument that must be given with this one ..."""
    requires_why: str = ""
    """... and why, e.g. "an index needs the model that built it"."""

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Capability:
    name: str
    """Its deployment's name: the `capability` of /v1/models, the key of scaling.per_deployment."""
    deployment: Any
    """A @serve.deployment class; constructed with `bind_args(...)` and the keywords device and dtype."""
    enabled_by: str
    """The AppArgs field whose value switches it on (declared by this or another capability)."""
    bind_args: Callable[[Any, dict], tuple]
    """(AppArgs, the batching settings as a dict) -> the deployment constructor's positional arguments."""
    args: tuple[AppArg, ...] = ()
    """The builder arguments it declares."""
    routes: type | None = None
    """A class whose methods are its routes on `router`; mixed into the ingress, whose helpers they
    use (see serving/ingress.py)."""
    router: Any = None
    """The fastapi.APIRouter those routes are declared on."""


_registered: dict[str, Capability] = {}
_state = "new"          # -> "loading" (the modules are being imported) -> "ready"


def register(capability: Capability) -> Capability:
    """Adds a capability; called once, by the module that defines it."""
    if capability.name in _registered:
        raise ValueError(f"capability '{capability.name}' is registered twice")
    _registered[capability.name] = capability
    return capability


def plugin_modules() -> tuple[str, ...]:
    return tuple(m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip())


def capabilities() -> list[Capability]:
    """Every registered capability: the built-in ones in BUILTIN's order, then those of
    BERT4RAY_CAPABILITIES, whichever module was imported first (the modules are imported once)."""
    global _state
    if _state == "new":
        _state = "loading"     # the modules' own imports may ask again: they get what is there so far
        for module in BUILTIN + plugin_modules():
            try:
                importlib.import_module(module)
            except ImportError as exc:
                _state = "new"       # the next call tries again, and fails as loudly
                raise ImportError(f"capability module '{module}' cannot be imported ({exc}); "
                                  f"check {PLUGINS_ENV} and PYTHONPATH") from exc
        _state = "ready"
        _check(_ordered())
    return _ordered()


def _ordered() -> list[Capability]:
    rank = {module: i for i, module in enumerate(BUILTIN + plugin_modules())}
    return sorted(_registered.values(), key=lambda c: rank.get(_module_of(c), len(rank)))


def _module_of(capability: Capability) -> str:
    return getattr(getattr(capability.deployment, "func_or_class", capability.deployment), "__module__", "")


def _check(registered: list[Capability]) -> None:
    """Arguments are declared once, and what a capability refers to is declared."""
    declared: set[str] = set()
    for c in registered:
        for arg in c.args:
            if arg.name in declared:
                raise ValueError(f"capability '{c.name}': argument '{arg.name}' is declared twice")
            declared.add(arg.name)
    for c in registered:
        for needed in (c.enabled_by, *(a.requires for a in c.args if a.requires)):
            if needed not in declared:
                raise ValueError(f"capability '{c.name}': '{needed}' is not a declared argument")
        if (c.routes is None) != (c.router is None):
            raise ValueError(f"capability '{c.name}': give routes and router together")


def app_args() -> list[AppArg]:
    """Every capability's builder arguments, in registration order."""
    return [arg for c in capabilities() for arg in c.args]


def enabling_args() -> list[str]:
    """The arguments that switch a capability on, each once."""
    return list(dict.fromkeys(c.enabled_by for c in capabilities()))


def enabled(args) -> list[Capability]:
    """The capabilities that `args` (AppArgs) switches on."""
    return [c for c in capabilities() if getattr(args, c.enabled_by)]
