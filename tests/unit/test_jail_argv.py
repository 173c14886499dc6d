"""bwrap's command line for a jail: bubblewrap running the agent, or holding the namespaces
for an agent forked in by the zygote (whose confinement the zygote then applies itself)."""

from __future__ import annotations

from pathlib import Path

from firebox.backends.base import SandboxSpec
from firebox.backends.jail.bwrap import AGENT_CAPS, AGENT_ENV, JailFds, bwrap_argv
from firebox.backends.jail.zygote import HOLDER

SPEC = SandboxSpec(sandbox_id="sbx_x", template="python", rootfs=Path("/img"))
FDS = JailFds(agent=10, seccomp=11, info=12, userns_block=13, machine_id=14, boot_id=15)


def _after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_bwrap_runs_the_agent_with_its_capabilities_and_environment() -> None:
    argv = bwrap_argv(SPEC, Path("/lib"), FDS, Path("/rw"))
    assert _after(argv, "--cap-add") == list(AGENT_CAPS)
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    # nothing of the sandbox's settings, which come over the channel (protocol.Configure), but
    # its CPU limit: its thread pools' size, needed before the agent's first fork (agent_env)
    assert env == {**AGENT_ENV, "FIREBOX_CPUS": "1", "FIREBOX_AGENT_FD": "10"}
    assert "firebox.agent.main" in argv[-1]


def test_a_holder_gets_no_capability_and_nothing_of_the_agent() -> None:
    argv = bwrap_argv(SPEC, Path("/lib"), FDS, Path("/rw"), holder=HOLDER)
    assert argv[argv.index("--") + 1 :] == HOLDER
    assert "--cap-add" not in argv and "--cap-drop" in argv
    assert _after(argv, "--setenv") == ["PATH"]
    # the same namespaces, filesystem, seccomp filter and identity as an agent's jail
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-net", "--seccomp", "--ro-bind"):
        assert flag in argv
