"""Tests of one piece of firebox against the real thing it drives, below the daemon: the agent
started as a process, code contexts in a real jail, real cgroups, seccomp enforced by bubblewrap,
a real image build. Most need root (each module says which and skips without it). The pure
logic of the same pieces is tested in tests/unit, the daemon end to end in tests/functional and
tests/security."""
