"""Templates as data, shared by the SDK and the daemon: standard library only, and importing
nothing of firebox but itself, so that each side can use it without the other.

- ``spec``: the one wire shape of a template build (E2B's ``TemplateType``) and ``validate``;
- ``files``: how a COPY step's files are hashed (``filesHash``) and packed for upload;
- ``dockerfile``: ``parse_dockerfile``, a Dockerfile as that shape; ``render``: the way back;
- ``readycmd``: E2B's ready checks (``wait_for_port`` ...) as shell commands.
"""

from firebox.recipes.dockerfile import (
    DOCKERFILE_READY_CMD,
    ParsedDockerfile,
    parse_dockerfile,
    read_dockerfile,
)
from firebox.recipes.errors import DockerfileError, RecipeError
from firebox.recipes.files import FileEntry, FilesHash, hash_tar, write_tar
from firebox.recipes.readycmd import (
    ReadyCmd,
    wait_for_file,
    wait_for_port,
    wait_for_process,
    wait_for_timeout,
    wait_for_url,
)
from firebox.recipes.render import to_dockerfile
from firebox.recipes.spec import (
    MAX_ARG_BYTES,
    MAX_STEPS,
    STEP_TYPES,
    Registry,
    Step,
    TemplateSpec,
    check_copy_src,
    parse_spec,
    split_name,
    validate,
)

__all__ = [
    "DOCKERFILE_READY_CMD",
    "MAX_ARG_BYTES",
    "MAX_STEPS",
    "STEP_TYPES",
    "DockerfileError",
    "FileEntry",
    "FilesHash",
    "ParsedDockerfile",
    "ReadyCmd",
    "RecipeError",
    "Registry",
    "Step",
    "TemplateSpec",
    "check_copy_src",
    "hash_tar",
    "parse_dockerfile",
    "parse_spec",
    "read_dockerfile",
    "split_name",
    "to_dockerfile",
    "validate",
    "wait_for_file",
    "wait_for_port",
    "wait_for_process",
    "wait_for_timeout",
    "wait_for_url",
    "write_tar",
]
