"""firebox.recipes: the template wire shape, its validation, and Dockerfiles both ways."""

from __future__ import annotations

import io
import pickle

import pytest

from firebox import recipes
from firebox.recipes import DockerfileError, RecipeError, parse_dockerfile, to_dockerfile

HASH = "a" * 64
PRELUDE = [  # Docker's start state, which a template does not share
    {"type": "USER", "args": ["root"], "force": False},
    {"type": "WORKDIR", "args": ["/"], "force": False},
]
DEFAULTS = [  # E2B's end state, unless the Dockerfile sets its own
    {"type": "USER", "args": ["user"], "force": False},
    {"type": "WORKDIR", "args": ["/home/user"], "force": False},
]


def step(kind: str, *args: str) -> dict[str, object]:
    return {"type": kind, "args": list(args), "force": False}


def steps(text: str, build_args: dict[str, str] | None = None) -> list[dict[str, object]]:
    return list(parse_dockerfile(text, build_args)["steps"])


# --- validate -----------------------------------------------------------------------------------


def test_validate_normalises_e2b_shape() -> None:
    data = {
        "fromImage": "python:3.12",
        "force": False,
        "steps": [
            {"type": "RUN", "args": ["echo hi", "root"], "force": False, "forceUpload": None},
            {"type": "COPY", "args": ["app", "/srv/"], "force": True, "filesHash": HASH},
            {"type": "COPY", "args": ["a", "b", "", "755"], "filesHash": HASH, "forceUpload": True},
            {"type": "ENV", "args": ["A", "1", "B", "$A"], "force": False},
        ],
        "startCmd": "python -m http.server",
        "readyCmd": "",
        "someFutureKey": 1,
    }
    assert recipes.validate(data) == {
        "steps": [
            step("RUN", "echo hi", "root"),
            {"type": "COPY", "args": ["app", "/srv/", "", ""], "force": True, "filesHash": HASH},
            {
                "type": "COPY",
                "args": ["a", "b", "", "0755"],
                "force": False,
                "filesHash": HASH,
                "forceUpload": True,
            },
            step("ENV", "A", "1", "B", "$A"),
        ],
        "force": False,
        "fromImage": "python:3.12",
        "startCmd": "python -m http.server",
    }
    spec = recipes.parse_spec(data)
    assert spec.from_image == "python:3.12" and spec.steps[1].files_hash == HASH
    assert spec.to_wire() == recipes.validate(data)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"steps": []}, "fromImage", "from_image()"),
        ({"fromImage": "a", "fromTemplate": "b"}, "fromImage", "not both"),
        ({"fromImage": "bad image"}, "fromImage", "image reference"),
        ({"fromTemplate": "Bad_Name"}, "fromTemplate", "lowercase"),
        ({"fromTemplate": "base", "fromImageRegistry": {"type": "registry"}}, None, "fromImage"),
        (
            {"fromImage": "a", "fromImageRegistry": {"type": "aws", "awsRegion": "x"}},
            "fromImageRegistry",
            "username and password",
        ),
        ({"fromImage": "a", "steps": [step("RUN")] * 201}, "steps", "more than 200"),
        ({"fromImage": "a", "steps": [step("EXPOSE", "80")]}, "steps[0].type", "RUN, COPY"),
        ({"fromImage": "a", "steps": [step("RUN", "")]}, "steps[0].args[0]", "empty"),
        ({"fromImage": "a", "steps": [step("RUN", "x", "bad user")]}, "steps[0].args[1]", "user"),
        ({"fromImage": "a", "steps": [step("RUN", "x" * 70000)]}, "steps[0] (RUN) args[0]", "KiB"),
        ({"fromImage": "a", "steps": [step("RUN", "a\0b")]}, "steps[0] (RUN) args[0]", "NUL"),
        ({"fromImage": "a", "steps": [step("ENV", "A")]}, "steps[0].args", "pairs"),
        ({"fromImage": "a", "steps": [step("ENV", "A-B", "1")]}, "steps[0].args", "variable"),
        ({"fromImage": "a", "steps": [step("WORKDIR", "/a", "/b")]}, "steps[0].args", "1 args"),
        ({"fromImage": "a", "steps": [step("COPY", "/etc/passwd", "/x")]}, None, "absolute"),
        ({"fromImage": "a", "steps": [step("COPY", "a/../../x", "/x")]}, None, "leaves"),
        ({"fromImage": "a", "steps": [step("COPY", "a", "/x")]}, "steps[0].filesHash", "filesHash"),
        (
            {"fromImage": "a", "steps": [{**step("COPY", "a", "/x", "", "9"), "filesHash": HASH}]},
            "steps[0].args[3]",
            "octal",
        ),
        ({"fromImage": "a", "force": "yes"}, "force", "true or false"),
    ],
)
def test_validate_names_the_field(data: dict[str, object], field: str | None, words: str) -> None:
    with pytest.raises(RecipeError, match=r"(?s).*") as caught:
        recipes.validate(data)
    assert words in str(caught.value)
    if field is not None:
        assert caught.value.field == field
    if field and field.startswith("steps[0]"):
        assert caught.value.step == 0


