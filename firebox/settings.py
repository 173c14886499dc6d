"""A sandbox's settings: one typed model, with the same names from the SDK to the agent.

::

    Sandbox.create(template=, timeout=, metadata=, envs=, limits={...},
                   allow_internet_access=, network={...})          the SDK's keyword arguments
    POST /sandboxes {the same names}                               ``SandboxSettings``, the body
    SandboxManager.create(owner, SandboxSettings)                  the daemon: ``resolve``
    SandboxSpec(limits=Limits(...))                                what a backend starts
    protocol.Configure(processes=, open_files=)                    what the agent applies itself

Each limit is declared once, in ``Limits``: its name, type, default and the bounds no daemon
goes past. A daemon's own defaults (``firebox serve --memory-mb``) replace the defaults, and
its ceilings (``--max-sandbox-memory-mb``) narrow the bounds, in ``resolve``. A create names
only the limits it wants to change (``LimitsRequest``, made from ``Limits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Literal, Optional

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    create_model,
)

from firebox.images import DEFAULT_TEMPLATE

DEFAULT_TIMEOUT = 300  # seconds a sandbox lives unless its create or set_timeout says otherwise
MAX_TIMEOUT = 86_400  # the longest any timeout may be: a day


# -- what crosses into a sandbox ----------------------------------------------------------------


def _clean(value: str) -> str:
    # Everything here crosses into the sandbox (as UTF-8) or is stored and echoed back as JSON:
    # a lone surrogate or a NUL cannot make that trip, so it is refused at the edge.
    if "\0" in value:
        raise ValueError("must not contain a NUL byte")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (it has a lone surrogate)") from None
    return value


Text = Annotated[str, AfterValidator(_clean)]
Key = Annotated[Text, StringConstraints(min_length=1, max_length=256)]
Value = Annotated[Text, StringConstraints(max_length=4096)]
EnvName = Annotated[Text, StringConstraints(min_length=1, max_length=1024, pattern=r"^[^=]+$")]
EnvValue = Annotated[Text, StringConstraints(max_length=128 * 1024)]
Envs = Annotated[dict[EnvName, EnvValue], Field(max_length=256)]
# ``name`` or ``name:tag``: firebox's own templates, or built ones (firebox/recipes/spec.py
# has the same rule for builds)
TemplateName = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}(:[A-Za-z0-9][A-Za-z0-9._-]{0,63})?$"),
]
Timeout = Annotated[int, Field(ge=1, le=MAX_TIMEOUT, description="seconds")]
NetRule = Annotated[Text, StringConstraints(min_length=1, max_length=300)]


# -- limits ---------------------------------------------------------------------------------------


class Limits(BaseModel):
    """What a sandbox has of the host: each limit, its default, and the bounds no daemon goes
    past (a daemon may set narrower ones: ``resolve``). A new limit is one line here; the REST
    body, the sandbox's info, ``firebox serve``'s flags and the spec every backend reads follow."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpu_count: float = Field(default=1.0, ge=0.01, le=64, description="CPU share, in cores")
    memory_mb: int = Field(default=512, ge=64, le=65536, description="memory, in MB")
    disk_mb: int = Field(
        default=256, ge=16, le=1 << 20, description="writable disk (home, /tmp, /root), in MB"
    )
    processes: int = Field(default=256, ge=16, le=65536, description="processes and threads")
    open_files: int = Field(default=1024, ge=64, le=1 << 20, description="open files, per process")
    output_mb: int = Field(
        default=64, ge=1, le=1024, description="printed output forwarded per command or cell, in MB"
    )


def _optional(model: type[BaseModel], name: str) -> type[BaseModel]:
    """``model`` with every field optional (None: not asked for), keeping its bounds."""
    fields: dict[str, object] = {
        field: (
            Optional[Annotated[info.annotation, *info.metadata]],  # noqa: UP045 (a value)
            Field(None, description=info.description),
        )
        for field, info in model.model_fields.items()
    }
    return create_model(  # type: ignore[call-overload, no-any-return]
        name,
        __config__=ConfigDict(frozen=True, extra="forbid"),
        __doc__="The limits a create asks for; each one left out takes the daemon's default.",
        **fields,
    )


