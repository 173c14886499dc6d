"""Host-side confinement both backends use (the jail's bwrap, the microVM's jailed QEMU):

- ``cgroups``: a cgroup per sandbox, v1 or v2, with its memory, pids and CPU limits;
- ``seccomp``: the deny list, as data with a reason per rule, compiled to BPF;
- ``uids``: host uid ranges, one per live sandbox on the whole host;
- ``gate``: starting a program as such a uid, born inside its cgroup.

Below the backends: nothing here knows of a backend, the daemon or a sandbox's agent.
"""