def test_copy_without_hash_passes_when_not_required() -> None:
    data = {"fromImage": "a", "steps": [step("COPY", "a", "/x")]}
    assert recipes.validate(data, require_files_hash=False)["steps"][0]["args"] == [
        "a",
        "/x",
        "",
        "",
    ]


def test_names() -> None:
    assert recipes.split_name("my-app") == ("my-app", None)
    assert recipes.split_name("my-app:v1.2") == ("my-app", "v1.2")
    for bad in ("", "My-App", "-x", "a:", "a:b c", "a" * 64):
        with pytest.raises(RecipeError):
            recipes.split_name(bad)


def test_ready_commands_are_e2bs() -> None:
    assert recipes.wait_for_port(80).get_cmd() == '[ -n "$(ss -Htuln sport = :80)" ]'
    assert recipes.wait_for_url("http://localhost:3000/health").get_cmd() == (
        'curl -s -o /dev/null -w "%{http_code}" http://localhost:3000/health | grep -q "200"'
    )
    assert recipes.wait_for_process("my daemon").get_cmd() == "pgrep 'my daemon' > /dev/null"
    assert recipes.wait_for_file("/tmp/ready").get_cmd() == "[ -f /tmp/ready ]"
    assert recipes.wait_for_timeout(5500).get_cmd() == "sleep 5"
    assert recipes.wait_for_timeout(10).get_cmd() == "sleep 1"


# --- parse_dockerfile ---------------------------------------------------------------------------


def test_minimal_dockerfile_is_e2bs() -> None:
    # E2B: Docker's root and / inside, its own user and home after
    assert parse_dockerfile("FROM ubuntu:latest\n") == {
        "steps": DEFAULTS,
        "force": False,
        "fromImage": "ubuntu:latest",
    }
    assert steps("FROM debian\nRUN true") == [*PRELUDE, step("RUN", "true"), *DEFAULTS]


def test_comments_directives_blank_lines_and_continuations() -> None:
    text = (
        "# syntax=docker/dockerfile:1\n"
        "# escape=\\\n"
        "\n"
        "FROM debian:stable\n"
        "# a comment\n"
        "RUN apt-get update && \\\n"
        "    apt-get install -y \\\n"
        "      # a comment inside the instruction\n"
        "\n"
        "      curl\n"
        "run echo one\\\n"
        "two\n"
    )
    parsed = recipes.read_dockerfile(text)
    assert parsed.template["steps"][2:4] == [
        step("RUN", "apt-get update && apt-get install -y curl"),
        step("RUN", "echo onetwo"),
    ]
    assert parsed.lines[2:4] == (6, 11)
    assert parsed.lines[:2] == (None, None) and parsed.lines[-2:] == (None, None)