if TYPE_CHECKING:

    class LimitsRequest(BaseModel):
        """``Limits`` with every field optional (made by ``_optional`` at run time)."""

        def __getattr__(self, name: str) -> float | int | None: ...

else:
    LimitsRequest = _optional(Limits, "LimitsRequest")


@dataclass(frozen=True, slots=True)
class Bound:
    """A daemon's own bound on one limit: the value (0: none) and the option that sets it."""

    value: float
    option: str


class SettingsError(ValueError):
    """A create asked for a limit past this daemon's bounds; the message names the bound."""


def resolve(
    asked: LimitsRequest | None,
    defaults: Limits,
    most: Mapping[str, Bound] = {},  # noqa: B006 (never mutated)
    least: Mapping[str, Bound] = {},  # noqa: B006
) -> Limits:
    """The limits of a new sandbox: what was asked, else the daemon's default; every asked
    value within the daemon's bounds (SettingsError names the one passed). A default above
    its ceiling is lowered to it: defaults are the daemon's, not the caller's."""
    wanted = asked.model_dump(exclude_none=True) if asked is not None else {}
    values = defaults.model_dump()
    for name, bound in most.items():
        if bound.value and values[name] > bound.value:
            values[name] = type(values[name])(bound.value)
    for name, value in wanted.items():
        low, high = least.get(name), most.get(name)
        if low is not None and value < low.value:
            raise SettingsError(
                f"{name} {value:g} is too little for {low.option}; give it at least {low.value:g}"
            )
        if high is not None and high.value and value > high.value:
            raise SettingsError(
                f"{name} {value:g} is more than this daemon gives a sandbox ({high.value:g}, "
                f"{high.option}); ask for less"
            )
        values[name] = value
    return Limits(**values)


# -- the whole of a create -------------------------------------------------------------------------


class Network(BaseModel):
    """Egress beyond ``allow_internet_access``: domains (``*.example.com``), IPs or CIDRs.
    ``allow_out`` wins over ``deny_out``; private, loopback, link-local and the host's own
    addresses stay closed whatever either says. ``allow_public_traffic`` is the way in: the
    sandbox's ports answer anyone who can reach the daemon, not only holders of its traffic
    token (docs/PORTS.md); set at create, kept by later network updates."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allow_out: list[NetRule] = Field(default_factory=list, max_length=256)
    deny_out: list[NetRule] = Field(default_factory=list, max_length=256)
    allow_public_traffic: bool = False


class Lifecycle(BaseModel):
    """What a sandbox's timeout does, and what wakes it when paused (E2B's ``lifecycle``).

    ``on_timeout="pause"`` pauses it at its timeout instead of killing it; ``auto_resume``
    resumes a paused sandbox when it is used (a command, a file, a cell: any call into it),
    where otherwise such a call is refused until it is resumed (``connect``/``resume``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    on_timeout: Literal["kill", "pause"] = "kill"
    auto_resume: bool = False


class SandboxSettings(BaseModel):
    """Everything a create may ask for (``POST /sandboxes``); what it leaves out takes the
    daemon's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    template: TemplateName = DEFAULT_TEMPLATE
    timeout: Timeout | None = Field(default=None, description=f"seconds; default {DEFAULT_TIMEOUT}")
    metadata: dict[Key, Value] = Field(default_factory=dict, max_length=64)
    envs: Envs = Field(default_factory=dict)
    limits: LimitsRequest | None = None
    allow_internet_access: bool = Field(
        default=False, description="egress to the internet through the daemon's proxy"
    )
    network: Network | None = None
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    # start from this snapshot (its id or name) instead of ``template``: the snapshot's
    # template and size, with its memory and disk as kept (server/snapshots.py)
    snapshot: Text | None = None


@dataclass(frozen=True)
class StartConfig:
    """How a built template's sandboxes start (server/templates): its start command running,
    as its user, in its workdir, with its environment, ready once ``ready_cmd`` succeeds.
    A microVM snapshots it running; a jail's pool keeps it running."""

    start_cmd: str | None = None
    ready_cmd: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str = "user"

    def identity(self) -> str:
        """What a snapshot of it depends on."""
        import json

        return json.dumps(
            [self.start_cmd, self.ready_cmd, self.envs, self.workdir, self.user], sort_keys=True
        )