def test_backquote_escape_directive() -> None:
    assert steps("# escape=`\nFROM a\nRUN echo a `\n  b")[2] == step("RUN", "echo a b")


def test_run_exec_form_is_quoted() -> None:
    assert steps('FROM a\nRUN ["python3", "-c", "print(1 + 1)"]')[2] == step(
        "RUN", "python3 -c 'print(1 + 1)'"
    )
    assert steps("FROM a\nRUN [not json")[2] == step("RUN", "[not json")


def test_arg_defaults_build_args_and_scope() -> None:
    text = (
        "ARG TAG=3.11\n"
        "FROM python:${TAG}-slim\n"
        "ARG TAG\n"
        "ARG DIR=/srv/$TAG NOVALUE\n"
        "WORKDIR ${DIR}\n"
        "COPY app.py ${DIR:-/unused}/${NOVALUE:-x}\n"
        "RUN echo $TAG\n"
    )
    data = parse_dockerfile(text)
    assert data["fromImage"] == "python:3.11-slim"
    assert data["steps"][1:4] == [
        step("WORKDIR", "/srv/3.11"),
        {**step("COPY", "app.py", "/srv/3.11/x", "", "")},
        # ARGs are RUN's environment in Docker, not the image's: exported, not ENV
        step("RUN", "export TAG=3.11 DIR=/srv/3.11 && echo $TAG"),
    ]
    overridden = parse_dockerfile(text, {"TAG": "3.13"})
    assert overridden["fromImage"] == "python:3.13-slim"
    assert overridden["steps"][1] == step("WORKDIR", "/srv/3.13")


def test_env_forms_and_substitution() -> None:
    text = (
        "FROM a\n"
        "ARG V=1.0\n"
        'ENV A=1 B="two words" C=$A-$V D=\'$literal\' PATH="/opt/bin:$PATH"\n'
        "ENV LEGACY value with  spaces\n"
        "WORKDIR /w/$B\n"
        "ENV E=$A\n"
    )
    assert steps(text)[1:6] == [
        step("WORKDIR", "/"),
        # values are shell words for the build to expand: literals escaped, unknowns kept
        # (A is not set before this instruction, as in Docker)
        step(
            "ENV",
            "A",
            "1",
            "B",
            "two words",
            "C",
            "${A}-1.0",
            "D",
            "\\$literal",
            "PATH",
            "/opt/bin:${PATH}",
        ),
        step("ENV", "LEGACY", "value with  spaces"),
        step("WORKDIR", "/w/two words"),
        step("ENV", "E", "1"),
    ]


def test_copy_and_add() -> None:
    text = (
        "FROM a\n"
        "COPY --chown=app:app --chmod=644 a.txt b/ ./dest/\n"
        'COPY ["with space.txt", "/x/"]\n'
        "ADD --link conf /etc/conf\n"
    )
    assert steps(text)[2:6] == [
        step("COPY", "a.txt", "./dest/", "app:app", "0644"),
        step("COPY", "b/", "./dest/", "app:app", "0644"),
        step("COPY", "with space.txt", "/x/", "", ""),
        step("COPY", "conf", "/etc/conf", "", ""),
    ]


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ('CMD ["python3", "app.py"]', "python3 app.py"),
        ("CMD python3 app.py --port $PORT", "python3 app.py --port $PORT"),
        ('ENTRYPOINT ["node"]\nCMD ["server.js", "a b"]', "node server.js 'a b'"),
        ('ENTRYPOINT ["tini", "--"]\nCMD run.sh now', "tini -- /bin/sh -c 'run.sh now'"),
        ('CMD ["ignored"]\nENTRYPOINT ./start.sh', "./start.sh"),
        ('CMD ["first"]\nCMD ["second"]', "second"),
    ],
)
def test_cmd_and_entrypoint_become_the_start_command(start: str, expected: str) -> None:
    data = parse_dockerfile(f"FROM a\n{start}\n")
    assert data["startCmd"] == expected
    assert data["readyCmd"] == "sleep 1"  # E2B waits 20 s; firebox settles 1 s


def test_labels_and_exposes_are_ignored() -> None:
    assert steps("FROM a\nLABEL a=b\nEXPOSE 80/tcp\nMAINTAINER me") == DEFAULTS


def test_dockerfile_user_and_workdir_are_kept() -> None:
    assert steps("FROM a\nUSER app\nWORKDIR /app\nRUN make") == [
        step("USER", "app"),
        step("WORKDIR", "/app"),
        step("RUN", "make"),
    ]
    assert steps("FROM a\nWORKDIR app") == [
        *PRELUDE,
        step("WORKDIR", "app"),
        DEFAULTS[0],
    ]


@pytest.mark.parametrize(
    ("text", "line", "instruction", "words"),
    [
        (
            "FROM a\n\nRUN true\n# c\nHEALTHCHECK CMD curl -f localhost",
            5,
            "HEALTHCHECK",
            "set_ready_cmd",
        ),
        ("FROM a\nVOLUME /data", 2, "VOLUME", "not supported"),
        ('FROM a\nSHELL ["/bin/zsh"]', 2, "SHELL", "not supported"),
        ("FROM a\nONBUILD RUN x", 2, "ONBUILD", "not supported"),
        ("FROM a\nSTOPSIGNAL SIGKILL", 2, "STOPSIGNAL", "not supported"),
        ("FROM a\nRUUN x", 2, "RUUN", "spelling"),
        ("FROM a AS b\nRUN x\nFROM c\n", 3, "FROM", "multi-stage"),
        ("FROM a\nCOPY --from=build /x /y", 2, "COPY", "--from"),
        ("FROM a\nRUN --mount=type=cache,target=/r pip install x", 2, "RUN", "--mount"),
        ("FROM a\nRUN <<EOF\necho hi\nEOF", 2, "RUN", "heredoc"),
        ('FROM a\nCOPY <<-"EOT" /x\nhi\nEOT', 2, "COPY", "heredoc"),
        ("FROM a\nADD https://example.com/x.tgz /x", 2, "ADD", "curl"),
        ("FROM a\nADD rootfs.tar.gz /", 2, "ADD", "unpack"),
        ("FROM a\nCOPY /abs /x", 2, "COPY", "absolute"),
        ("FROM a\nCOPY --chmod=u+x a /x", 2, "COPY", "octal"),
        ("FROM a\nCOPY onlyone", 2, "COPY", "destination"),
        ("FROM a\nWORKDIR $HOME/app", 2, "WORKDIR", "ARG HOME"),
        ("FROM a\nENV NOVALUE", 2, "ENV", "no value"),
        ("FROM a\nENV 9X=1", 2, "ENV", "variable name"),
        ("FROM a\nUSER 'unclosed", 2, "USER", "not closed"),
        ("FROM scratch", 1, "FROM", "scratch"),
        ("RUN true\nFROM a", 1, "RUN", "before FROM"),
        ("# just a comment\n", 0, "FROM", "no FROM"),
    ],
)
def test_errors_name_the_line_and_instruction(
    text: str, line: int, instruction: str, words: str
) -> None:
    with pytest.raises(DockerfileError) as caught:
        parse_dockerfile(text)
    error = caught.value
    assert (error.line, error.instruction) == (line, instruction)
    assert words in str(error)
    if line:
        assert str(error).startswith(f"line {line}: ")
    assert isinstance(error, RecipeError) and isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.line, again.instruction) == (str(error), line, instruction)


def test_too_many_steps() -> None:
    with pytest.raises(DockerfileError, match="line 200: .*200 steps"):
        parse_dockerfile("FROM a\n" + "RUN true\n" * 201)


# --- to_dockerfile ------------------------------------------------------------------------------

ROUND_TRIP = [
    "FROM debian:stable\n",
    "FROM a\nRUN apt-get update\nCOPY --chown=u --chmod=0700 'my file' /x/\nCMD [\"sh\"]\n",
    'FROM a\nUSER app\nUSER other\nWORKDIR /srv\nENV A="$B" C=\'x"y\'\nENTRYPOINT top -b\n',
    'FROM a\nWORKDIR rel\nENV P="/x:$PATH" Q=a\\$b\nRUN echo "$P"\n',
    "ARG V=2\nFROM a:$V\nARG V\nRUN make V=$V\nUSER root\n",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_dockerfile_round_trip(text: str) -> None:
    parsed = parse_dockerfile(text)
    assert parse_dockerfile(to_dockerfile(parsed)) == parsed


def test_to_dockerfile_of_a_template() -> None:
    data = {
        "fromImage": "python:3",
        "steps": [
            step("RUN", "apt-get install -y curl", "root"),
            step("COPY", "app", "/srv/app", "user", "0755"),
            step("ENV", "A", "1 2"),
            step("USER", "root"),
            step("RUN", "make install", "user"),
            step("RUN", "cat > f <<EOF\nx\nEOF"),
        ],
        "startCmd": "python -m http.server",
        "readyCmd": recipes.wait_for_port(8000).get_cmd(),
    }
    assert to_dockerfile(data) == (
        "FROM python:3\n"
        "USER user\n"  # a template starts as user in /home/user; a Dockerfile as root in /
        "WORKDIR /home/user\n"
        "USER root\n"
        "RUN apt-get install -y curl\n"
        "USER user\n"
        "COPY --chown=user --chmod=0755 app /srv/app\n"
        'ENV A="1 2"\n'
        "USER root\n"
        "USER user\n"
        "RUN make install\n"
        "USER root\n"
        'RUN ["/bin/bash", "-c", "cat > f <<EOF\\nx\\nEOF"]\n'
        "ENTRYPOINT python -m http.server\n"
        '# ready when this exits 0: "[ -n \\"$(ss -Htuln sport = :8000)\\" ]"\n'
    )
    # and it means the same when read back
    back = parse_dockerfile(to_dockerfile(data))
    assert back["steps"][:2] == [step("USER", "user"), step("WORKDIR", "/home/user")]


def test_to_dockerfile_refuses_a_template_base() -> None:
    with pytest.raises(RecipeError, match="Dockerfile starts FROM an image"):
        to_dockerfile({"fromTemplate": "base", "steps": []})


# --- files: the upload format -------------------------------------------------------------------


def test_hash_tar_checks_what_write_tar_wrote(tmp_path: object) -> None:
    from pathlib import Path

    root = Path(str(tmp_path))
    (root / "d").mkdir()
    (root / "d" / "f.txt").write_text("hello")
    entries = [
        (recipes.FileEntry("d", "dir", 0o755), str(root / "d")),
        (recipes.FileEntry("d/f.txt", "file", 0o644, 5), str(root / "d" / "f.txt")),
        (recipes.FileEntry("d/link", "symlink", 0o777, target="f.txt"), ""),
    ]
    buf = io.BytesIO()
    written = recipes.write_tar(buf, "d", "/x/", entries)
    buf.seek(0)
    assert recipes.hash_tar(buf, "d", "/x/") == written
    buf.seek(0)
    assert recipes.hash_tar(buf, "d", "/y/") != written  # dest is part of the hash
    with pytest.raises(RecipeError, match="ascending"):
        recipes.write_tar(io.BytesIO(), "d", "/x/", list(reversed(entries)))
    with pytest.raises(RecipeError, match="not a gzip'd tar"):
        recipes.hash_tar(io.BytesIO(b"nope"), "d", "/x/")
